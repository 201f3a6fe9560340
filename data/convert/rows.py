"""What the conversion does to each file, in Spark's Python workers (plain pandas here).

``decode_batches`` turns ``binaryFile`` paths into one row of metadata per file: its
relative path, class, split key and either its stored JPEG's size (status ``kept``), a
reason (``rejected``) or nothing (``skipped``: not a data set image). Each file is read
from disk here, in Python (its bytes never pass through the JVM), and fully decoded;
what is kept is not returned: the split write (:mod:`data.convert.writer`) reads it
again from disk, or, for an image that had to be re-encoded, from ``converted_dir``
where this pass leaves its new JPEG (so no image is decoded twice).
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterator
from urllib.parse import unquote

import pandas as pd

from data.convert.images import try_rgb_jpeg
from data.convert.layouts import Layout
from data.convert.splits import split_key

KEPT, REJECTED, SKIPPED = "kept", "rejected", "skipped"  # a row's status

DECODED_SCHEMA = (
    "relpath string, class string, part string, key string, status string, reason string, "
    "width int, height int, nbytes long, converted boolean"
)
DECODED_COLUMNS = [c.split()[0] for c in DECODED_SCHEMA.split(", ")]


def relative_path(path: str, root_uri: str) -> str:
    """Path of a ``binaryFile`` row relative to the root, with forward slashes.

    Spark gives Hadoop path strings (``file:/a/b c/d.jpg``, not URL-encoded); a
    URL-encoded form is accepted too.
    """
    prefix = root_uri.rstrip("/") + "/"
    for candidate in (path, unquote(path)):
        if candidate.startswith(prefix):
            return candidate[len(prefix):]
    raise ValueError(f"{path!r} is not under {root_uri!r}")


def source_file(root: str, relpath: str) -> str:
    """The local file behind a relative path."""
    return os.path.join(root, *relpath.split("/"))


def converted_file(converted_dir: str, relpath: str) -> str:
    """Where the decode pass leaves the re-encoded JPEG of ``relpath``."""
    return os.path.join(converted_dir, hashlib.sha1(relpath.encode("utf-8")).hexdigest() + ".jpg")


def decode_row(path: str, layout: Layout, root_uri: str, seed: int, quality: int,
               max_side: int | None, converted_dir: str) -> tuple:
    """One metadata row (in DECODED_COLUMNS order) for one input file."""
    rel = relative_path(path, root_uri)
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


def decode_batches(layout_bc, root_uri: str, seed: int, quality: int, max_side: int | None,
                   converted_dir: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function over ``binaryFile`` paths; ``layout_bc`` is a Spark
    broadcast of the Layout."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        layout = layout_bc.value
        for pdf in batches:
            rows = [decode_row(p, layout, root_uri, seed, quality, max_side, converted_dir) for p in pdf["path"]]
            yield pd.DataFrame(rows, columns=DECODED_COLUMNS)

    return run
