"""Which rows each rank and loader worker reads, in which order: the train-order rules.

Train order: canonical streams, independent of the world size. A train split is read
as ``C`` *streams* (see :func:`default_streams`). Stream ``s`` is global shard ``s`` of
``C`` (below); each epoch it is an endless sequence of one-epoch passes over its row
groups, the row-group order of each pass seeded by (seed, epoch, pass), its rows
shuffled again in a buffer of ``shuffle_rows`` rows (:func:`shuffled_batches`, seeded
by (seed, epoch, stream, buffer fill)). Global step ``t`` of an epoch takes the next
``global_batch / C`` rows of every stream, in stream order. So which images make up
global step ``t``, and in which order, depends only on the split, the seed, the epoch,
the global batch and ``C``: not on the world size or the loader workers. Rank ``r`` of
``W`` owns streams ``r*C/W .. (r+1)*C/W - 1`` (its batch at step ``t`` is the slice
``r*B/W .. (r+1)*B/W`` of global batch ``t``); its loader workers own contiguous runs of
those streams (:func:`worker_streams`). Rules: ``W`` divides ``C`` and ``C`` divides
``B`` (:func:`check_streams`). Augmentation is keyed by (seed, epoch, stream, step)
(:func:`augment_rng`), so the same image at the same global step gets the same pixels
on any world size, and a resumed epoch skips steps without decoding them.

Shards (train streams and eval). Global shard ``g`` of ``S`` (a train stream: ``S = C``;
eval: ``g = rank * workers + worker`` of ``S = world_size * workers``) maps onto
Petastorm's row-group sharding (``cur_shard``/``shard_count``), which refuses a shard
with no row group, so it is asked for ``n = min(S, row_groups)`` shards and, where ``k``
global shards share one Petastorm shard, each keeps every k-th row of each row group it
reads, from an offset fixed by the row group's first path (:meth:`ShardPlan.keep`). The
shards are disjoint, cover every row and differ by at most one row per row group: eval
reads each image exactly once across all ranks and workers, and a train stream is empty
(a one-line error) only when its row groups hold fewer rows than the ``k`` sharing them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from data.errors import UserError

DEFAULT_SHUFFLE_ROWS = 1024
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image bytes, labels, paths)


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
    """Map a global shard onto Petastorm's row-group sharding (module docstring)."""
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


def worker_streams(streams: int, world_size: int, rank: int, worker: int, workers: int) -> range:
    """The train streams worker ``worker`` of ``workers`` (as started) owns: a contiguous run
    of rank ``rank``'s, so joining the workers' parts in order keeps the stream order."""
    per_rank = streams // world_size
    first = rank * per_rank
    return range(first + worker * per_rank // workers, first + (worker + 1) * per_rank // workers)


def pass_seed(seed: int, epoch: int, pass_: int) -> int:
    """The seed of one pass's row-group order."""
    return int(np.random.SeedSequence([seed, epoch, pass_]).generate_state(1)[0])


def augment_rng(seed: int, epoch: int, stream: int, step: int) -> np.random.Generator:
    """The generator of a stream's crops and flips at one step."""
    return np.random.default_rng([seed, epoch, stream, step, 7])


def augment_key(seed: int, epoch: int, stream: int, step: int) -> int:
    """The torch seed of a stream's recipe augmentations at one step."""
    return int(np.random.SeedSequence([seed, epoch, stream, step, 8]).generate_state(1)[0])


def shuffled_batches(chunks: Iterable[Rows], size: int, shuffle_rows: int | None, key: tuple) -> Iterator[Rows]:
    """Batches of ``size`` rows from row-group ``chunks``. Train (``shuffle_rows`` given):
    rows gather in a buffer until it holds ``shuffle_rows``, the buffer is permuted (seeded
    by ``key`` and the fill count) and all but about half of it leaves as batches; endless
    input gives endless batches. Eval (``shuffle_rows`` None): rows in order, the last batch
    partial."""
    rows: Rows = (np.empty(0, dtype=object), np.empty(0, dtype=np.int64), np.empty(0, dtype=object))
    target = shuffle_rows or size
    for fill, new in enumerate(chunks):
        rows = tuple(np.concatenate([old, more]) for old, more in zip(rows, new))
        n = len(rows[1])
        if n < target:
            continue
        if shuffle_rows:
            perm = np.random.default_rng([*key, fill]).permutation(n)
            rows = tuple(column[perm] for column in rows)
        n_out = max(1, (n - target // 2) // size) if shuffle_rows else n // size
        for i in range(n_out):
            yield tuple(column[i * size:(i + 1) * size] for column in rows)
        rows = tuple(column[n_out * size:] for column in rows)
    if len(rows[1]):  # only reached by finite (eval) input: the last, partial batch
        yield rows
