"""Per-rank Petastorm loaders, in process: exactly-once eval, shard plans, train streams.

Real Petastorm on Parquet written by the real ``data.convert``; ranks are simulated by
building each rank's loader in turn (the loaders need no process group).
"""
from __future__ import annotations

import hashlib
import itertools
import time

import numpy as np
import pytest
import torch

from data.loader import ParquetImages, inspect_split, make_loader, open_split
from data.split_reader import RowGroupReader


def eval_images(parquet, world_size: int, workers: int) -> list[tuple[int, str]]:
    """(label, digest of the decoded pixels) of every image all ranks' eval loaders yield."""
    seen = []
    for rank in range(world_size):
        with make_loader(parquet, workers=workers, rank=rank, world_size=world_size, batch_size=5,
                         image_size=16, train=False) as batches:
            for images, labels in batches:
                seen += [(int(y), hashlib.sha1(x.numpy().tobytes()).hexdigest()) for x, y in zip(images, labels)]
    return seen


@pytest.mark.parametrize("dataset", ["one_group", "seven_groups"])
def test_eval_reads_every_image_exactly_once_for_any_ranks_and_workers(dataset, request):
    data, manifest = request.getfixturevalue(dataset)
    parquet = open_split(data, "val", manifest)
    reference = sorted(eval_images(parquet, 1, 0))
    assert len(reference) == manifest.splits["val"].rows
    assert len({digest for _, digest in reference}) == len(reference)  # distinct images: duplicates would show
    assert [sum(1 for y, _ in reference if y == k) for k in range(manifest.num_classes)] == \
        manifest.splits["val"].per_class
    for world_size, workers in itertools.product(range(1, 5), range(3)):
        assert sorted(eval_images(parquet, world_size, workers)) == reference, (world_size, workers)


def test_a_train_epoch_draws_every_image_once_however_unequal_the_row_groups(tmp_path):
    """Streams are equal row ranges of each pass, and a stream's buffer empties at the pass's
    end: with steps_per_epoch = rows // global batch, no image is drawn twice in an epoch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sizes = [40, 3, 17, 4]  # row groups of very different sizes
    n = sum(sizes)
    table = pa.table({"image": pa.array([b"x"] * n, pa.binary()), "label": pa.array([0] * n, pa.int64()),
                      "path": pa.array([f"c/{i:03d}.jpg" for i in range(n)], pa.string())})
    (tmp_path / "train").mkdir()
    with pq.ParquetWriter(tmp_path / "train" / "part-0.parquet", table.schema) as writer:
        for start, size in zip(np.cumsum([0] + sizes), sizes):
            writer.write_table(table.slice(start, size))
    parquet = inspect_split(f"file://{tmp_path}/train", [f"file://{tmp_path}/train/part-0.parquet"], 1)
    assert list(parquet.group_rows) == sizes
    for streams, batch in ((4, 8), (2, 16), (8, 8)):
        dataset = ParquetImages(parquet, rank=0, world_size=1, batch_size=batch, image_size=8, train=True,
                                streams=streams, shuffle_rows=16)
        with RowGroupReader(parquet) as reader:
            per_stream = [dataset._stream(s, reader) for s in range(streams)]
            drawn = [path for _ in range(n // batch) for source in per_stream for path in next(source)[2]]
        assert len(drawn) == len(set(drawn)) == n // batch * batch, (streams, batch)


def take(parquet, n: int, skip: int = 0, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    with make_loader(parquet, batch_size=4, image_size=8, train=True, seed=5, epoch=1, skip_batches=skip,
                     shuffle_rows=16, **kwargs) as batches:
        return list(itertools.islice(batches, n))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_train_stream_never_runs_dry_with_more_shards_than_row_groups(one_group):
    data, manifest = one_group
    parquet = open_split(data, "train", manifest)
    for rank in range(4):  # 4 ranks x 2 workers = 8 shards of 1 row group
        batches = take(parquet, 30, workers=2, rank=rank, world_size=4)  # ~5 passes over a ~10-row shard
        assert len(batches) == 30 and all(len(y) == 4 for _, y in batches)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_train_stream_is_repeatable_and_resumes_mid_epoch(seven_groups, workers):
    """A resumed epoch (skip_batches) sees exactly the batches an uninterrupted one does."""
    data, manifest = seven_groups
    parquet = open_split(data, "train", manifest)
    kwargs = dict(workers=workers, rank=1, world_size=2)
    full = take(parquet, 16, **kwargs)  # ~42 rows per rank: 16 batches of 4 cross several passes
    images, labels = full[0]  # the contract, whatever way the batch came from a worker
    assert images.dtype == torch.uint8 and images.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.shape == (4,)
    assert same(full, take(parquet, 16, **kwargs))
    for skip in (1, 2, 3):
        assert same(full[skip:], take(parquet, 16 - skip, skip=skip, **kwargs)), skip


def test_train_ranks_read_different_rows(seven_groups):
    data, manifest = seven_groups
    parquet = open_split(data, "train", manifest)
    first = [take(parquet, 2, workers=0, rank=r, world_size=2) for r in range(2)]
    assert not same(first[0], first[1])



def test_more_train_streams_than_rows_is_a_one_line_user_error(one_group):
    from data.errors import UserError

    data, manifest = one_group
    parquet = open_split(data, "train", manifest)
    world, workers = 50, 2  # 100 streams share the split's 84 rows: some would own none
    with pytest.raises(UserError) as caught:
        take(parquet, 4, workers=workers, rank=0, world_size=world)  # batches of both workers
    message = str(caught.value)
    assert "too few rows" in message and "\n" not in message and "Traceback" not in message


def test_ring_buffers_go_to_the_workers_in_the_order_the_rank_frees_them():
    """Every worker fills its rows of the same buffer for its j-th message; a worker a whole
    ring ahead waits until the rank frees a buffer, and takes whichever it frees first."""
    import threading

    from data.loader import SlotRing
    from data.transforms import decode_batch
    from tests.sample_images import encode, noise

    jpeg = encode(noise(16, 12, seed=1), "JPEG")
    whole = lambda w, h: ((0, 0, w, h), False)  # noqa: E731
    ring = SlotRing([0, 2, 3], steps=2, size=8, slots=2)  # two workers: rows 0-1 and row 2 of each step
    assert ring.images.is_shared() and ring.given.is_shared()
    assert [ring.slot(w, j)[0] for j in range(2) for w in range(2)] == [0, 0, 1, 1]
    slot, rows = ring.slot(1, 0)
    decoded = decode_batch([jpeg], 8, whole, out=rows[1])
    assert torch.equal(decoded, decode_batch([jpeg], 8, whole)) and rows.shape[:2] == (2, 1)
    assert decoded.data_ptr() == ring.images[slot, 1, 2].data_ptr()
    threading.Timer(0.3, ring.free, (1,)).start()  # buffer 1's slot, before buffer 0's
    started = time.perf_counter()
    assert ring.slot(0, 2)[0] == 1 and ring.slot(1, 2)[0] == 1
    assert time.perf_counter() - started >= 0.25
    ring.free(0)
    assert ring.slot(0, 3)[0] == 0


@pytest.mark.parametrize("streams", [2, 3])  # 3: worker 0 has one stream, worker 1 two
def test_train_batches_are_views_of_the_ring_that_stay_valid_however_long_they_are_kept(seven_groups, monkeypatch,
                                                                                       streams):
    """A train batch is handed out as a view of the workers' shared ring, not copied out
    of it; its buffer goes back to the workers only once no batch views it, so a kept batch
    stays valid. Batches kept by the caller come out as copies once the buffers they view
    would leave the workers too few. The pixels are those of a loader without workers."""
    import data.loader

    data_dir, manifest = seven_groups
    parquet = open_split(data_dir, "train", manifest)
    monkeypatch.setattr(data.loader, "GROUP_IMAGES", 2 * streams)  # a buffer: 2 or 4 steps
    options = dict(batch_size=2 * streams, image_size=8, train=True, seed=5, epoch=1, shuffle_rows=16, rank=0,
                   world_size=1, streams=streams)
    with make_loader(parquet, workers=2, **options) as batches:
        ring = batches.dataset.ring
        steps = ring.slots * ring.steps * 3  # three times round the ring
        start, end = ring.images.data_ptr(), ring.images.data_ptr() + ring.images.numel()
        viewed = [start <= x.data_ptr() < end for x, _ in itertools.islice(batches, steps)]  # each dropped
        kept = [(x, x.clone(), y) for x, y in itertools.islice(batches, steps)]
        procs = batches.workers()
    # The kept views leave the workers few free buffers: a worker may be waiting for one, and
    # close() ends that wait, so both exit on their own (not terminated after a 5 s join).
    assert [p.exitcode for p in procs] == [0, 0]
    assert all(viewed)
    assert all(torch.equal(x, at_the_time) for x, at_the_time, _ in kept)
    views = (ring.slots - 2) * ring.steps  # then the workers would be left one buffer
    assert [start <= x.data_ptr() < end for x, _, _ in kept] == [True] * views + [False] * (steps - views)
    with make_loader(parquet, workers=0, skip_batches=steps, **options) as batches:
        without_workers = list(itertools.islice(batches, steps))
    assert same([(x, y) for x, _, y in kept], without_workers)


def test_row_groups_read_as_petastorms_own_worker_reads_them(seven_groups, monkeypatch):
    """data.row_group_worker reads files it keeps open: the rows must be Petastorm's own,
    in any order of row groups, with files closed and reopened as a cap of one open file
    makes it (the split has seven files)."""
    from petastorm.arrow_reader_worker import ArrowReaderWorker
    from petastorm.fs_utils import get_filesystem_and_path_or_paths
    from petastorm.reader import Reader

    import data.row_group_worker
    from data.split_reader import InlinePool

    folder, manifest = seven_groups
    parquet = open_split(folder, "val", manifest)
    assert len(parquet.sources) > 1
    monkeypatch.setattr(data.row_group_worker, "OPEN_FILES", 1)
    fs, paths = get_filesystem_and_path_or_paths(list(parquet.sources))
    pool = InlinePool()
    petastorm = Reader(fs, paths, schema_fields=["image", "label", "path"], worker_class=ArrowReaderWorker,
                       reader_pool=pool, shuffle_row_groups=False, num_epochs=1, is_batched_reader=True)
    order = np.random.default_rng(0).permutation(parquet.row_groups).tolist() * 2
    with RowGroupReader(parquet) as reader:
        for group in order:
            pool.queue(group)
            want = next(petastorm)
            images, labels, paths = reader.read(group)
            assert images.tolist() == want.image.tolist() and images.dtype == object
            assert labels.dtype == np.int64 and labels.tolist() == want.label.tolist()
            assert paths.tolist() == want.path.tolist()
    petastorm.stop()
    petastorm.join()


def test_shared_memory_too_small_for_the_ring_is_a_one_line_user_error(one_group, monkeypatch, tmp_path):
    """A container's /dev/shm is 64 MiB unless given more: torch would fail to make the ring
    with a traceback that names neither the loader nor the fix, so the loader refuses
    first, saying what to do (here the shared-memory folder is a real 1 MiB tmpfs)."""
    import data.loader
    from data.errors import UserError
    from tests.procs import tiny_disk

    data_dir, manifest = one_group
    parquet = open_split(data_dir, "train", manifest)
    with tiny_disk(str(tmp_path / "shm"), "1m") as shm:
        monkeypatch.setattr(data.loader, "SHM_DIR", shm)
        with pytest.raises(UserError, match=r"shared memory needs \d+ MiB but .*shm has 1 MiB free: .*--shm-size"):
            with make_loader(parquet, workers=2, rank=0, world_size=1, batch_size=4, image_size=112, train=True):
                pass
        monkeypatch.setattr(data.loader, "SHM_DIR", str(tmp_path))  # room enough: the same loader starts
        with make_loader(parquet, workers=2, rank=0, world_size=1, batch_size=4, image_size=112, train=True) as b:
            assert next(b)[0].shape == (4, 3, 112, 112)
