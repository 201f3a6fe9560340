"""``python -m bench.order_quality``, the tool behind docs/performance.md's order table: it
reads the order the real loaders give (checked against their first steps) and its numbers
tell a well-mixed order from a poorly mixed one."""
from __future__ import annotations

import pytest

from bench.order_quality import main
from tests.parquet_sets import write_data_set


@pytest.fixture(scope="module")
def data_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("order") / "data")
    write_data_set(out, row_groups=8, rows_per_group=32)  # 256 train rows
    return out


def order_numbers(data: str, *args: str) -> dict:
    return main(["--data", data, "--batch-size", "8", "--world-size", "2", "--workers", "1", "--epochs", "4", *args])


def test_the_trainers_order_is_as_mixed_as_a_uniform_shuffle(data_set):
    result = order_numbers(data_set, "--check-steps", "3")
    assert result["checked_steps"] == 3  # the real loaders of both ranks gave the order measured
    loader, expected = result["loader"]["mean"], result["expected"]
    assert loader["most_draws"] == 1 and loader["distinct"] == pytest.approx(expected["distinct"])
    # Uniform: 15 of 255 other images are an image's batch-mates, again next epoch ~0.059.
    assert loader["mates_again"] < 2 * expected["mates_again"], loader
    assert loader["row_groups_per_batch"] > 0.85 * expected["row_groups_per_batch"], loader
    assert abs(loader["position_change"] - expected["position_change"]) < 0.05, loader


def test_a_small_shuffle_buffer_shows_as_a_poorly_mixed_order(data_set):
    """The same split read with an 8-row shuffle buffer per stream: each batch then comes
    from runs of a few row groups' rows, and the numbers must say so (measured: 3.3 row
    groups per batch against 7.3, batch-mates again 0.082 against 0.060)."""
    loader = order_numbers(data_set, "--shuffle-rows", "1")["loader"]["mean"]
    mixed = order_numbers(data_set)["loader"]["mean"]
    assert loader["row_groups_per_batch"] < 0.6 * mixed["row_groups_per_batch"], (loader, mixed)
    assert loader["mates_again"] > mixed["mates_again"], (loader, mixed)
