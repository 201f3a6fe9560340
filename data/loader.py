"""Per-rank loaders: an infinite, shuffled train stream and exactly-once eval, decoded in
worker processes (which rows, in which order: :mod:`data.order`; the worker processes:
:mod:`data.workers`; reading a split: :mod:`data.split_reader`).

Batches are ``(images, labels)``: ``images`` uint8 ``[B, 3, H, W]`` (channels_last
strides), ``labels`` int64 ``[B]``; normalise on the device
(:func:`data.gpu_decode.model_input`). With ``decode="gpu"`` ``images`` is a
:class:`data.gpu_decode.JpegBatch` (the JPEG bytes with the same crop boxes and flips).

Hand-off. Each train worker decodes its parts of several consecutive steps (at least
``GROUP_IMAGES`` images) straight into its rows of one buffer of a shared-memory ring made
once by the rank (:class:`SlotRing`, ``RING_PREFETCH + 2`` buffers of whole batches) and
sends only the buffer's number and the labels. The rank hands each step out as a view of
the buffer, not a copy, and gives the buffer back to the workers once its last step is out
and no batch viewing it is alive: a batch stays valid however long it is kept. While the
caller keeps batches of ``RING_PREFETCH`` buffers, or when CUDA pins, batches are copied
out instead (pinned). No shared-memory file is made per batch, no file descriptor crosses
a socket and one message carries many images. Eval batches and JPEG batches travel in
per-batch shared memory.

Memory. A worker holds, beyond its fixed cost (code and imports, mostly pages shared with
the fork server), for each stream it reads (train: the canonical streams it owns; eval:
its one shard): the row group it is reading, twice (Petastorm's Arrow table and its rows
as Python bytes) and the shuffle buffer (at most ``S`` plus one row group's rows, as
encoded JPEG bytes); and its ring buffers. With ``G`` the largest row group's
bytes, ``g`` its rows, ``r`` the largest encoded image, ``S`` ``shuffle_rows``
(``DEFAULT_SHUFFLE_ROWS`` unless given, at least a stream's rows per step; eval: the
batch size), ``p`` the most rows a worker gives a step (the rank's batch ``B`` / workers
when they divide it), ``k = ceil(GROUP_IMAGES / p)`` and ``s`` the output side, a rank's
loader holds at most::

    streams x (2 x G + (S + g) x r) + (RING_PREFETCH + 2) x k x B x 3 x s x s

(eval: ``workers x PREFETCH x B x 3 x s x s`` in flight instead of the ring), with
``streams`` = ``C / world_size`` for train and ``workers`` for eval, whatever the
split's length or the number of passes (``tests/test_loader_memory.py`` holds a worker
to it). A run resumed on fewer ranks owns more streams per rank, and holds more. From
S3, add s3fs's read-ahead (:mod:`data.object_store`). A kept train batch keeps the whole
ring in memory, after ``close()`` too.

``SPARKDP_RECORD_PATHS=DIR`` makes every train worker append its part of each step to
``DIR/<pid>.jsonl`` (``{"epoch", "step", "stream", "paths"}``): the sample order as the
trainer read it, for audits (the elastic-resume tests compare it across world sizes).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import multiprocessing.connection
import os
import time
import weakref
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data import workers as wp
from data.errors import RunFailure, UserError
from data.gpu_decode import JpegBatch, jpeg_batch
from data.object_store import s3_settings
from data.order import (DEFAULT_SHUFFLE_ROWS, augment_key, augment_rng, batches_of, check_streams, default_streams,
                        mixed_rows, pass_order, row_ranges, worker_streams)
from data.split_reader import ParquetSplit, RowGroupReader, inspect_split, open_split
from data.transforms import Augment, decode_batch, eval_params, train_params

PREFETCH = 4  # messages each worker may have in flight (DataLoader's prefetch_factor); the ring: RING_PREFETCH
# Train messages in flight per worker, each GROUP_IMAGES images or more. The workers of a
# rank move in step (each step takes a part from every worker), so a worker that gets
# less CPU for a while (the rank runs on its core) holds the others back once they are
# this far ahead: with 2, the workers on the 600-image resized set slept 3-4% of the time
# waiting for requests; with 4, 1-3% (python -m bench there: cores busy 0.98 -> 0.99).
RING_PREFETCH = 4
SHM_DIR = "/dev/shm"  # where shared memory lives (a container's is 64 MiB unless given more)
GROUP_IMAGES = 64  # a train message carries enough consecutive steps of a worker's part for this many images
DECODE_MODES = ("cpu", "gpu")  # gpu: batches of JPEG bytes, see data.gpu_decode
RECORD_PATHS_ENV = "SPARKDP_RECORD_PATHS"  # set: train workers log each step's paths there (module docstring)

__all__ = ["Batches", "ParquetImages", "ParquetSplit", "inspect_split", "make_loader", "open_split", "PREFETCH"]


class SlotRing:
    """Shared memory for train batches, made once by the rank and inherited by its workers:
    ``slots`` buffers, each ``steps`` consecutive whole batches of HWC images, worker ``w``
    writing rows ``offsets[w]:offsets[w + 1]`` of each batch. Every worker's ``j``-th
    message fills the same buffer: the slot the rank gave buffer ``j``, kept with ``j`` in
    one word (``given[j % slots]``) so a worker never reads a half-made promise. The rank
    gives a slot to the next buffer as it frees it (:meth:`free`): at first buffer ``j``
    takes slot ``j``."""

    def __init__(self, offsets: list[int], steps: int, size: int, slots: int = RING_PREFETCH + 2):
        self.slots, self.steps, self.offsets = slots, steps, offsets
        shape = (slots, steps, offsets[-1], size, size, 3)
        _check_shared_memory(math.prod(shape))
        self.images = torch.empty(shape, dtype=torch.uint8).share_memory_()
        self.given = torch.tensor([j * _SLOT_BASE + j for j in range(slots)]).share_memory_()
        self._next = slots  # in the rank: the next buffer to give a slot

    def slot(self, worker: int, group: int) -> tuple[int, torch.Tensor] | None:
        """In a worker: the slot of its ``group``-th buffer, once given, and its rows of it;
        None once the rank has closed the ring."""
        while (word := int(self.given[group % self.slots])) // _SLOT_BASE != group:
            if word < 0:
                return None
            time.sleep(0.001)  # the rank has not freed a slot for it yet
        slot = word % _SLOT_BASE
        return slot, self.images[slot, :, self.offsets[worker]:self.offsets[worker + 1]]

    def free(self, slot: int) -> None:
        """In the rank: ``slot`` is done with; the next buffer fills it."""
        self.given[self._next % self.slots] = self._next * _SLOT_BASE + slot
        self._next += 1

    def close(self) -> None:
        """In the rank: no slot will be given again. A worker waiting for one stops waiting
        and ends its iteration, so it sees the DataLoader's shutdown at once; otherwise the
        DataLoader waits 5 s for it to exit, then terminates it (caller kept batches that
        view every buffer but the workers' last; or it stopped early)."""
        self.given.fill_(-1)


_SLOT_BASE = 1 << 16  # given[j % slots] = j * _SLOT_BASE + slot


def _check_shared_memory(size: int) -> None:
    """A one-line error when ``SHM_DIR`` cannot hold ``size`` more bytes: torch's own
    failure is a traceback ending in ``unable to allocate shared memory(shm) ... No space
    left on device``, which names neither the loader nor the fix."""
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:  # no such folder here: shared memory lives elsewhere
        return
    free = stat.f_bavail * stat.f_frsize
    if size > free:
        raise UserError(f"the train loader's shared memory needs {size / 2**20:.0f} MiB but {SHM_DIR} has "
                        f"{free / 2**20:.0f} MiB free: in a container, give it more (docker run --shm-size=2g), "
                        "or use fewer loader workers (--workers) or a smaller batch")


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class ParquetImages(IterableDataset):
    """This rank's train streams (each worker its share of them), or one (rank, worker)
    eval shard of a split, yielding decoded batches (order: :mod:`data.order`).

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
        self.stream_rows = global_batch // self.streams  # rows each stream gives every step
        self.shuffle_rows = max(shuffle_rows, self.stream_rows)
        self.record = os.environ.get(RECORD_PATHS_ENV)  # read here: workers may not see later changes
        self.storage = s3_settings(parquet.url)  # the rank's AWS variables, for its workers
        self.ring: SlotRing | None = None  # set by Batches before the workers start

    def workers_for(self, workers: int) -> int:
        """Loader workers to start: train streams are owned whole, so at most one per stream."""
        return min(workers, self.streams // self.world_size) if self.train else workers

    def part_offsets(self, workers: int) -> list[int]:
        """Where each worker's part of a train step starts in the rank's batch, and its end:
        a worker's streams are a contiguous run of the rank's (:func:`data.order.worker_streams`)."""
        starts = [worker_streams(self.streams, self.world_size, self.rank, w, workers)[0] for w in range(workers)]
        first = starts[0]
        return [(start - first) * self.stream_rows for start in starts] + [self.batch_size]

    def _stream(self, stream: int, reader: RowGroupReader) -> Iterator[tuple]:
        """Train stream ``stream``: its rows for each step of the epoch, from step 0."""
        split = self.parquet
        if sum(split.group_rows) < self.streams:
            raise UserError(f"{split.url} has too few rows for {self.streams} train stream(s): "
                            "use fewer --streams (or ranks x loader workers), or more data")
        passes = (mixed_rows(reader.rows(row_ranges(split.group_rows, pass_order(split.row_groups, self.seed,
                                                                                  self.epoch, pass_),
                                                    stream, self.streams)),
                             self.shuffle_rows, (self.seed, self.epoch, stream, pass_))
                  for pass_ in itertools.count())
        return batches_of(itertools.chain.from_iterable(passes), self.stream_rows)

    def __iter__(self):
        worker, workers = _worker()
        with RowGroupReader(self.parquet, self.storage) as reader:
            if self.train:
                streams = worker_streams(self.streams, self.world_size, self.rank, worker, workers)
                yield from self._train_parts([self._stream(s, reader) for s in streams], streams, worker)
                return
            ranges = row_ranges(self.parquet.group_rows, range(self.parquet.row_groups), self.rank * workers + worker,
                                self.world_size * workers)
            center = [lambda width, height: eval_params(width, height, self.image_size)]
            for raw, labels, _ in batches_of(reader.rows(ranges), self.batch_size):
                yield self._decode(raw, center), labels

    def _train_parts(self, sources: list, streams: range, worker: int):
        """This worker's part of each step, from step ``skip_batches`` on (the rows of the
        steps before are taken, not decoded). With a ring, ``ring.steps`` consecutive steps
        fill one buffer and travel as one message: (its slot, labels [steps, rows])."""
        taken = ((step, [next(source) for source in sources]) for step in itertools.count())
        todo = itertools.islice(taken, self.skip_batches, None)
        if self.ring is None:
            for step, step_parts in todo:
                yield self._train_step(step, step_parts, streams)
            return
        for group in itertools.count():
            given = self.ring.slot(worker, group)
            if given is None:  # the rank closed the loader
                return
            slot, buffer = given
            labels = [self._train_step(step, step_parts, streams, buffer[i])[1]
                      for i, (step, step_parts) in enumerate(itertools.islice(todo, self.ring.steps))]
            yield slot, np.stack(labels)

    def _train_step(self, step: int, step_parts: list, streams: range, out: torch.Tensor | None = None):
        """(images, labels) of this worker's part of ``step``: decoded (into ``out`` when given)
        and augmented with randomness keyed by (seed, epoch, stream, step)."""
        raw = np.concatenate([c[0] for c in step_parts])
        params = [functools.partial(train_params, rng=augment_rng(self.seed, self.epoch, s, step)) for s in streams]
        images = self._decode(raw, params, out)
        if self.augment is not None:
            for i, s in enumerate(streams):
                rows = slice(i * self.stream_rows, (i + 1) * self.stream_rows)
                self.augment(images[rows], augment_key(self.seed, self.epoch, s, step))
        if self.record:
            self._record(step, streams, step_parts)
        return images, np.concatenate([c[1] for c in step_parts])

    def _record(self, step: int, streams: range, step_parts: list) -> None:
        with open(os.path.join(self.record, f"{os.getpid()}.jsonl"), "a") as f:
            for s, rows in zip(streams, step_parts):
                f.write(json.dumps({"epoch": self.epoch, "step": step, "stream": s, "paths": rows[2].tolist()}) + "\n")

    def _decode(self, raw, params: list, out: torch.Tensor | None = None):
        """Decode (or wrap for GPU decoding) ``raw`` into ``out`` when given; image ``i`` takes
        its crop and flip from ``params[i // stream_rows]`` (one callable per stream, or one)."""
        n = itertools.count()
        per = self.stream_rows if len(params) > 1 else max(len(raw), 1)
        draw = lambda width, height: params[next(n) // per](width, height)  # noqa: E731
        if self.decode == "gpu":
            return jpeg_batch(raw, draw)
        if out is None and get_worker_info() is not None:  # sent as is: no copy into shared memory
            out = torch.empty((len(raw), self.image_size, self.image_size, 3), dtype=torch.uint8).share_memory_()
        return decode_batch(raw, self.image_size, draw, None if out is None else out[:len(raw)])


def _as_is(batch):
    """The DataLoader's collate function: a worker's batch is sent as it was built (labels
    stay numpy: 32 numbers travel in the message, not through shared memory)."""
    return batch


class Batches:
    """Iterator over a DataLoader that owns its worker processes; ``close()`` stops them."""

    def __init__(self, dataset: ParquetImages, workers: int, pin_memory: bool):
        self.dataset = dataset
        workers = dataset.workers_for(workers)
        # A train step comes as one part from each worker, in worker order (the DataLoader
        # takes its workers in turn), joined here.
        self._parts = workers if dataset.train and workers > 1 else 1
        self._pin = pin_memory and torch.cuda.is_available()
        if dataset.train and workers and dataset.decode == "cpu":
            offsets = dataset.part_offsets(workers)
            part = max(b - a for a, b in zip(offsets, offsets[1:]))
            dataset.ring = SlotRing(offsets, -(-GROUP_IMAGES // part), dataset.image_size)
        self._group: list = []  # the ring's messages of the steps being handed out, one per worker
        self._step = 0  # the next step of them
        self._views: list = []  # weak references to the batches handed out of their buffer
        self._held: list = []  # (slot, views) of buffers handed out whole that batches still view
        # Our own generator: otherwise each new iterator draws its worker seed from the global
        # torch RNG, shifting dropout masks etc. between a resumed and an uninterrupted run.
        init = functools.partial(wp.worker_init, os.environ.get(wp.STACKS_DIR_ENV), dataset.rank, os.getpid())
        self._loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                                  pin_memory=pin_memory and dataset.ring is None and self._parts == 1,
                                  prefetch_factor=(RING_PREFETCH if dataset.ring else PREFETCH) if workers else None,
                                  generator=torch.Generator(),
                                  collate_fn=_as_is, multiprocessing_context=wp.worker_context() if workers else None,
                                  worker_init_fn=init if workers else None)
        self.rank, self.waiting = dataset.rank, False  # waiting: inside __next__ (the watchdog reads it)
        with wp.main_hidden():
            self._it = iter(self._loader)  # starts the workers
        wp.register(self)

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> tuple[torch.Tensor | JpegBatch, torch.Tensor]:
        self.waiting = True
        try:
            if self.dataset.ring is not None:
                return self._from_ring()
            if self._parts == 1:
                images, labels = next(self._it)  # images pinned by the DataLoader when asked
                return images, self._labels(labels)
            images, labels = _join_jpegs([next(self._it) for _ in range(self._parts)])
            if self._pin:
                images = JpegBatch(*(t.pin_memory() for t in images))
            return images, self._labels(labels)
        except UserError as exc:  # from a worker: its text is "Caught UserError in ...", a traceback, the message
            last = str(exc).strip().splitlines()[-1]
            raise type(exc)(last.split(f"{type(exc).__name__}: ", 1)[-1]) from None
        except StopIteration:
            raise
        except Exception:  # a dead worker shows as one of several errors (exited unexpectedly, connection refused)
            gone = self._gone_worker()
            if gone is None:
                raise
            raise RunFailure(gone) from None
        finally:
            self.waiting = False

    def workers(self) -> list:
        """The worker processes (none after close)."""
        return getattr(self._it, "_workers", [])

    def awaited_worker(self) -> int | None:
        """The worker whose batch ``__next__`` waits for (the DataLoader hands batches out in order)."""
        task = getattr(self._it, "_task_info", {}).get(getattr(self._it, "_rcvd_idx", None))
        return task[0] if task and len(task) == 1 else None

    def _gone_worker(self) -> str | None:
        """:func:`data.workers.describe_end` of a worker that has ended, if one has."""
        procs = self.workers()
        if not procs:
            return None
        multiprocessing.connection.wait([w.sentinel for w in procs], timeout=2.0)  # its end may still be on its way
        for i, w in enumerate(procs):
            if w.exitcode is not None:
                return wp.describe_end(self.rank, i, w.pid, w.exitcode)
        return None

    def _from_ring(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next step of the ring's buffer, as a view of it: the buffer is freed once its
        last step is handed out and no batch viewing it is alive. A copy instead when CUDA
        pins, or while buffers the caller still views leave the workers too few."""
        ring = self.dataset.ring
        for slot, views in list(self._held):
            if not any(view() is not None for view in views):
                self._held.remove((slot, views))
                ring.free(slot)
        if not self._group:
            self._group, self._step, self._views = [next(self._it) for _ in range(self._parts)], 0, []
        slot = self._group[0][0]  # every worker's message names the same buffer
        step = ring.images[slot, self._step].numpy()  # a new array, alive while a view of it is
        if self._pin or len(self._held) >= ring.slots - 2:  # a view: held + this buffer <= slots - 1
            images = torch.empty(step.shape, dtype=torch.uint8, pin_memory=self._pin)
            np.copyto(images.numpy(), step)
        else:
            images = torch.from_numpy(step)
            self._views.append(weakref.ref(step))
        labels = np.concatenate([labels[self._step] for _, labels in self._group])
        self._step += 1
        if self._step == ring.steps:
            self._held.append((slot, self._views))
            self._group = []
        return images.permute(0, 3, 1, 2), self._labels(labels)

    def _labels(self, labels: np.ndarray) -> torch.Tensor:
        labels = torch.from_numpy(labels)
        # pinned as images are: a copy to the GPU from pageable memory waits for it
        return labels.pin_memory() if self._pin else labels

    def close(self) -> None:
        wp.unregister(self)
        if self.dataset.ring is not None:
            self.dataset.ring.close()
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown:
            shutdown()


def _join_jpegs(parts: list) -> tuple[JpegBatch, np.ndarray]:
    """One JPEG batch from the workers' parts of a step, in order."""
    labels = np.concatenate([y for _, y in parts])
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
