"""Publish an output so that it is never half-visible.

On disk: build it in ``<out>.tmp-XXXX`` and rename at the end. A crash leaves only a
``.tmp-`` folder (removed on any Python-level failure), never a half-written ``<out>``
that looks complete. ``--overwrite`` swaps the old folder out after the new one is
complete, then deletes it.

In S3 (no rename there): a data set is written in place, its data files named for the
conversion, and its manifest, written last in one PUT, is the commit: readers read only
the files a manifest names. Once the new manifest is in place, every other object under
``<out>`` (the replaced data set's files, leftovers of killed conversions) is deleted; a
conversion that fails deletes what it wrote, and one killed leaves files no manifest names.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from typing import Iterator

from data.files import delete, join, list_sizes, open_file
from data.errors import UserError
from data.manifest import MANIFEST, REJECTED_CSV, Manifest
from data.object_store import arrow_url, is_s3

# What a conversion writes under an S3 --out (its own files, or a killed one's leftovers).
OURS = re.compile(r"(manifest\.json|rejected\.csv|(train|val|test)/part-\d{5}-[0-9a-f]{8}\.parquet"
                  r"|_converted-[0-9a-f]{8}/.*)")


def check_out(out: str, overwrite: bool, source: str | None, marker: str = MANIFEST,
              storage: dict[str, str] | None = None) -> str:
    """Validate ``--out`` before any work; return its absolute path (or URL). ``--overwrite``
    replaces only a folder holding ``marker`` (what this kind of output always has)."""
    if is_s3(out):
        return _check_s3_out(out, overwrite, source, storage or {})
    path = os.path.abspath(out)
    if source is not None and not is_s3(source):
        real, src = os.path.realpath(path), os.path.realpath(source)
        if real == src or real.startswith(src + os.sep) or src.startswith(real + os.sep):
            raise UserError(f"--out {out} and --images {source} must not contain each other")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {out} exists and is not a folder")
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UserError(f"--out {out} cannot be created: {ancestor} is not a folder")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise UserError(f"--out {out} is not empty: pass --overwrite to replace it")
        if not os.path.isfile(os.path.join(path, marker)):
            what = "a converted data set" if marker == MANIFEST else "an output of this kind"
            raise UserError(
                f"--out {out} is not empty and is not {what} (no {marker}): "
                "refusing to replace it, even with --overwrite")
    return path


def _check_s3_out(out: str, overwrite: bool, source: str | None, storage: dict[str, str]) -> str:
    url, src = arrow_url(out).rstrip("/") + "/", arrow_url(source or "").rstrip("/") + "/"
    if source and is_s3(source) and (url.startswith(src) or src.startswith(url)):
        raise UserError(f"--out {out} and --images {source} must not contain each other")
    found = list_sizes(out, storage)
    if MANIFEST in found and not overwrite:
        raise UserError(f"--out {out} holds a data set: pass --overwrite to replace it")
    foreign = [k for k in found if not OURS.fullmatch(k)]
    if foreign:
        raise UserError(f"--out {out} holds objects a conversion does not write ({foreign[0]}, ...): "
                        "refusing to write there, even with --overwrite")
    return out.rstrip("/")


@contextlib.contextmanager
def publish(out: str, overwrite: bool, run_id: str, storage: dict[str, str] | None) -> Iterator[str]:
    """Yield where the block writes the data set (files named for ``run_id``, the manifest
    last): a staged folder renamed to ``out`` at the end, or ``out`` itself in S3."""
    if not is_s3(out):
        with staged_folder(out, overwrite) as tmp:
            yield tmp
        return
    try:
        yield out
    except BaseException:
        stale = [join(out, k) for k in list_sizes(out, storage) if run_id in k]
        delete(stale, storage)
        raise
    named = _named(Manifest.load(out))  # read back: what readers now see
    delete([join(out, k) for k in list_sizes(out, storage) if k not in named], storage)


def _named(manifest: Manifest) -> set[str]:
    return {MANIFEST, REJECTED_CSV} | {p for s in manifest.splits.values() for p in s.paths}


def save_manifest(folder: str, manifest: Manifest, storage: dict[str, str] | None) -> None:
    """Write ``<folder>/manifest.json`` (one PUT in S3: readers see the old one or this one)."""
    with open_file(join(folder, MANIFEST), "wb", storage) as f:
        f.write(manifest.to_json().encode("utf-8"))


@contextlib.contextmanager
def staged_folder(out: str, overwrite: bool, marker: str = MANIFEST) -> Iterator[str]:
    """Yield a fresh temp folder next to ``out``; publish it as ``out`` if the block ends
    normally, delete it if the block raises."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{os.path.basename(out)}.tmp-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)  # (not mkdtemp: the data set gets the usual umask permissions)
    try:
        yield tmp
        _publish(tmp, out, overwrite, marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: str, out: str, overwrite: bool, marker: str) -> None:
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    check_out(out, overwrite, tmp, marker)  # it may have changed while we worked
    old = f"{out}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
