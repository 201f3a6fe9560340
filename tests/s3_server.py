"""A real S3 API server on 127.0.0.1 for the tests: moto in server mode, with credentials checked.

``S3Server`` starts ``python -m moto.server`` on a free port, creates an IAM user with an
access key allowed everything, then switches the server's authentication on, so a wrong
key is refused as AWS would refuse it. :attr:`S3Server.env` holds the standard AWS
variables (key, secret, region, endpoint) a process needs to reach it; ``upload`` puts a
local folder under ``s3://bucket/prefix`` with boto3. ``stop`` ends exactly the process
it started.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, log_dir: str, start_timeout: float = 60.0):
        self.endpoint = f"http://127.0.0.1:{free_port()}"
        self._log = open(os.path.join(log_dir, "moto.log"), "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", self.endpoint.rsplit(":", 1)[1]],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait(start_timeout)
            self.env = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                        **self._create_key()}
            # From here on every request must be signed with a key the server knows.
            urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0",
                                                          headers={"Content-Type": "text/plain"}), timeout=10).read()
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: see {self._log.name}") from None
                time.sleep(0.2)

    def _create_key(self) -> dict[str, str]:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="sparkdp")
        iam.put_user_policy(UserName="sparkdp", PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = iam.create_access_key(UserName="sparkdp")["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def upload(self, folder: str, bucket: str, prefix: str) -> str:
        """Put every file under ``folder`` at ``s3://bucket/prefix/...`` (bucket made if new); the URL."""
        s3 = self.client()
        if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket=bucket)
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                s3.upload_file(path, bucket, f"{prefix}/{os.path.relpath(path, folder).replace(os.sep, '/')}")
        return f"s3://{bucket}/{prefix}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
