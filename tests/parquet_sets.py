"""Data sets with an exact number of Parquet row groups, written straight with pyarrow.

Spark decides row-group boundaries by bytes; the sharding matrix needs 1, 2, ... 8 row
groups exactly, so these sets are written with pyarrow (the same columns and manifest as
``data.convert`` writes) and read back through the real Petastorm loaders. The GPU check
(``tests/gpu``) writes its data sets with :func:`write_split` too: the GPU machine has no Spark.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.manifest import Manifest, SplitInfo
from data.synthetic import make_image

CLASSES = 3


def small_jpeg(k: int, rng: np.random.Generator) -> bytes:
    """A 40x30 synthetic JPEG of class ``k`` (of CLASSES)."""
    buf = io.BytesIO()
    make_image(k, CLASSES, 40, 30, rng).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_split(out: str, split: str, jpegs: Sequence[bytes], labels: Sequence[int], paths: Sequence[str],
                rows_per_group: int, num_classes: int) -> SplitInfo:
    """``out/split/part-00000.parquet`` with the rows in the order given, ``rows_per_group`` a group."""
    table = pa.table({"image": pa.array(jpegs, pa.binary()), "label": pa.array(labels, pa.int64()),
                      "path": pa.array(paths, pa.string())})
    os.makedirs(os.path.join(out, split), exist_ok=True)
    pq.write_table(table, os.path.join(out, split, "part-00000.parquet"), row_group_size=rows_per_group)
    return SplitInfo(rows=len(labels), per_class=[list(labels).count(k) for k in range(num_classes)], files=1,
                     row_groups=-(-len(labels) // rows_per_group), bytes=sum(len(x) for x in jpegs),
                     paths=[f"{split}/part-00000.parquet"])


def write_data_set(out: str, row_groups: int, rows_per_group: int = 12, val_rows: int = 12) -> Manifest:
    """``out/train`` with exactly ``row_groups`` row groups (one file), ``out/val`` with one."""
    rng = np.random.default_rng(row_groups)
    infos = {}
    for split, n in (("train", row_groups * rows_per_group), ("val", val_rows)):
        labels = [i % CLASSES for i in range(n)]
        infos[split] = write_split(out, split, [small_jpeg(k, rng) for k in labels], labels,
                                   [f"class_{k}/{split}_{i:04d}.jpg" for i, k in enumerate(labels)],
                                   rows_per_group if split == "train" else n, CLASSES)
    manifest = Manifest(classes=[f"class_{k}" for k in range(CLASSES)], splits=infos,
                        options={"seed": row_groups, "writer": "tests/parquet_sets.py"})
    manifest.save(out)
    return manifest
