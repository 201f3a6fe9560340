"""What the conversion does to each input image, in Spark's Python workers.

Each input (a listed file, or a DataFrame row: :mod:`data.convert.frames`) becomes one
row of metadata: its relative path (or key), class, official part, and either its stored
JPEG's size and ``source`` (status ``kept``), a reason (``rejected``) or nothing
(``skipped``: not a data set image). Each file is read in Python (its bytes never pass
through the JVM) and fully decoded; what is kept is not returned: the split write
(:mod:`data.convert.writer`) reads it again from ``source``: the input file when it is
kept byte-for-byte, else a JPEG this pass stashed (re-encoded, or bytes that came in a
DataFrame row and have no file of their own), so no image is decoded twice.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Callable, Iterable, Iterator

from data.files import join, open_file, read_bytes
from data.images import try_rgb_jpeg
from data.convert.layouts import Layout

KEPT, REJECTED, SKIPPED = "kept", "rejected", "skipped"  # a row's status

DECODED_COLUMNS = ["relpath", "class", "part", "status", "reason", "width", "height", "nbytes", "converted", "source"]


def rejected_row(rel: str, cls: str | None, part: str | None, reason: str, nbytes: int = 0) -> tuple:
    return (rel, cls, part, REJECTED, reason, 0, 0, nbytes, False, None)


def check_image(rel: str, cls: str, part: str, content: bytes, source: str | None, quality: int,
                max_side: int | None, stash: str, storage: dict[str, str] | None) -> tuple:
    """One metadata row (DECODED_COLUMNS order) for the image ``content``; ``source`` is where
    the write pass can read it again (None: nowhere, so a kept image is stashed)."""
    result = try_rgb_jpeg(content, quality, max_side)
    if isinstance(result, str):
        return rejected_row(rel, cls, part, result, len(content))
    if result.converted or source is None:
        source = join(stash, uuid.uuid4().hex + ".jpg")
        with open_file(source, "wb", storage) as f:
            f.write(result.jpeg)
    return (rel, cls, part, KEPT, None, result.width, result.height, len(result.jpeg), result.converted, source)


def decode_files(layout_bc, quality: int, max_side: int | None, stash: str,
                 storage: dict[str, str] | None) -> Callable[[Iterable[str]], Iterator[tuple]]:
    """A ``mapPartitions`` function over relative paths; ``layout_bc`` is a Spark broadcast
    of the Layout."""

    def run(paths: Iterable[str]) -> Iterator[tuple]:
        layout = layout_bc.value
        for rel in paths:
            where = layout.locate(rel)
            if where is None:
                yield (rel, None, None, SKIPPED, None, 0, 0, 0, False, None)
                continue
            source = join(layout.root, rel)
            yield check_image(rel, *where, read_bytes(source, storage), source, quality, max_side, stash, storage)

    return run


@contextlib.contextmanager
def decoded_files(spark, lay: Layout, tasks: Callable[[int], int], quality: int, max_side: int | None,
                  stash: str, storage: dict[str, str] | None) -> Iterator[tuple]:
    """``(RDD of metadata rows, zero-byte images)`` of an image folder: the driver lists it,
    ``tasks(files)`` tasks decode it."""
    layout_bc = spark.sparkContext.broadcast(lay)
    try:
        files, empty = lay.listing()
        found = spark.sparkContext.parallelize(files, tasks(len(files)))
        yield found.mapPartitions(decode_files(layout_bc, quality, max_side, stash, storage)), empty
    finally:
        layout_bc.destroy()
