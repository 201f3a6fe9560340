"""How a split is cut into Parquet files and row groups, and what was really written.

Petastorm shards a data set by row group: each train stream (by default one per rank x
loader worker, see data.loader) needs several row groups of its own, and a whole row
group per stream sits in a worker's memory.
So row groups are kept small (at most 8 MiB by default, and smaller for small splits:
about ``TARGET_ROW_GROUPS`` per split, never under 1 MiB) and files moderate
(at most ~128 MiB each, so many row groups per file). Sizes are estimated from the
kept JPEG bytes; ``files_per_split`` / ``row_group_mb`` force them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pyarrow.parquet as pq

MIB = 2 ** 20
FILE_TARGET_BYTES = 128 * MIB
MAX_ROW_GROUP_BYTES = 8 * MIB
MIN_ROW_GROUP_BYTES = 1 * MIB
TARGET_ROW_GROUPS = 64


@dataclass(frozen=True)
class RowGroupPlan:
    """Number of files to write and the ``parquet.block.size`` to write them with."""

    files: int
    row_group_bytes: int


def plan_split(rows: int, est_bytes: int, files_per_split: int | None = None,
               row_group_mb: float | None = None) -> RowGroupPlan:
    """Files and row-group size for a split of ``rows`` images of ``est_bytes`` in all."""
    if row_group_mb:
        row_group = int(row_group_mb * MIB)
    else:
        row_group = min(MAX_ROW_GROUP_BYTES, max(MIN_ROW_GROUP_BYTES, est_bytes // TARGET_ROW_GROUPS))
    files = files_per_split or math.ceil(est_bytes / FILE_TARGET_BYTES)
    return RowGroupPlan(files=max(1, min(files, rows)), row_group_bytes=max(1, row_group))


def parquet_files(folder: str) -> list[str]:
    """The data files of a split folder, in name (= row) order."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(".parquet") and not f.startswith((".", "_")))


def read_footers(folder: str, expected_rows: int) -> dict[str, int]:
    """Real file, row-group and byte counts of a written split, checked against rows."""
    files = parquet_files(folder)
    metas = [pq.ParquetFile(f).metadata for f in files]
    rows = sum(m.num_rows for m in metas)
    if rows != expected_rows:
        raise RuntimeError(f"{folder}: Parquet footers hold {rows} rows, expected {expected_rows}")
    return {"files": len(files), "row_groups": sum(m.num_row_groups for m in metas),
            "bytes": sum(os.path.getsize(f) for f in files)}
