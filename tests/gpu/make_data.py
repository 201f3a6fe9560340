"""The GPU check's data, written without Spark (the GPU machine's image has none).

``python -m tests.gpu.make_data --out DIR [--classes 12] [--per-class 700] [--row-groups 64]``
writes, from :mod:`data.synthetic`'s photo-like 512x384 JPEGs (about 100 KB each):

* ``DIR/images/<class>/<image>.jpg``: the image folder (``raw_files``, ``decode_ceiling``);
* ``DIR/data``: the files as ``data.convert`` stores RGB JPEGs, byte for byte;
* ``DIR/data_256``: each re-encoded by :func:`data.images.to_rgb_jpeg` at max side 256,
  as ``data.convert --max-side 256`` does.

Both Parquet sets hold one ``train`` split in exactly ``--row-groups`` row groups, rows
in a seeded random order, with ``data.convert``'s columns and manifest.
"""
from __future__ import annotations

import argparse
import io
import os
from multiprocessing import Pool

import numpy as np

from bench.options import RESIZED_SIDE
from data.images import to_rgb_jpeg
from data.manifest import Manifest
from data.synthetic import make_image
from tests.parquet_sets import write_split


def _one(job: tuple[str, int, int, int]) -> tuple[int, str, bytes, bytes]:
    images, k, i, classes = job
    buf = io.BytesIO()
    make_image(k, classes, 512, 384, np.random.default_rng([k, i])).save(buf, "JPEG", quality=90)
    rel = f"class_{k:02d}/img_{i:05d}.jpg"
    with open(os.path.join(images, rel), "wb") as f:
        f.write(buf.getvalue())
    return k, rel, buf.getvalue(), to_rgb_jpeg(buf.getvalue(), max_side=RESIZED_SIDE).jpeg


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.make_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--per-class", type=int, default=700)
    p.add_argument("--row-groups", type=int, default=64)
    a = p.parse_args()
    images, names = os.path.join(a.out, "images"), [f"class_{k:02d}" for k in range(a.classes)]
    for name in names:
        os.makedirs(os.path.join(images, name), exist_ok=True)
    with Pool() as pool:
        rows = pool.map(_one, [(images, k, i, a.classes) for k in range(a.classes) for i in range(a.per_class)],
                        chunksize=16)
    rows = [rows[j] for j in np.random.default_rng(0).permutation(len(rows))]
    labels, paths = [r[0] for r in rows], [r[1] for r in rows]
    per_group = -(-len(rows) // a.row_groups)
    for folder, column in (("data", 2), (f"data_{RESIZED_SIDE}", 3)):
        out = os.path.join(a.out, folder)
        info = write_split(out, "train", [r[column] for r in rows], labels, paths, per_group, a.classes)
        Manifest(classes=names, splits={"train": info},
                 options={"seed": 0, "writer": "tests/gpu/make_data.py",
                          "max_side": RESIZED_SIDE if column == 3 else None}).save(out)
        print(f"{out}: {info.rows} rows, {info.row_groups} row groups, {info.bytes / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
