"""Files of a conversion, on a local disk or in an S3-compatible object store, alike.

Local paths go through the OS; ``s3://`` / ``s3a://`` URLs through s3fs, with the AWS
variables handed over explicitly (``storage``: :func:`data.object_store.s3_settings`),
because the Spark Python workers that read and write them (on a standalone cluster, in
executors that never saw the driver's environment) may not have them. s3fs, not
Spark's ``s3a`` connector: the bytes are read and written in Python tasks (never
through the JVM), and s3fs needs no Hadoop jars on the cluster; it is also what the
readers use (:mod:`data.object_store`).
"""
from __future__ import annotations

import os
import shutil
from typing import IO

from data.errors import UserError
from data.object_store import arrow_url, is_s3, problem, s3fs_filesystem

WRITE_PART = 16 * 2**20


def join(base: str, rel: str) -> str:
    """``base/rel`` for a folder or a URL (``rel`` uses ``/``)."""
    return f"{base.rstrip('/')}/{rel}" if "://" in base else os.path.join(base, *rel.split("/"))


def _key(url: str) -> str:
    return arrow_url(url).removeprefix("s3://")


def open_file(path: str, mode: str, storage: dict[str, str] | None) -> IO[bytes]:
    """``open(path, mode)`` for a local path, a ``file:`` URL or an S3 URL; writing makes folders."""
    if is_s3(path):
        # Writes upload in parts of this size (S3's minimum is 5 MiB); reads take s3fs's read-ahead.
        size = {"block_size": WRITE_PART} if "w" in mode else {}
        return s3fs_filesystem(storage or {}).open(_key(path), mode, **size)
    path = path.removeprefix("file://") if path.startswith("file://") else path.removeprefix("file:")
    if "w" in mode:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, mode)


def read_bytes(path: str, storage: dict[str, str] | None) -> bytes:
    with open_file(path, "rb", storage) as f:
        return f.read()


def list_sizes(url: str, storage: dict[str, str]) -> dict[str, int]:
    """Every object under the S3 folder ``url``: relative key -> size. One plain line if the
    bucket is missing or the request is refused."""
    fs = s3fs_filesystem(storage)
    base = _key(url).rstrip("/")
    fs.invalidate_cache()  # s3fs caches listings per process: this one must be current
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        raise UserError(f"{url}: there is no bucket {base.split('/', 1)[0]!r}") from None
    except Exception as exc:  # botocore and s3fs raise many types (refused key, no endpoint, ...)
        raise UserError(f"cannot list {url}: {problem(exc)}") from None
    return {k[len(base) + 1:]: int(v.get("size") or 0) for k, v in found.items()
            if k.startswith(base + "/") and v.get("type") != "directory"}


def remove_tree(folder: str, storage: dict[str, str] | None) -> None:
    """Delete a folder (local) or every object under a prefix (S3), if there is one."""
    if is_s3(folder):
        delete([join(folder, k) for k in list_sizes(folder, storage or {})], storage or {})
    else:
        shutil.rmtree(folder, ignore_errors=True)


def delete(urls: list[str], storage: dict[str, str]) -> None:
    """Delete these S3 objects (batched by s3fs)."""
    if urls:
        s3fs_filesystem(storage).rm([_key(u) for u in urls])
