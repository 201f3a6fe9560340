"""A loader worker's memory stays within its documented bound however long the split is.

Each worker records its own peak resident set (``VmHWM`` of ``/proc/self/status``). A
worker's fixed cost (code, imports, each library's first use) is its peak on a split of
one row group; on a split of many row groups of incompressible JPEGs, more than the bound
per worker, the peak may exceed that by no more than the bound of :mod:`data.loader`'s
docstring. A worker that kept what it read would break it: the test shows that too, with
a shuffle buffer as large as the split.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from data.loader import GROUP_IMAGES, RING_PREFETCH, Batches, ParquetImages, inspect_split
from tests.parquet_sets import write_split

ROW_GROUPS, ROWS_PER_GROUP, SIDE = 32, 12, 256  # 384 noise JPEGs of ~58 KB: 22 MB, 11 MB per worker
WORKERS, BATCH, IMAGE_SIZE, SHUFFLE_ROWS = 2, 8, 16, 24
PART = BATCH // WORKERS  # a worker's rows of each step
ALLOWANCE = 4 * 2**20  # allocator slack: freed memory malloc and Arrow's pool keep for reuse


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class RecordingImages(ParquetImages):
    """ParquetImages whose workers write their peak resident KiB (``VmHWM``) into ``stats_dir``."""

    def __iter__(self):
        path = os.path.join(self.stats_dir, f"worker-{os.getpid()}.json")
        for n, batch in enumerate(super().__iter__()):
            if n % 4 == 0:
                with open(path, "w") as f:
                    json.dump(_kib("VmHWM"), f)
            yield batch


def noise_jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def worker_peaks(parquet, stats_dir: str, shuffle_rows: int) -> list[int]:
    """Each worker's peak resident bytes over two passes of its shard (at least 8 batches)."""
    os.makedirs(stats_dir)
    dataset = RecordingImages(parquet, rank=0, world_size=1, batch_size=BATCH, image_size=IMAGE_SIZE, train=True,
                              shuffle_rows=shuffle_rows)
    dataset.stats_dir = stats_dir
    batches = Batches(dataset, WORKERS, pin_memory=False)
    try:
        for _ in range(max(8, 2 * parquet.rows // BATCH)):
            next(batches)
    finally:
        batches.close()
    return [json.load(open(os.path.join(stats_dir, name))) * 1024 for name in sorted(os.listdir(stats_dir))]


def test_a_worker_stays_within_its_memory_bound_and_an_unbounded_buffer_would_not(tmp_path):
    rng = np.random.default_rng(0)
    n = ROW_GROUPS * ROWS_PER_GROUP
    jpegs, labels = [noise_jpeg(rng) for _ in range(n)], [i % 3 for i in range(n)]
    paths = [f"c/{i}.jpg" for i in range(n)]
    write_split(str(tmp_path), "one", jpegs[:ROWS_PER_GROUP], labels[:ROWS_PER_GROUP], paths[:ROWS_PER_GROUP],
                ROWS_PER_GROUP, 3)
    write_split(str(tmp_path), "many", jpegs, labels, paths, ROWS_PER_GROUP, 3)
    one, many = (inspect_split(f"file://{tmp_path}/{split}", [f"file://{tmp_path}/{split}/part-00000.parquet"], 3)
                 for split in ("one", "many"))
    row_bytes = max(len(j) for j in jpegs)
    # data.loader's bound on what a worker holds: 2 row groups, the shuffle buffer, its ring buffers.
    bound = (2 * ROWS_PER_GROUP * row_bytes + (SHUFFLE_ROWS + ROWS_PER_GROUP) * row_bytes
             + (RING_PREFETCH + 2) * -(-GROUP_IMAGES // PART) * PART * 3 * IMAGE_SIZE ** 2 + ALLOWANCE)
    assert sum(len(j) for j in jpegs) // WORKERS > bound  # each worker reads more than the bound

    # A worker's fixed cost (its code, imports, first use of each library): one row group read.
    base = max(worker_peaks(one, str(tmp_path / "base"), SHUFFLE_ROWS))
    growth = [p - base for p in worker_peaks(many, str(tmp_path / "bounded"), SHUFFLE_ROWS)]
    assert max(growth) <= bound, f"workers grew {[g >> 20 for g in growth]} MiB past the bound {bound >> 20} MiB"
    unbounded = [p - base for p in worker_peaks(many, str(tmp_path / "unbounded"), n)]
    assert min(unbounded) > bound, f"unbounded buffer: {[g >> 20 for g in unbounded]} MiB, bound {bound >> 20} MiB"
