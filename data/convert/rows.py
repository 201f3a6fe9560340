"""What the conversion does to each file, in Spark's Python workers.

``decode_partition`` turns relative paths (listed on the driver) into one row of
metadata per file: its relative path, class, split key and either its stored JPEG's size
(status ``kept``), a reason (``rejected``) or nothing (``skipped``: not a data set
image). Each file is read from disk here, in Python (its bytes never pass through the
JVM), and fully decoded; what is kept is not returned: the split write
(:mod:`data.convert.writer`) reads it again from disk, or, for an image that had to be
re-encoded, from ``converted_dir`` where this pass leaves its new JPEG (so no image is
decoded twice).
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable, Iterator

from data.convert.images import try_rgb_jpeg
from data.convert.layouts import Layout
from data.convert.splits import split_key

KEPT, REJECTED, SKIPPED = "kept", "rejected", "skipped"  # a row's status

DECODED_COLUMNS = ["relpath", "class", "part", "key", "status", "reason", "width", "height", "nbytes", "converted"]


def source_file(root: str, relpath: str) -> str:
    """The local file behind a relative path."""
    return os.path.join(root, *relpath.split("/"))


def converted_file(converted_dir: str, relpath: str) -> str:
    """Where the decode pass leaves the re-encoded JPEG of ``relpath``."""
    return os.path.join(converted_dir, hashlib.sha1(relpath.encode("utf-8")).hexdigest() + ".jpg")


def decode_row(rel: str, layout: Layout, seed: int, quality: int, max_side: int | None,
               converted_dir: str) -> tuple:
    """One metadata row (in DECODED_COLUMNS order) for one input file."""
    where = layout.locate(rel)
    if where is None:
        return (rel, None, None, None, SKIPPED, None, 0, 0, 0, False)
    with open(source_file(layout.root, rel), "rb") as f:
        content = f.read()
    cls, part = where
    key = split_key(seed, rel)
    result = try_rgb_jpeg(content, quality, max_side)
    if isinstance(result, str):
        return (rel, cls, part, key, REJECTED, result, 0, 0, len(content), False)
    if result.converted:
        with open(converted_file(converted_dir, rel), "wb") as f:
            f.write(result.jpeg)
    return (rel, cls, part, key, KEPT, None, result.width, result.height, len(result.jpeg), result.converted)


def decode_partition(layout_bc, seed: int, quality: int, max_side: int | None,
                     converted_dir: str) -> Callable[[Iterable[str]], Iterator[tuple]]:
    """A ``mapPartitions`` function over relative paths; ``layout_bc`` is a Spark broadcast
    of the Layout."""

    def run(paths: Iterable[str]) -> Iterator[tuple]:
        layout = layout_bc.value
        for rel in paths:
            yield decode_row(rel, layout, seed, quality, max_side, converted_dir)

    return run
