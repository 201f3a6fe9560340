"""S3-compatible object storage for the readers: the one place that knows how to open ``s3://``.

Two libraries read a data set from S3. pyarrow's own ``S3FileSystem`` reads the manifest
and checks each split (:mod:`data.manifest`, :func:`data.split_reader.inspect_split`);
Petastorm 0.12 reads row groups through pyarrow's *legacy* filesystem API, which for S3
means ``s3fs`` behind ``pyarrow.filesystem.S3FSWrapper`` (:func:`petastorm_filesystem`).
Both take credentials, region and endpoint from the standard AWS variables, as boto3 and
the AWS CLI do: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and
``AWS_SESSION_TOKEN``), ``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL`` for a non-AWS
endpoint (MinIO, Ceph, moto); s3fs is handed them explicitly here (:func:`petastorm_filesystem`).
Spark's ``s3a://`` (and ``s3n://``) name the same objects: they are read as ``s3://``.

Retry policy (a store that stalls or drops connections). The libraries' own retries are
off (botocore, and s3fs's, which nest to 125 attempts of 15 s each: half an hour of
silence before an error); instead each read a loader worker makes (opening a split,
reading a row group) goes through :func:`retrying`: an attempt waits at most
``CONNECT_TIMEOUT_S`` to connect and ``READ_TIMEOUT_S`` for an answer, and a timeout
or a lost connection is retried after 1, 2, 4, 8, 16, 16, ... s. The same row group is
read again, so the run goes on with the same images. A store still silent
``STALL_LIMIT_S`` after the first failure ends the run with one line naming the URL
(:class:`data.errors.RunFailure`), under 2.2 minutes after it stopped answering: before
the trainer's watchdog (``--stacks-after``, 150 s by default) would take the waiting
loader worker for frozen. Refusals (a wrong key, a missing object) are not retried.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Callable, TypeVar

from pyarrow.filesystem import S3FSWrapper

from data.errors import RunFailure

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", ENDPOINT_ENV)
S3_SCHEMES = ("s3", "s3a", "s3n")
# s3fs reads this much past each request (its default: 50 MiB). Petastorm opened the file
# again for every row group (a loader worker now keeps a few open, data.row_group_worker),
# so each row group read fetched, and held in the loader worker, up to 50 MiB more than it
# wanted: one worker's quarter of a 68 MiB file (17 MiB of row groups) fetched 823 MiB from
# the server; 1 MiB: 45 MiB; 256 KiB: 27 MiB. 256 KiB still covers the small label and
# path column chunks that follow each image chunk.
READ_AHEAD = 256 * 2**10
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
STALL_LIMIT_S = 90.0
# What a store that stopped answering looks like (botocore, aiohttp, fsspec, the socket),
# by class name anywhere in the exception's class hierarchy or its cause chain.
TRANSIENT = frozenset({"ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                       "ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError", "ClientOSError",
                       "FSTimeoutError", "IncompleteRead", "ResponseParserError", "TimeoutError", "ConnectionError"})
# s3fs answers a listing that timed out as "no such path", which pyarrow then reports so;
# the loaders read splits checked at start-up, so there it means the store did not answer.
NO_LISTING = "Passed non-file path"
T = TypeVar("T")


def is_s3(url: str) -> bool:
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in S3_SCHEMES


def arrow_url(url: str) -> str:
    """The URL as pyarrow and s3fs name it: Spark's ``s3a://`` and ``s3n://`` are ``s3://``."""
    return "s3://" + url.partition("://")[2] if is_s3(url) else url


def problem(exc: BaseException) -> str:
    """One line for a storage library's error; a refused request says which variables to check."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    refused = any(m in text for m in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                      "signature we calculated does not match"))
    return text + (" (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)" if refused else "")


def missing_bucket(fs, path: str) -> str | None:
    """``path``'s bucket when pyarrow's S3 filesystem ``fs`` finds no such bucket, else None."""
    import pyarrow.fs as pafs

    bucket = path.split("/", 1)[0]
    return bucket if fs.get_file_info(bucket).type == pafs.FileType.NotFound else None


def s3_settings(url: str) -> dict[str, str] | None:
    """The AWS variables set in this process, for reading ``url`` elsewhere (None if not S3).

    Loader workers come from a fork server whose environment was fixed when it started;
    the rank captures these when it makes a loader and hands them to its workers, so a
    worker reads with the credentials its rank has now."""
    return aws_variables() if is_s3(url) else None


def aws_variables() -> dict[str, str]:
    """The AWS variables set in this process."""
    return {k: os.environ[k] for k in AWS_VARIABLES if k in os.environ}


def petastorm_filesystem(url: str, settings: dict[str, str] | None = None):
    """The filesystem to hand Petastorm's readers for ``url``: None (Petastorm resolves
    local and HDFS URLs itself) or, for S3, s3fs behind pyarrow's legacy wrapper, with
    ``settings`` (:func:`s3_settings`; default: this process's environment).

    Petastorm would pass a bare s3fs object to ``pyarrow.parquet.ParquetDataset``, which
    pyarrow 14 then routes to its new Dataset API, where Petastorm's arguments fail; the
    wrapper keeps it on the legacy API. The wrapper's own ``walk`` calls s3fs's
    pre-2021 private ``_ls`` (now a coroutine), so it walks with s3fs's public ``walk``.
    Variables not set fall back to botocore's own chain (profile files, instance roles).
    """
    if not is_s3(url):
        return None
    fs = s3fs_filesystem(s3_settings(url) if settings is None else settings)
    with warnings.catch_warnings():  # "S3FSWrapper is deprecated": nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        return _LegacyS3(fs)


def s3fs_filesystem(settings: dict[str, str]):
    """s3fs with the AWS variables ``settings`` (:func:`s3_settings`) handed over explicitly
    (a process started earlier, a loader worker or a Spark Python worker, may not have them)."""
    import s3fs

    client = {k: settings[v] for k, v in (("endpoint_url", ENDPOINT_ENV), ("region_name", "AWS_DEFAULT_REGION"))
              if v in settings}
    fs = s3fs.S3FileSystem(key=settings.get("AWS_ACCESS_KEY_ID"), secret=settings.get("AWS_SECRET_ACCESS_KEY"),
                           token=settings.get("AWS_SESSION_TOKEN"), client_kwargs=client, default_block_size=READ_AHEAD,
                           config_kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
                                          "retries": {"total_max_attempts": 1}})  # retrying() retries
    fs.retries = 1  # one attempt per s3fs call (see the module docstring)
    return fs


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the store did not answer (worth retrying), not that it refused."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(cls.__name__ in TRANSIENT for cls in type(exc).__mro__) or NO_LISTING in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(url: str, read: Callable[[], T], limit_s: float = STALL_LIMIT_S) -> T:
    """``read()``, retried as the module docstring says while the store at ``url`` does not
    answer; past ``limit_s`` of failures, one line naming ``url``."""
    first, delay = None, 1.0
    while True:
        try:
            return read()
        except Exception as exc:
            if not transient(exc):
                raise
            first = time.monotonic() if first is None else first
            if time.monotonic() - first >= limit_s:
                raise RunFailure(f"cannot read {url}: the object store did not answer for "
                                 f"{time.monotonic() - first + READ_TIMEOUT_S:.0f} s (retried for {limit_s:g} s; "
                                 f"{problem(exc)}): check the store and AWS_ENDPOINT_URL, then rerun with "
                                 "--resume auto") from None
            time.sleep(delay)
            delay = min(2 * delay, 16.0)


class _LegacyS3(S3FSWrapper):
    def walk(self, path):
        return self.fs.walk(path.removeprefix("s3://"))
