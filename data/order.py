"""Which rows each rank and loader worker reads, in which order: the train-order rules.

Train order: canonical streams, independent of the world size. A train split is read as
``C`` *streams* (see :func:`default_streams`), each an endless sequence of passes; every
pass is one permutation of the whole split: its row groups in an order seeded by (seed,
epoch, pass), cut into ``C`` equal row ranges (:func:`row_ranges`; a row group on a
boundary is read by both streams, each for its own rows), so every image is drawn once
per pass and streams differ by at most one row. A stream mixes its rows in a buffer of
``shuffle_rows`` rows, emptied at the end of each pass (:func:`mixed_rows`). Global step
``t`` of an epoch takes the next ``global_batch / C`` rows of every stream, in stream
order. So which images make up global step ``t``, and in which order, depends only on
the split, the seed, the epoch, the global batch and ``C``: not on the world size or the
loader workers. Rank ``r`` of ``W`` owns streams ``r*C/W .. (r+1)*C/W - 1`` (its batch at
step ``t`` is the slice ``r*B/W .. (r+1)*B/W`` of global batch ``t``); its loader workers
own contiguous runs of those streams (:func:`worker_streams`). Rules: ``W`` divides ``C``
and ``C`` divides ``B`` (:func:`check_streams`). Augmentation is keyed by (seed, epoch,
stream, step) (:func:`augment_rng`), so the same image at the same global step gets the
same pixels on any world size, and a resumed epoch skips steps without decoding them.
With ``steps_per_epoch = rows // global_batch`` (the trainer's default) an epoch is one
pass less the last partial step's rows.

Eval: global shard ``g = rank * workers + worker`` of ``S = world_size * workers`` is row
range ``g`` of ``S`` of the split in file order (:func:`row_ranges`): every image is read
exactly once across all ranks and workers, shards differ by at most one row.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from data.errors import UserError

DEFAULT_SHUFFLE_ROWS = 1024
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image bytes, labels, paths)


def row_ranges(group_rows: Sequence[int], order: Iterable[int], part: int, parts: int) -> list[tuple[int, int, int]]:
    """``(row group, start, stop)`` row ranges that make up range ``part`` of ``parts`` equal
    (to one row) ranges of the rows of the row groups taken in ``order``."""
    total = sum(group_rows)
    low, high = part * total // parts, (part + 1) * total // parts
    ranges, at = [], 0
    for group in order:
        start, stop = max(low, at), min(high, at + group_rows[group])
        if start < stop:
            ranges.append((group, start - at, stop - at))
        at += group_rows[group]
        if at >= high:
            break
    return ranges


def pass_order(row_groups: int, seed: int, epoch: int, pass_: int) -> list[int]:
    """The row groups of one train pass, in its seeded order."""
    return np.random.default_rng([seed, epoch, pass_]).permutation(row_groups).tolist()


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


def augment_rng(seed: int, epoch: int, stream: int, step: int) -> np.random.Generator:
    """The generator of a stream's crops and flips at one step: Philox, a counter-based
    generator, keyed by the seed with (epoch, stream, step) in its counter's high words, so
    no two draws overlap. One is made per part a worker decodes: seeding through
    ``SeedSequence`` (``default_rng``) costs 26 us against Philox's 15 warm, more between
    decodes (the caches hold pixels); with it and :func:`data.transforms.decode_batch`'s
    views made in one call, a worker's work around the decodes fell from ~22 to ~15 us per
    image (two 10 s loader runs each way, resized 3,000-image set)."""
    return np.random.Generator(np.random.Philox(key=[seed, 7], counter=[0, step, stream, epoch]))


def augment_key(seed: int, epoch: int, stream: int, step: int) -> int:
    """The torch seed of a stream's recipe augmentations at one step."""
    return int(np.random.SeedSequence([seed, epoch, stream, step, 8]).generate_state(1)[0])


def mixed_rows(blocks: Iterable[Rows], shuffle_rows: int, key: tuple) -> Iterator[Rows]:
    """One pass's rows, mixed: rows gather in a buffer until it holds ``shuffle_rows``, the
    buffer is permuted (seeded by ``key`` and the fill count) and all but half of it leaves;
    at the end of the pass the rest leaves, permuted too."""
    buffer: Rows = _EMPTY
    fill = 0
    for fill, new in enumerate(blocks):
        buffer = _concat([buffer, new])
        n = len(buffer[1])
        if n >= shuffle_rows:
            buffer = _take(buffer, np.random.default_rng([*key, fill]).permutation(n))
            out = n - shuffle_rows // 2
            yield _take(buffer, slice(0, out))
            buffer = _take(buffer, slice(out, None))
    if len(buffer[1]):
        yield _take(buffer, np.random.default_rng([*key, fill + 1]).permutation(len(buffer[1])))


def batches_of(blocks: Iterable[Rows], size: int) -> Iterator[Rows]:
    """``blocks`` of rows cut into batches of ``size`` rows; the last, partial batch of finite
    input too."""
    pending: list[Rows] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += len(block[1])
        if held < size:
            continue
        rows = _concat(pending)
        cut = held - held % size
        for i in range(0, cut, size):
            yield _take(rows, slice(i, i + size))
        pending, held = [_take(rows, slice(cut, None))], held - cut
    if held:
        yield _concat(pending)


_EMPTY: Rows = (np.empty(0, dtype=object), np.empty(0, dtype=np.int64), np.empty(0, dtype=object))


def _concat(parts: list[Rows]) -> Rows:
    return parts[0] if len(parts) == 1 else tuple(np.concatenate(columns) for columns in zip(*parts))


def _take(rows: Rows, index) -> Rows:
    return tuple(column[index] for column in rows)
