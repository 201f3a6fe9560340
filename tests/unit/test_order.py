"""data.order: row ranges, pass order, stream counts and ownership, the shuffle buffer, batches."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from data.errors import UserError
from data.order import (augment_rng, batches_of, check_streams, default_streams, mixed_rows, pass_order, row_ranges,
                        worker_streams)

def test_row_ranges_give_every_row_once_in_parts_equal_to_one_row():
    rng = np.random.default_rng(0)
    for row_groups, parts in itertools.product(range(1, 9), range(1, 13)):
        group_rows = rng.integers(1, 40, row_groups).tolist()
        order = rng.permutation(row_groups).tolist()
        ranges = [row_ranges(group_rows, order, part, parts) for part in range(parts)]
        rows = [(g, r) for part in ranges for g, start, stop in part for r in range(start, stop)]
        assert sorted(rows) == [(g, r) for g in range(row_groups) for r in range(group_rows[g])]
        sizes = [sum(stop - start for _, start, stop in part) for part in ranges]
        assert max(sizes) - min(sizes) <= 1
        walked = [g for part in ranges for g, _, _ in part]  # parts follow each other along the order
        assert [g for i, g in enumerate(walked) if i == 0 or g != walked[i - 1]] == order


def test_a_pass_order_is_a_seeded_permutation_of_the_row_groups():
    order = pass_order(10, seed=1, epoch=2, pass_=3)
    assert sorted(order) == list(range(10)) and order == pass_order(10, 1, 2, 3) != pass_order(10, 1, 2, 4)


def test_default_streams_are_one_per_rank_and_worker_as_far_as_the_batch_allows():
    assert default_streams(32, 2, 2) == 4
    assert default_streams(30, 2, 4) == 6  # 8 does not divide 30
    assert default_streams(32, 1, 0) == 1


@pytest.mark.parametrize("streams, batch, world, message", [(3, 32, 1, "divide the global batch"),
                                                            (4, 32, 3, "cannot share")])
def test_stream_rules_are_one_line_errors(streams, batch, world, message):
    with pytest.raises(UserError, match=message):
        check_streams(streams, batch, world)


def test_workers_own_contiguous_runs_of_their_ranks_streams():
    for world, workers in [(1, 3), (2, 2), (4, 1)]:
        owned = [list(worker_streams(8, world, rank, w, workers)) for rank in range(world) for w in range(workers)]
        assert list(itertools.chain(*owned)) == list(range(8))


def block(start: int, n: int):
    ids = np.arange(start, start + n)
    return ids.astype(object), ids, ids.astype(str).astype(object)


def test_the_shuffle_buffer_gives_each_row_once_mixed_and_empties_at_the_end_of_the_pass():
    out = list(mixed_rows([block(i * 10, 10) for i in range(6)], shuffle_rows=16, key=(0, 0, 0, 0)))
    labels = np.concatenate([labels for _, labels, _ in out])
    assert sorted(labels) == list(range(60)) and list(labels) != list(range(60))
    again = np.concatenate([labels for _, labels, _ in mixed_rows([block(i * 10, 10) for i in range(6)], 16,
                                                                    (0, 0, 0, 0))])
    assert list(again) == list(labels)


def test_batches_are_cut_across_blocks_and_the_last_may_be_partial():
    sizes = [len(labels) for _, labels, _ in batches_of([block(0, 5), block(5, 2), block(7, 8)], 4)]
    assert sizes == [4, 4, 4, 3]


def test_each_stream_step_draws_its_own_crops_the_same_every_time():
    """Same (seed, epoch, stream, step): the same draws; any of them changed: other draws,
    none shared with the first 1,000 of the original (the counters never overlap)."""
    first = augment_rng(3, 1, 2, 40).random(1000)
    assert np.array_equal(first, augment_rng(3, 1, 2, 40).random(1000))
    for other in [(4, 1, 2, 40), (3, 2, 2, 40), (3, 1, 3, 40), (3, 1, 2, 41), (3, 0, 2, 40), (0, 1, 2, 40)]:
        assert not set(augment_rng(*other).random(1000)) & set(first), other
