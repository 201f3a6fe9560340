"""data.convert.splits: the split rule, exact per class and independent of anything but paths and seed."""
from __future__ import annotations

import pytest

from data.convert.splits import assign, parse_split, split_counts
from data.errors import UserError

PATHS = [f"cat/img_{i:03d}.jpg" for i in range(37)]


def test_counts_round_halves_up_and_test_takes_the_rest():
    assert split_counts(10, (0.75, 0.15, 0.1)) == (8, 2, 0)
    assert split_counts(37, (0.7, 0.2, 0.1)) == (26, 7, 4)


def test_assignment_is_disjoint_complete_and_the_same_in_any_input_order():
    splits = assign(PATHS, (0.7, 0.2, 0.1), seed=0)
    assert sorted(sum(splits.values(), [])) == sorted(PATHS)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [26, 7, 4]
    assert assign(list(reversed(PATHS)), (0.7, 0.2, 0.1), seed=0) == splits
    assert assign(PATHS, (0.7, 0.2, 0.1), seed=1) != splits


@pytest.mark.parametrize("text", ["0.7,0.2", "0.7,0.2,0.2", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_split_options_are_one_line_errors(text):
    with pytest.raises(UserError, match="--split"):
        parse_split(text)
