"""Write a data set folder atomically: build it in ``<out>.tmp-XXXX``, rename at the end.

A crash leaves only a ``.tmp-`` folder (removed on any Python-level failure), never a
half-written ``<out>`` that looks complete. ``--overwrite`` swaps the old folder out
after the new one is complete, then deletes it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator

from data.errors import UserError
from data.manifest import MANIFEST


def check_out(out: str, overwrite: bool, source: str, marker: str = MANIFEST) -> str:
    """Validate ``--out`` before any work; return its absolute path. ``--overwrite`` replaces
    only a folder holding ``marker`` (what this kind of output always has)."""
    path = os.path.abspath(out)
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
