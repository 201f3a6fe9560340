"""Per-rank Petastorm loaders: an infinite, shuffled train stream and exactly-once eval.

Sharding. Every (rank, DataLoader worker) pair is one *global shard*:
``g = rank * workers + worker_id`` out of ``S = world_size * workers``. Petastorm shards
by row group (``cur_shard``/``shard_count``) and raises NoDataAvailableError when a
shard would get no row group, so we ask it for ``n = min(S, row_groups)`` shards and,
where ``k`` global shards share one Petastorm shard, each keeps every k-th row of each
row group it reads, from an offset fixed by the row group's first path (so the split
does not depend on the order row groups arrive in). The shards are then disjoint, cover
every row and differ in size by at most one row per row group: eval reads each image
exactly once across all ranks and workers, however the rows are grouped, and a train
shard is empty only when its row groups hold fewer rows than the ``k`` sharing them.

Train streams are infinite: the trainer takes a fixed number of batches per epoch, so
every rank runs the same number of steps. Each pass over a shard is its own
one-epoch Petastorm reader whose row-group order is seeded by (seed, epoch, pass):
Petastorm's own ``num_epochs=None`` reshuffles a timing-dependent number of times
between passes (its ventilator thread reshuffles while it waits for queue room), which
would make runs, and resumed runs, differ. Rows are shuffled again in a buffer that
spans several row groups. Augmentation randomness (crop boxes and flips, and the
optional ``auto_augment``/``random_erase`` of :class:`data.transforms.Augment`) is
keyed by (seed, epoch, shard, batch index), so a resumed epoch can skip batches without decoding them and still see
exactly the batches an uninterrupted run would have seen.

Loader workers are started by a ``forkserver``, never forked from the rank itself: a
rank runs other threads (the step heartbeat, gloo's, Arrow's, the queues' feeders), and
a process forked while another thread holds a lock (malloc's, the import lock, a C
library's) can wait for that lock forever in the child. The fork server is a
single-threaded process started once per rank with this module and Petastorm already
imported, so starting workers for every epoch and validation stays cheap; workers do not
re-run the caller's script, so a script without an ``if __name__ == "__main__":`` guard
works as it did with fork.

Memory. A worker holds, beyond its fixed cost (code and imports, mostly pages shared with
the fork server): the row group it is reading, twice (Petastorm's Arrow table and its rows
as Python bytes), the shuffle buffer (at most ``shuffle_rows`` plus one row group's rows,
as encoded JPEG bytes) and ``PREFETCH`` decoded batches waiting for the rank. With ``G``
the largest row group's bytes, ``g`` its rows, ``r`` the largest encoded image, ``S``
``shuffle_rows`` (``DEFAULT_SHUFFLE_ROWS`` unless given, at least the batch size), ``B``
the batch size and ``s`` the output side, a rank's loader holds at most::

    workers x (2 x G + (S + g) x r + PREFETCH x B x 3 x s x s)

whatever the split's length or the number of passes (``tests/test_loader_memory.py``
checks one worker against it, with 4 MiB of allocator slack, and that a worker keeping
what it read would break it). From S3, add s3fs's read-ahead (``data.object_store``).

Batches are ``(images, labels)``: ``images`` uint8 ``[B, 3, H, W]`` (channels_last
strides), ``labels`` int64 ``[B]``. Call :func:`normalize` on the device. With
``decode="gpu"`` ``images`` is a :class:`data.gpu_decode.JpegBatch` (the JPEG bytes and
the same crop boxes and flips, drawn in the workers): decode it with
:func:`data.gpu_decode.decode_on_device`.
"""
from __future__ import annotations

import contextlib
import faulthandler
import functools
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
import warnings
import weakref
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.errors import UserError
from data.manifest import COLUMNS
from data.object_store import arrow_url, petastorm_filesystem, problem, s3_settings
from data.gpu_decode import JpegBatch, decode_on_device, jpeg_batch
from data.transforms import MEAN, STD, Augment, decode_batch, eval_params, train_params

DEFAULT_SHUFFLE_ROWS = 1024
PREFETCH = 4  # decoded batches each worker may have in flight (DataLoader's prefetch_factor)
DECODE_MODES = ("cpu", "gpu")  # gpu: batches of JPEG bytes, see data.gpu_decode
WORKER_START = "forkserver"  # how loader workers start: see the module docstring
STACKS_DIR_ENV = "SPARKDP_STACKS_DIR"  # set: workers dump their stacks there on SIGUSR1
# petastorm 0.12 calls pyarrow 14's legacy ParquetDataset API (the reason for the pin);
# the deprecation warnings it triggers say nothing a user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")


@dataclass(frozen=True)
class ShardPlan:
    cur_shard: int    # Petastorm's shard index
    shard_count: int  # Petastorm's shard count, never more than the row groups
    share: int        # global shards reading the same Petastorm shard (k)
    index: int        # this global shard's index among them (j)
    row_groups: int   # row groups in this Petastorm shard

    def keep(self, paths) -> np.ndarray | None:
        """Boolean mask of the rows of one row group that this shard owns, or None for all."""
        if self.share == 1:
            return None
        offset = zlib.crc32(str(paths[0]).encode()) if len(paths) else 0
        return (np.arange(len(paths)) + offset) % self.share == self.index


def shard_plan(global_shard: int, total_shards: int, row_groups: int) -> ShardPlan:
    """Map a global shard onto Petastorm's row-group sharding (see module docstring)."""
    if row_groups < 1:
        raise UserError("the split has no row groups (is it empty?)")
    n = min(total_shards, row_groups)
    cur = global_shard % n
    return ShardPlan(cur, n, len(range(cur, total_shards, n)), global_shard // n,
                     len(range(cur, row_groups, n)))


@dataclass(frozen=True)
class ParquetSplit:
    """A checked split: the Parquet folder's URL, its rows and its row groups."""

    url: str
    rows: int
    row_groups: int


def inspect_split(url: str, num_classes: int) -> ParquetSplit:
    """Check a split's schema and labels before training; one plain line if anything is off."""
    import pyarrow.dataset as ds
    import pyarrow.compute as pc

    try:
        dataset = ds.dataset(arrow_url(url), format="parquet", exclude_invalid_files=False)
        missing = [c for c in ("image", "label") if c not in dataset.schema.names]
        if missing:
            raise UserError(f"{url} has no column(s) {', '.join(missing)}: was it written by data.convert?")
        fragments = list(dataset.get_fragments())
        row_groups = sum(f.metadata.num_row_groups for f in fragments)
        labels = dataset.to_table(columns=["label"]).column("label")
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise UserError(f"cannot read Parquet split {url}: {problem(exc)}") from None
    rows = len(labels)
    if rows:
        lo, hi = pc.min(labels).as_py(), pc.max(labels).as_py()
        if lo is None or lo < 0 or hi >= num_classes:
            raise UserError(f"{url} has labels in [{lo}, {hi}] but the manifest has {num_classes} classes")
    return ParquetSplit(url, rows, row_groups)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class ParquetImages(IterableDataset):
    """One (rank, worker) shard of a split, yielding decoded batches. See module docstring."""

    def __init__(self, parquet: ParquetSplit, *, rank: int, world_size: int, batch_size: int,
                 image_size: int, train: bool, seed: int = 0, epoch: int = 0, skip_batches: int = 0,
                 shuffle_rows: int = DEFAULT_SHUFFLE_ROWS, decode: str = "cpu", auto_augment: str = "none",
                 random_erase: float = 0.0):
        if decode not in DECODE_MODES:
            raise UserError(f"decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}")
        augment = Augment(auto_augment, random_erase)
        if train and augment.active and decode == "gpu":
            raise UserError("auto_augment and random_erase run on decoded images in the workers: use decode='cpu'")
        self.augment = augment if train and augment.active else None
        self.parquet, self.rank, self.world_size, self.decode = parquet, rank, world_size, decode
        self.batch_size, self.image_size, self.train = batch_size, image_size, train
        self.seed, self.epoch, self.skip_batches = seed, epoch, skip_batches
        self.shuffle_rows = max(shuffle_rows, batch_size) if train else batch_size
        self.storage = s3_settings(parquet.url)  # the rank's AWS variables, for its workers

    def _reader(self, plan: ShardPlan, pass_: int):
        from petastorm import make_batch_reader

        seed = int(np.random.SeedSequence([self.seed, self.epoch, pass_]).generate_state(1)[0]) if self.train else None
        return make_batch_reader(
            arrow_url(self.parquet.url), schema_fields=list(COLUMNS), reader_pool_type="dummy", num_epochs=1,
            shuffle_row_groups=self.train, seed=seed, cur_shard=plan.cur_shard, shard_count=plan.shard_count,
            filesystem=petastorm_filesystem(self.parquet.url, self.storage))

    def _row_chunks(self, plan: ShardPlan) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image bytes, labels) per row group this shard reads, after the ownership filter;
        train repeats the shard forever, one freshly seeded pass at a time."""
        for pass_ in itertools.count() if self.train else range(1):
            rows = 0
            with self._reader(plan, pass_) as reader:
                for chunk in reader:
                    keep = plan.keep(chunk.path)
                    images, labels = (chunk.image, chunk.label) if keep is None else (chunk.image[keep], chunk.label[keep])
                    if len(labels):
                        rows += len(labels)
                        yield images, labels.astype(np.int64)
            if self.train and not rows:  # a whole pass gave nothing: it would spin forever
                raise UserError(f"{self.parquet.url} has too few rows for {self.world_size} rank(s) "
                                "x loader workers: use fewer --workers or ranks, or more data")

    def _batches(self, plan: ShardPlan, shard: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Raw (bytes, labels) batches; train mixes rows across row groups in a buffer."""
        images, labels = np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
        target = self.shuffle_rows
        for n_chunk, (new_images, new_labels) in enumerate(self._row_chunks(plan)):
            images, labels = np.concatenate([images, new_images]), np.concatenate([labels, new_labels])
            if len(labels) < target:
                continue
            if self.train:
                perm = np.random.default_rng([self.seed, self.epoch, shard, n_chunk]).permutation(len(labels))
                images, labels = images[perm], labels[perm]
            n_out = max(1, (len(labels) - target // 2) // self.batch_size) if self.train else len(labels) // self.batch_size
            for i in range(n_out):
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield images[sl], labels[sl]
            images, labels = images[n_out * self.batch_size:], labels[n_out * self.batch_size:]
        if len(labels):  # only reached by finite (eval) readers: the last, partial batch
            yield images, labels

    def __iter__(self):
        worker, workers = _worker()
        # The DataLoader hands out batch q from worker q % workers. In a full epoch global
        # batch p is batch p // workers of shard p % workers; a resumed epoch starts at
        # p = skip_batches, so worker w plays the part of worker (w + skip_batches) % workers.
        role = (worker + self.skip_batches) % workers
        shard = self.rank * workers + role
        plan = shard_plan(shard, self.world_size * workers, self.parquet.row_groups)
        skip = len(range(role, self.skip_batches, workers))
        for b, (raw, labels) in enumerate(self._batches(plan, shard)):
            if b < skip:
                continue
            params = self._params(shard, b)
            if self.decode == "gpu":
                images = jpeg_batch(raw, params)
            else:  # in a worker, straight into shared memory: the hand-off to the rank copies nothing
                images = decode_batch(raw, self.image_size, params, shared=get_worker_info() is not None)
            if self.augment is not None:
                key = int(np.random.SeedSequence([self.seed, self.epoch, shard, b, 8]).generate_state(1)[0])
                images = self.augment(images, key)
            yield images, labels  # a tensor in the rank (Batches): 32 numbers travel in the message, not in shared memory

    def _params(self, shard: int, b: int):
        """``(width, height) -> (box, flip)`` for the images of batch ``b``, in order."""
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, shard, b, 7])
            return lambda width, height: train_params(width, height, rng)
        return lambda width, height: eval_params(width, height, self.image_size)


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start from. With ``forkserver`` (see the
    module docstring) the server is started here unless it runs: call this early to have
    its imports overlap other start-up work."""
    ctx = multiprocessing.get_context(WORKER_START)
    if WORKER_START == "forkserver":
        ctx.set_forkserver_preload(["data.loader", "petastorm", "petastorm.reader"])  # what every worker imports
        # pyarrow's allocator starts a background thread on import: off, the server stays single-threaded.
        with _env(JE_ARROW_MALLOC_CONF="background_thread:false"):
            from multiprocessing import forkserver

            forkserver.ensure_running()
    return ctx


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start processes that do not re-run the caller's main module.

    A spawn-style start (forkserver, spawn) makes each new process import the parent's
    ``__main__`` again: an unguarded script (no ``if __name__ == "__main__":``) would run
    its whole training in every loader worker. The workers need nothing from it (the
    dataset and worker loop live in this package), so it is hidden while they start.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _exit_with(pid: int) -> None:
    """End this worker once process ``pid`` (the rank that owns it) is gone or a zombie.

    A worker's parent is the fork server, which lives as long as any worker holds its
    "alive" pipe, so neither notices a rank killed with SIGKILL; this does."""
    while True:
        time.sleep(1.0)
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            os._exit(1)
        if state in ("Z", "X"):
            os._exit(1)


def _worker_init(stacks_dir: str | None, rank: int, owner: int, worker: int) -> None:
    """In each worker: end with the rank that owns it; on SIGUSR1, write all its threads'
    stacks to ``stacks_dir``."""
    threading.Thread(target=_exit_with, args=(owner,), name="sparkdp-owner-watch", daemon=True).start()
    if stacks_dir:
        os.makedirs(stacks_dir, exist_ok=True)
        dump = open(os.path.join(stacks_dir, f"rank{rank}-worker{worker}.txt"), "a")  # kept open for the handler
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)


def _as_is(batch):
    """The DataLoader's collate function: a worker's batch is sent as it was built (the
    default would make the numpy labels a tensor, which travels through shared memory
    and a file descriptor handed over a socket: more work than the 32 numbers are worth)."""
    return batch


_LIVE: "weakref.WeakSet[Batches]" = weakref.WeakSet()


def live_workers() -> list[tuple[int, int]]:
    """``(worker index, pid)`` of every loader worker this process has running."""
    return [(i, w.pid) for batches in list(_LIVE) for i, w in enumerate(getattr(batches._it, "_workers", []))
            if w.pid is not None]


class Batches:
    """Iterator over a DataLoader that owns its worker processes; ``close()`` stops them."""

    def __init__(self, dataset: ParquetImages, workers: int, pin_memory: bool):
        self.dataset, self._pin = dataset, pin_memory and torch.cuda.is_available()
        # Our own generator: otherwise each new iterator draws its worker seed from the global
        # torch RNG, shifting dropout masks etc. between a resumed and an uninterrupted run.
        # (Augmentation is keyed explicitly, see ParquetImages; worker seeds are unused.)
        init = functools.partial(_worker_init, os.environ.get(STACKS_DIR_ENV), dataset.rank, os.getpid())
        self._loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                  prefetch_factor=PREFETCH if workers else None, generator=torch.Generator(),
                                  collate_fn=_as_is,
                                  multiprocessing_context=worker_context() if workers else None,
                                  worker_init_fn=init if workers else None)
        with _main_hidden():
            self._it = iter(self._loader)  # starts the workers
        _LIVE.add(self)

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            images, labels = next(self._it)
            labels = torch.from_numpy(labels)
            # pinned as the DataLoader pins images: a copy to the GPU from pageable memory waits for it
            return images, labels.pin_memory() if self._pin else labels
        except UserError as exc:  # from a worker: its text is "Caught UserError in ...", a traceback, the message
            last = str(exc).strip().splitlines()[-1]
            raise UserError(last.split("UserError: ", 1)[-1]) from None

    def close(self) -> None:
        _LIVE.discard(self)
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown:
            shutdown()


@contextlib.contextmanager
def make_loader(parquet: ParquetSplit, *, workers: int = 2, pin_memory: bool = False, **kwargs) -> Iterator[Batches]:
    """Context manager yielding :class:`Batches` over ``ParquetImages(parquet, **kwargs)``."""
    batches = Batches(ParquetImages(parquet, **kwargs), workers, pin_memory)
    try:
        yield batches
    finally:
        batches.close()


def model_input(images: torch.Tensor | JpegBatch, size: int, device: torch.device,
                channels_last: bool = True) -> torch.Tensor:
    """A loader batch as the model takes it: normalised float on ``device``; a
    :class:`JpegBatch` (``decode="gpu"``) is decoded there first."""
    if isinstance(images, JpegBatch):
        images = decode_on_device(images, size, device)
    return normalize(images, device, channels_last=channels_last)


def normalize(images: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32,
              channels_last: bool = True) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` -> normalised float on ``device`` (channels_last memory by default)."""
    mean, std = _mean_std(torch.device(device), dtype)
    x = images.to(device, non_blocking=True).to(dtype).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD (x 255) on ``device``, made once per device: a tensor made from Python
    values is a copy from pageable memory, which waits for all queued GPU work, so making
    them per batch would stop the CPU from running ahead of the GPU."""
    return tuple(torch.tensor(v, device=device, dtype=dtype).view(1, 3, 1, 1) * 255 for v in (MEAN, STD))
