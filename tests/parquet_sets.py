"""Data sets with an exact number of Parquet row groups, written straight with pyarrow.

Spark decides row-group boundaries by bytes; the sharding matrix needs 1, 2, ... 8 row
groups exactly, so these sets are written with pyarrow (the same columns and manifest as
``data.convert`` writes) and read back through the real Petastorm loaders.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.manifest import Manifest, SplitInfo
from data.synthetic import make_image

CLASSES = 3


def _jpeg(k: int, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    make_image(k, CLASSES, 40, 30, rng).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_data_set(out: str, row_groups: int, rows_per_group: int = 12, val_rows: int = 12) -> Manifest:
    """``out/train`` with exactly ``row_groups`` row groups (one file), ``out/val`` with one."""
    rng = np.random.default_rng(row_groups)
    infos = {}
    for split, groups in (("train", row_groups), ("val", 1)):
        n = groups * rows_per_group if split == "train" else val_rows
        labels = [i % CLASSES for i in range(n)]
        table = pa.table({
            "image": pa.array([_jpeg(k, rng) for k in labels], pa.binary()),
            "label": pa.array(labels, pa.int64()),
            "path": [f"class_{k}/{split}_{i:04d}.jpg" for i, k in enumerate(labels)],
        })
        os.makedirs(os.path.join(out, split), exist_ok=True)
        pq.write_table(table, os.path.join(out, split, "part-00000.parquet"),
                       row_group_size=rows_per_group if split == "train" else n)
        infos[split] = SplitInfo(rows=n, per_class=[labels.count(k) for k in range(CLASSES)], files=1,
                                 row_groups=groups)
    manifest = Manifest(classes=[f"class_{k}" for k in range(CLASSES)], splits=infos,
                        options={"seed": row_groups, "writer": "tests/parquet_sets.py"})
    manifest.save(out)
    return manifest
