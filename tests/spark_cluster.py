"""A standalone Spark cluster on 127.0.0.1 for tests and try-outs: one master, N one-core workers.

Started from the installed pyspark's ``bin/spark-class`` (as docs/cluster.md's try-out
does by hand); the workers run this interpreter's Python (``PYSPARK_PYTHON``), so the
project installed in it is on every executor. Only the processes started here are
stopped, by pid (a worker stops its own executors when it gets SIGTERM).
"""
from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pyspark

from data.spark import ensure_java

SPARK_CLASS = os.path.join(os.path.dirname(os.path.abspath(pyspark.__file__)), "bin", "spark-class")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
REGISTERED = re.compile(r"Registering worker 127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SparkCluster:
    """``SparkCluster(folder, workers=2)``: ``url`` is ``spark://127.0.0.1:PORT`` once started."""

    def __init__(self, folder: str, workers: int = 2, worker_memory: str = "1g"):
        self.folder, self.worker_memory = folder, worker_memory
        os.makedirs(folder, exist_ok=True)
        java = ensure_java()
        self.env = {**os.environ, "JAVA_HOME": os.path.dirname(os.path.dirname(os.path.realpath(java))),
                    "SPARK_HOME": os.path.dirname(os.path.abspath(pyspark.__file__)),
                    "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_DAEMON_MEMORY": "384m", "OMP_NUM_THREADS": "1"}
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.master = self._start("master", MASTER_CLASS, "--host", "127.0.0.1", "--port", str(self.port),
                                  "--webui-port", str(free_port()))
        self.workers: list[subprocess.Popen] = []
        for _ in range(workers):
            self.start_worker()

    def _start(self, name: str, main_class: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.folder, f"{name}.log"), "ab")
        try:  # spark-class execs the JVM: the pid is the daemon's own
            return subprocess.Popen([SPARK_CLASS, main_class, *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.folder)
        finally:
            log.close()

    def registered(self) -> int:
        """How many worker registrations the master has logged."""
        with open(os.path.join(self.folder, "master.log"), errors="replace") as f:
            return len(REGISTERED.findall(f.read()))

    def start_worker(self) -> subprocess.Popen:
        """Start one more one-core worker and wait until the master has registered it."""
        before = self.registered()
        index = len(self.workers)
        work = os.path.join(self.folder, f"worker{index}")
        worker = self._start(f"worker{index}", WORKER_CLASS, "--host", "127.0.0.1", "--cores", "1",
                             "--memory", self.worker_memory, "--webui-port", str(free_port()), "--work-dir", work,
                             self.url)
        self.workers.append(worker)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.registered() <= before:
            for proc in (self.master, worker):
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"Spark {'master' if proc is self.master else 'worker'} exited "
                                       f"({proc.returncode}); logs in {self.folder}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Spark worker not registered after {START_TIMEOUT_S} s; logs in {self.folder}")
            time.sleep(0.5)
        return worker

    def executor_pids(self, worker: subprocess.Popen) -> list[int]:
        """The executor JVMs a worker has launched (its child processes)."""
        return children(worker.pid)

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """A node dying: SIGKILL the worker and its executors at once, no clean shutdown."""
        for pid in self.executor_pids(worker):
            _signal(pid, signal.SIGKILL)
        worker.kill()
        worker.wait()

    def stop(self) -> None:
        """Stop the workers (they stop their executors), then the master; by pid, SIGKILL after 30 s."""
        for proc in [*self.workers, self.master]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    found = []
    for listing in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(listing) as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return found
