"""Write one Parquet file of a split, in a Spark task, with pyarrow: no image byte
passes through the JVM.

The driver hands each task a :class:`FileTask`: where to write (a local path or an S3
URL), the row-group size and its rows' metadata in stored order (a few hundred bytes an
image). The task reads each image from its source (the input file, kept byte-for-byte,
or the JPEG the decode pass stashed), checks its size against what the decode pass saw, and writes row groups
of about ``row_group_bytes`` of images: it holds at most one row group in memory.
pyarrow's writer is deterministic: the same rows give the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from data.files import open_file, read_bytes

SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("path", pa.string()),
                    ("width", pa.int32()), ("height", pa.int32())])
OUTPUT_COLUMNS = tuple(SCHEMA.names)
# Row (relpath, label, width, height, nbytes, source), as the decode pass saw it.
Row = tuple[str, int, int, int, int, str]


@dataclass(frozen=True)
class FileTask:
    path: str
    row_group_bytes: int
    rows: list[Row]
    storage: dict[str, str] | None = None  # the AWS variables, for S3 sources or output


def file_name(index: int, run: str) -> str:
    """File ``index`` of a split, named for the conversion ``run``: an earlier or concurrent
    conversion's files never have the same name (the manifest says which are the data set's)."""
    return f"part-{index:05d}-{run}.parquet"


def write_file(task: FileTask) -> int:
    """Write ``task.path``; return its row count."""
    group: list[tuple[bytes, Row]] = []
    size = 0
    with open_file(task.path, "wb", task.storage) as sink, \
            pq.ParquetWriter(sink, SCHEMA, compression="none", use_dictionary=False,
                             write_statistics=["label", "path", "width", "height"]) as writer:
        for row in task.rows:
            data = _image_bytes(task, row)
            group.append((data, row))
            size += len(data)
            if size >= task.row_group_bytes:
                writer.write_table(_table(group))
                group, size = [], 0
        if group:
            writer.write_table(_table(group))
    return len(task.rows)


def _image_bytes(task: FileTask, row: Row) -> bytes:
    rel, _, _, _, nbytes, source = row
    data = read_bytes(source, task.storage)
    if len(data) != nbytes:
        raise RuntimeError(f"{rel} changed during the conversion ({nbytes} bytes when checked, {len(data)} now)")
    return data


def _table(group: list[tuple[bytes, Row]]) -> pa.Table:
    rows = [r for _, r in group]
    return pa.table([pa.array([d for d, _ in group], pa.binary()),
                     pa.array([r[1] for r in rows], pa.int64()),
                     pa.array([r[0] for r in rows], pa.string()),
                     pa.array([r[2] for r in rows], pa.int32()),
                     pa.array([r[3] for r in rows], pa.int32())], schema=SCHEMA)
