"""A converted data set read back in tests: exactly the files its manifest names, in row order."""
from __future__ import annotations

import os

import pyarrow.parquet as pq

from data.convert.writer import OUTPUT_COLUMNS
from data.manifest import Manifest


def parquet_files(folder: str) -> list[str]:
    """The data files of a split folder, as its data set's manifest names them (row order)."""
    out, split = os.path.split(folder)
    return [os.path.join(out, p) for p in Manifest.load(out).split(split).paths]


def read_split(out: str, split: str) -> dict[str, list]:
    """All rows of a split, in stored order (files in the manifest's order, rows in file order)."""
    rows = {c: [] for c in OUTPUT_COLUMNS}
    for f in parquet_files(os.path.join(out, split)):
        table = pq.read_table(f)
        for c in rows:
            rows[c] += table.column(c).to_pylist()
    return rows
