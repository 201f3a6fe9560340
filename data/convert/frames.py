"""A Spark DataFrame or table as the conversion's input: one row per image.

Columns are named by the caller: the image as bytes (``image_column``, e.g. binaryFile's
``content``) or as a path or URL the task reads (``path_column``), the label
(``label_column``: class names as strings, or integers, named by ``class_names`` or
else ``"0"``, ``"1"``, ... up to the largest) and the row's stable key (``id_column``,
default the path column). The key is what a folder conversion's relative path is: the
split key, the stored ``path`` and the name in ``rejected.csv``; keys taken from paths
are made relative to their common folder, so binaryFile's ``file:/data/images/cat/1.jpg``
is ``cat/1.jpg``, as a folder conversion of ``/data/images`` names it (and splits it).
Rows are decoded where Spark holds them (only metadata reaches the driver), with the
same checks as files (:func:`data.convert.rows.check_image`); a row without a key,
label or image, with a label outside ``class_names``, an unreadable path, or a key
that is not unique, is rejected.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from data.files import read_bytes
from data.convert.layouts import ALL
from data.convert.rows import check_image, rejected_row
from data.errors import UserError

DUPLICATE_KEY = "duplicate key (rows with the same key are all rejected)"


@dataclass(frozen=True)
class FrameSource:
    """A DataFrame ready to decode: ``frame`` has the columns key, label, data."""

    root: str  # the table's name or path, or "DataFrame": for messages and the manifest
    frame: Any
    from_bytes: bool  # data is the image bytes (else a path or URL to read)
    integer_labels: bool
    relative: bool  # keys are paths: make them relative to their common folder
    class_names: tuple[str, ...] | None = None
    name: str = "table"

    def class_order(self, found: Iterable[str]) -> list[str]:
        """The ordered class list (index = label), given the class names seen."""
        if self.class_names is not None:
            return list(self.class_names)
        if self.integer_labels:
            return [str(i) for i in range(max((int(c) for c in found), default=-1) + 1)]
        return sorted(set(found))

    def spark_ignored_folders(self) -> list[str]:
        return []


def frame_source(spark, table, *, image_column: str | None, path_column: str, label_column: str,
                 id_column: str | None, class_names: list[str] | None) -> FrameSource:
    """Check ``table`` (a DataFrame, a catalog table's name or a Parquet folder Spark reads)
    and its named columns; one plain line for anything missing or of the wrong type."""
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    root = "DataFrame" if isinstance(table, DataFrame) else str(table)
    frame = table if isinstance(table, DataFrame) else _read_table(spark, root)
    types = dict(frame.dtypes)
    key = id_column or path_column
    data = image_column or path_column
    wanted = {key: None, label_column: None, data: "binary" if image_column else "string"}
    missing = [c for c in wanted if c not in types]
    if missing:
        raise UserError(f"{root} has no column(s) {', '.join(missing)} (it has {', '.join(types)})")
    for column, kind in wanted.items():
        if kind and types[column] != kind:
            raise UserError(f"{root}: column {column} must be {kind}, it is {types[column]}")
    integer = types[label_column] in ("tinyint", "smallint", "int", "bigint")
    if not integer and types[label_column] != "string":
        raise UserError(f"{root}: label column {label_column} must hold strings or integers, it is "
                        f"{types[label_column]}")
    if class_names and not integer:
        raise UserError("--class-names names integer labels; the label column holds class names already")
    selected = frame.select(F.col(key).cast("string"), F.col(label_column), F.col(data))
    return FrameSource(root, selected, image_column is not None, integer, id_column is None,
                       tuple(class_names) if class_names else None)


def _read_table(spark, table: str):
    from pyspark.sql.utils import AnalysisException

    try:
        if "/" in table or os.sep in table:
            return spark.read.parquet(table)
        return spark.table(table)
    except AnalysisException as exc:
        raise UserError(f"--table {table}: {str(exc).strip().splitlines()[0]}") from None


def decode_rows(src: FrameSource, quality: int, max_side: int | None, stash: str,
                storage: dict[str, str] | None) -> Callable[[Iterable], Iterator[tuple]]:
    """A ``mapPartitions`` function over (key, label, data) rows (only plain values are captured)."""
    from_bytes, names, integer = src.from_bytes, src.class_names, src.integer_labels

    def class_of(label) -> str | None:
        if label is None or not integer:
            return label
        if names is not None:
            return names[label] if 0 <= label < len(names) else None
        return str(label) if label >= 0 else None

    def run(rows: Iterable) -> Iterator[tuple]:
        for key, label, data in rows:
            cls = class_of(label)
            missing = "no key" if key is None else "no label" if label is None else \
                f"label {label} has no class name" if cls is None else "no image" if data is None else None
            if missing:
                yield rejected_row(key or "", cls, ALL, missing)
                continue
            source = None if from_bytes else data
            try:
                content = bytes(data) if from_bytes else read_bytes(data, storage)
            except OSError as exc:
                yield rejected_row(key, cls, ALL, f"cannot read {data}: {exc.strerror or exc}")
                continue
            yield check_image(key, cls, ALL, content, source, quality, max_side, stash, storage)

    return run


@contextlib.contextmanager
def decoded_frame(spark, src: FrameSource, partitions: int, quality: int, max_side: int | None,
                  stash: str, storage: dict[str, str] | None) -> Iterator[tuple]:
    """``(RDD of metadata rows, no zero-byte images)``: the frame, spread over at least
    ``partitions`` (a binaryFile scan of a small folder is one), decoded where it is."""
    frame = src.frame
    if frame.rdd.getNumPartitions() < partitions:
        frame = frame.repartition(partitions)
    yield frame.rdd.mapPartitions(decode_rows(src, quality, max_side, stash, storage)), []


def relative_keys(keys: list[str]) -> list[str]:
    """Paths made relative to the folder they all share (``file:/d/a/1.jpg`` -> ``a/1.jpg``)."""
    named = [k for k in keys if k]  # (a row without a key is rejected as "")
    cut = os.path.commonprefix(named).rfind("/") + 1 if named else 0
    return [k[cut:] for k in keys]
