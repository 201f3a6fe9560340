"""How a split is cut into Parquet files and row groups, and what was really written.

The loaders read whole row groups: each train stream and eval shard is a row range
(data.order), and a row group on a range's boundary is read by both sides. Each row group
costs Petastorm about a millisecond to open and parse; a worker holds the one it reads.
Measured with the loader as it reads now, 100 KB JPEGs: 1 MiB row groups read at ~8,200
rows/s in one process, 8 MiB ones at ~13,200, and the loader decoded 2-4% more images per
CPU second from the larger ones. So row groups are about a 64th of a split
(``TARGET_ROW_GROUPS``: small splits still split among many streams without reading a row
group twice in full), between 4 and 8 MiB, and files moderate (at most ~128 MiB each, so
many row groups per file). Sizes are estimated from the kept JPEG bytes;
``files_per_split`` / ``row_group_mb`` force them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow.parquet as pq

from data.files import open_file

MIB = 2 ** 20
FILE_TARGET_BYTES = 128 * MIB
MAX_ROW_GROUP_BYTES = 8 * MIB
MIN_ROW_GROUP_BYTES = 4 * MIB
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


def read_footers(paths: list[str], expected_rows: int, storage: dict[str, str] | None) -> dict[str, int]:
    """Real file, row-group and byte counts of a written split's files, checked against rows."""
    metas = []
    for path in paths:
        with open_file(path, "rb", storage) as f:
            metas.append((pq.ParquetFile(f).metadata, f.seek(0, 2)))
    rows = sum(m.num_rows for m, _ in metas)
    if rows != expected_rows:
        raise RuntimeError(f"{paths[0]}...: Parquet footers hold {rows} rows, expected {expected_rows}")
    return {"files": len(paths), "row_groups": sum(m.num_row_groups for m, _ in metas),
            "bytes": sum(size for _, size in metas)}
