"""Per-rank Petastorm loaders: an infinite, shuffled train stream and exactly-once eval.

Train order: canonical streams, independent of the world size. A train split is read
as ``C`` *streams* (``streams``; see :func:`default_streams`). Stream ``s`` is global
shard ``s`` of ``C`` under the shard rules below; each epoch it is an endless sequence
of one-epoch Petastorm passes over its row groups (row-group order seeded by (seed,
epoch, pass): Petastorm's own ``num_epochs=None`` reshuffles a timing-dependent number
of times between passes), its rows shuffled again in a buffer of ``shuffle_rows`` rows
(seeded by (seed, epoch, stream, chunk)). Global step ``t`` of an epoch takes the next
``global_batch / C`` rows of every stream, in stream order. So which images make up
global step ``t``, and in which order, depends only on the split, the seed, the epoch,
the global batch and ``C``: not on the world size or the loader workers. Rank ``r`` of
``W`` owns streams ``r*C/W .. (r+1)*C/W - 1``, so its batch at step ``t`` is the slice
``r*B/W .. (r+1)*B/W`` of global batch ``t`` (``B`` the global batch); its loader
workers own contiguous runs of those streams (``min(workers, C/W)`` workers start), each
yields its part of every step and the rank joins the parts in stream order. Rules:
``W`` divides ``C`` and ``C`` divides ``B``. Augmentation randomness (crop boxes and
flips, and the optional ``auto_augment``/``random_erase`` of
:class:`data.transforms.Augment`) is keyed by (seed, epoch, stream, step), so the same
image at the same global step gets the same pixels on any world size, and a resumed
epoch skips steps without decoding them. Every rank runs the same number of steps
(the trainer takes a fixed number per epoch); a stream's passes repeat, so each image is
read once per pass over its stream. Memory: a worker holds, per stream it owns, one row
group being read and the stream's buffer, so fewer ranks than ``C`` hold more streams each.

Shards (train streams and eval). Global shard ``g`` of ``S`` (a train stream: ``S = C``;
eval: ``g = rank * workers + worker_id`` of ``S = world_size * workers``) maps onto
Petastorm's row-group sharding (``cur_shard``/``shard_count``), which raises
NoDataAvailableError when a shard would get no row group, so we ask it for
``n = min(S, row_groups)`` shards and, where ``k`` global shards share one Petastorm
shard, each keeps every k-th row of each row group it reads (read amplification ``k``),
from an offset fixed by the row group's first path (so the split does not depend on the
order row groups arrive in). The shards are then disjoint, cover every row and differ in
size by at most one row per row group: eval reads each image exactly once across all
ranks and workers, however the rows are grouped, and a train stream is empty (a one-line
error) only when its row groups hold fewer rows than the ``k`` sharing them.

Loader workers are started by a ``forkserver``, never forked from the rank itself: a
rank runs other threads (the step heartbeat, gloo's, Arrow's, the queues' feeders), and
a process forked while another thread holds a lock (malloc's, the import lock, a C
library's) can wait for that lock forever in the child. The fork server is a
single-threaded process started once per rank with this module and Petastorm already
imported, so starting workers for every epoch and validation stays cheap; workers do not
re-run the caller's script, so a script without an ``if __name__ == "__main__":`` guard
works as it did with fork.

Memory. A worker holds, beyond its fixed cost (code and imports, mostly pages shared with
the fork server), for each stream it reads (train: the canonical streams it owns; eval: its
one shard): the row group it is reading, twice (Petastorm's Arrow table and its rows as
Python bytes) and the shuffle buffer (at most ``S`` plus one row group's rows, as encoded
JPEG bytes); and ``PREFETCH`` decoded parts of batches waiting for the rank. With ``G``
the largest row group's bytes, ``g`` its rows, ``r`` the largest encoded image, ``S``
``shuffle_rows`` (``DEFAULT_SHUFFLE_ROWS`` unless given, at least a stream's rows per
step; eval: the batch size), ``B`` the rank's batch and ``s`` the output side, a rank's
loader holds at most::

    streams x (2 x G + (S + g) x r) + workers x PREFETCH x B x 3 x s x s

with ``streams`` = ``C / world_size`` for train (one per worker by default) and
``workers`` for eval, whatever the split's length or the number of passes
(``tests/test_loader_memory.py`` checks one worker with one stream against it, with
4 MiB of allocator slack, and that a worker keeping what it read would break it). A run
resumed on fewer ranks owns more streams per rank, and holds more. From S3, add s3fs's read-ahead (``data.object_store``).

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
RECORD_PATHS_ENV = "SPARKDP_RECORD_PATHS"  # test hook: train workers log each step's paths there
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


def default_streams(global_batch: int, world_size: int, workers: int) -> int:
    """The stream count when none is given: one stream per (rank, loader worker) as far as
    the global batch allows, i.e. the largest ``C <= world_size * max(workers, 1)`` that the
    world size divides and that divides the global batch. Pass ``streams`` explicitly (the
    trainer keeps the checkpoint's) to resume the same order on another world size."""
    return max(c for c in range(world_size, world_size * max(workers, 1) + 1, world_size) if global_batch % c == 0)


def check_streams(streams: int, global_batch: int, world_size: int) -> None:
    """The train-order rules (module docstring), as one-line errors."""
    if streams < 1 or global_batch % streams:
        raise UserError(f"{streams} stream(s) do not divide the global batch {global_batch}: "
                        "choose a stream count that divides it")
    if streams % world_size:
        raise UserError(f"{world_size} ranks cannot share {streams} stream(s) equally: the world size must divide "
                        "the stream count (resume on a world size that divides it, or start with more streams)")


@dataclass(frozen=True)
class ParquetSplit:
    """A checked split: the Parquet folder's URL, its rows and its row groups."""

    url: str
    rows: int
    row_groups: int
    files: tuple[tuple[str, int], ...] = ()  # (file as pyarrow names it, its row groups), in listing order


def inspect_split(url: str, num_classes: int) -> ParquetSplit:
    """Check a split's schema and labels before training; one plain line if anything is off."""
    import pyarrow.dataset as ds
    import pyarrow.compute as pc

    try:
        dataset = ds.dataset(arrow_url(url), format="parquet", exclude_invalid_files=False)
        missing = [c for c in ("image", "label") if c not in dataset.schema.names]
        if missing:
            raise UserError(f"{url} has no column(s) {', '.join(missing)}: was it written by data.convert?")
        files = tuple((f.path, f.metadata.num_row_groups) for f in dataset.get_fragments())
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
    return ParquetSplit(url, rows, sum(n for _, n in files), files)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class ParquetImages(IterableDataset):
    """This rank's train streams (each worker its share of them), or one (rank, worker)
    eval shard of a split, yielding decoded batches. See the module docstring.

    ``batch_size`` is the rank's batch (train: its ``1/world_size`` of the global batch).
    With several workers a train step arrives as one part per worker, joined by
    :class:`Batches`; :meth:`workers_for` says how many workers a train stream uses."""

    def __init__(self, parquet: ParquetSplit, *, rank: int, world_size: int, batch_size: int,
                 image_size: int, train: bool, seed: int = 0, epoch: int = 0, skip_batches: int = 0,
                 shuffle_rows: int = DEFAULT_SHUFFLE_ROWS, decode: str = "cpu", auto_augment: str = "none",
                 random_erase: float = 0.0, streams: int | None = None, workers: int = 0):
        if decode not in DECODE_MODES:
            raise UserError(f"decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}")
        augment = Augment(auto_augment, random_erase)
        if train and augment.active and decode == "gpu":
            raise UserError("auto_augment and random_erase run on decoded images in the workers: use decode='cpu'")
        self.augment = augment if train and augment.active else None
        self.parquet, self.rank, self.world_size, self.decode = parquet, rank, world_size, decode
        self.batch_size, self.image_size, self.train = batch_size, image_size, train
        self.seed, self.epoch, self.skip_batches = seed, epoch, skip_batches
        global_batch = batch_size * world_size
        self.streams = streams or default_streams(global_batch, world_size, workers)
        if train:
            check_streams(self.streams, global_batch, world_size)
        self.chunk = global_batch // self.streams  # rows each stream gives every step
        self.shuffle_rows = max(shuffle_rows, self.chunk) if train else batch_size
        self.record = os.environ.get(RECORD_PATHS_ENV)  # read here: workers may not see later changes
        self.storage = s3_settings(parquet.url)  # the rank's AWS variables, for its workers

    def workers_for(self, workers: int) -> int:
        """Loader workers to start: train streams are owned whole, so at most one per stream."""
        return min(workers, self.streams // self.world_size) if self.train else workers

    def _reader(self, plan: ShardPlan, pass_: int):
        from petastorm import make_batch_reader

        seed = int(np.random.SeedSequence([self.seed, self.epoch, pass_]).generate_state(1)[0]) if self.train else None
        return make_batch_reader(
            arrow_url(self.parquet.url), schema_fields=list(COLUMNS), reader_pool_type="dummy", num_epochs=1,
            shuffle_row_groups=self.train, seed=seed, cur_shard=plan.cur_shard, shard_count=plan.shard_count,
            filesystem=petastorm_filesystem(self.parquet.url, self.storage))

    def _row_chunks(self, plan: ShardPlan) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(image bytes, labels, paths) per row group this shard reads, after the ownership
        filter; train repeats the shard forever, one freshly seeded pass at a time."""
        for pass_ in itertools.count() if self.train else range(1):
            rows = 0
            with self._reader(plan, pass_) as reader:
                for chunk in reader:
                    keep = plan.keep(chunk.path)
                    images, labels, paths = (chunk.image, chunk.label, chunk.path) if keep is None else \
                        (chunk.image[keep], chunk.label[keep], chunk.path[keep])
                    if len(labels):
                        rows += len(labels)
                        yield images, labels.astype(np.int64), paths
            if self.train and not rows:  # a whole pass gave nothing: it would spin forever
                raise UserError(f"{self.parquet.url} has too few rows for {self.streams} train stream(s): "
                                "use fewer --streams (or ranks x loader workers), or more data")

    def _batches(self, plan: ShardPlan, shard: int, size: int) -> Iterator[tuple[np.ndarray, ...]]:
        """Raw (bytes, labels, paths) batches of ``size`` rows; train mixes rows across row
        groups in a buffer."""
        rows = (np.empty(0, dtype=object), np.empty(0, dtype=np.int64), np.empty(0, dtype=object))
        target = self.shuffle_rows
        for n_chunk, new in enumerate(self._row_chunks(plan)):
            rows = tuple(np.concatenate([old, more]) for old, more in zip(rows, new))
            n = len(rows[1])
            if n < target:
                continue
            if self.train:
                perm = np.random.default_rng([self.seed, self.epoch, shard, n_chunk]).permutation(n)
                rows = tuple(column[perm] for column in rows)
            n_out = max(1, (n - target // 2) // size) if self.train else n // size
            for i in range(n_out):
                yield tuple(column[i * size:(i + 1) * size] for column in rows)
            rows = tuple(column[n_out * size:] for column in rows)
        if len(rows[1]):  # only reached by finite (eval) readers: the last, partial batch
            yield rows

    def _stream(self, stream: int) -> Iterator[tuple[np.ndarray, ...]]:
        """Train stream ``stream``: its ``chunk`` rows for each step of the epoch, from step 0."""
        return self._batches(shard_plan(stream, self.streams, self.parquet.row_groups), stream, self.chunk)

    def worker_streams(self, worker: int, workers: int) -> range:
        """The train streams worker ``worker`` of ``workers`` (as started) owns: a contiguous run
        of this rank's, so joining the workers' parts in order keeps the stream order."""
        per_rank = self.streams // self.world_size
        first = self.rank * per_rank
        return range(first + worker * per_rank // workers, first + (worker + 1) * per_rank // workers)

    def __iter__(self):
        worker, workers = _worker()
        if self.train:
            yield from self._train_parts(self.worker_streams(worker, workers))
            return
        shard = self.rank * workers + worker
        plan = shard_plan(shard, self.world_size * workers, self.parquet.row_groups)
        for raw, labels, _ in self._batches(plan, shard, self.batch_size):
            yield self._decode(raw, [lambda width, height: eval_params(width, height, self.image_size)]), labels

    def _train_parts(self, streams: range):
        """This worker's part of each step: the streams' chunks, decoded and augmented with
        randomness keyed by (seed, epoch, stream, step), from step ``skip_batches`` on."""
        sources = [self._stream(s) for s in streams]
        for step in itertools.count():
            chunks = [next(source) for source in sources]
            if step < self.skip_batches:
                continue  # a resumed epoch: the rows are taken, nothing is decoded
            rngs = [np.random.default_rng([self.seed, self.epoch, s, step, 7]) for s in streams]
            raw = np.concatenate([c[0] for c in chunks])
            images = self._decode(raw, [functools.partial(train_params, rng=rng) for rng in rngs])
            if self.augment is not None:
                for i, s in enumerate(streams):
                    key = int(np.random.SeedSequence([self.seed, self.epoch, s, step, 8]).generate_state(1)[0])
                    self.augment(images[i * self.chunk:(i + 1) * self.chunk], key)
            if self.record:
                self._record(step, streams, chunks)
            # labels as numpy: 32 numbers travel in the message, not in shared memory (Batches makes the tensor)
            yield images, np.concatenate([c[1] for c in chunks])

    def _record(self, step: int, streams: range, chunks: list) -> None:
        """Test hook (``SPARKDP_RECORD_PATHS=DIR``): append this worker's part of ``step`` as
        ``{"epoch", "step", "stream", "paths"}`` lines to ``DIR/<pid>.jsonl``."""
        import json

        with open(os.path.join(self.record, f"{os.getpid()}.jsonl"), "a") as f:
            for s, chunk in zip(streams, chunks):
                f.write(json.dumps({"epoch": self.epoch, "step": step, "stream": s, "paths": chunk[2].tolist()}) + "\n")

    def _decode(self, raw, params: list):
        """Decode (or wrap for GPU decoding) ``raw``; image ``i`` takes its crop and flip from
        ``params[i // chunk]`` (one callable per stream chunk, or one for all)."""
        n = itertools.count()
        per = self.chunk if len(params) > 1 else max(len(raw), 1)
        draw = lambda width, height: params[next(n) // per](width, height)  # noqa: E731
        if self.decode == "gpu":
            return jpeg_batch(raw, draw)
        # in a worker, straight into shared memory: the hand-off to the rank copies nothing
        return decode_batch(raw, self.image_size, draw, shared=get_worker_info() is not None)


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
        self.dataset = dataset
        workers = dataset.workers_for(workers)
        # A train step comes as one part from each worker, in worker order (the DataLoader
        # takes its workers in turn): joined here, then pinned when asked.
        self._parts = workers if dataset.train and workers > 1 else 1
        self._pin = pin_memory and torch.cuda.is_available()
        pin_memory = pin_memory and self._parts == 1
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
            if self._parts == 1:
                images, labels = next(self._it)  # images pinned by the DataLoader when asked
                labels = torch.from_numpy(labels)
                # pinned as the DataLoader pins images: a copy to the GPU from pageable memory waits for it
                return images, labels.pin_memory() if self._pin else labels
            images, labels = _join([next(self._it) for _ in range(self._parts)])
            if self._pin:
                images = JpegBatch(*(t.pin_memory() for t in images)) if isinstance(images, JpegBatch) \
                    else images.pin_memory()
                labels = labels.pin_memory()
            return images, labels
        except UserError as exc:  # from a worker: its text is "Caught UserError in ...", a traceback, the message
            last = str(exc).strip().splitlines()[-1]
            raise UserError(last.split("UserError: ", 1)[-1]) from None

    def close(self) -> None:
        _LIVE.discard(self)
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown:
            shutdown()


def _join(parts: list) -> tuple[torch.Tensor | JpegBatch, torch.Tensor]:
    """One batch from the workers' parts of a step, in order."""
    labels = torch.from_numpy(np.concatenate([y for _, y in parts]))
    if not isinstance(parts[0][0], JpegBatch):
        return torch.cat([x for x, _ in parts]), labels  # keeps channels_last strides
    starts = np.cumsum([0] + [len(x.data) for x, _ in parts[:-1]])
    return JpegBatch(torch.cat([x.data for x, _ in parts]),
                     torch.cat([parts[0][0].offsets[:1]] + [x.offsets[1:] + int(o) for (x, _), o in zip(parts, starts)]),
                     torch.cat([x.boxes for x, _ in parts]), torch.cat([x.flips for x, _ in parts])), labels


@contextlib.contextmanager
def make_loader(parquet: ParquetSplit, *, workers: int = 2, pin_memory: bool = False, **kwargs) -> Iterator[Batches]:
    """Context manager yielding :class:`Batches` over ``ParquetImages(parquet, **kwargs)``."""
    batches = Batches(ParquetImages(parquet, workers=workers, **kwargs), workers, pin_memory)
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
