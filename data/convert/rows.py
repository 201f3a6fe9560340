"""What the conversion does to each file, in Spark's Python workers (plain pandas here).

``decode_batches`` turns ``binaryFile`` rows (path, content) into one row per file with
its relative path, class, split key and either an RGB JPEG (status ``kept``), a
reason (``rejected``) or nothing (``skipped``: not a data set image). Splits and labels
are assigned afterwards, in SQL (:mod:`data.convert.job`).
"""
from __future__ import annotations

from typing import Callable, Iterator
from urllib.parse import unquote

import pandas as pd

from data.convert.images import try_rgb_jpeg
from data.convert.layouts import Layout
from data.convert.splits import split_key

KEPT, REJECTED, SKIPPED = "kept", "rejected", "skipped"  # a row's status

DECODED_SCHEMA = (
    "relpath string, class string, part string, key string, status string, reason string, "
    "image binary, width int, height int, nbytes long, converted boolean"
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


def decode_row(path: str, content: bytes, layout: Layout, root_uri: str, seed: int,
               quality: int, max_side: int | None) -> tuple:
    """One output row (in DECODED_COLUMNS order) for one input file."""
    rel = relative_path(path, root_uri)
    where = layout.locate(rel)
    if where is None:
        return (rel, None, None, None, SKIPPED, None, None, 0, 0, len(content), False)
    cls, part = where
    key = split_key(seed, rel)
    result = try_rgb_jpeg(content, quality, max_side)
    if isinstance(result, str):
        return (rel, cls, part, key, REJECTED, result, None, 0, 0, len(content), False)
    return (rel, cls, part, key, KEPT, None, result.jpeg, result.width, result.height,
            len(result.jpeg), result.converted)


def decode_batches(layout_bc, root_uri: str, seed: int, quality: int,
                   max_side: int | None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function; ``layout_bc`` is a Spark broadcast of the Layout."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        layout = layout_bc.value
        for pdf in batches:
            rows = [decode_row(p, bytes(c), layout, root_uri, seed, quality, max_side)
                    for p, c in zip(pdf["path"], pdf["content"])]
            yield pd.DataFrame(rows, columns=DECODED_COLUMNS)

    return run
