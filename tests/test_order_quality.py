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


def test_the_full_shuffle_baseline_draws_one_uniform_order_per_epoch_shared_by_the_ranks(data_set, tmp_path):
    """``bench.full_shuffle_train``, the accuracy table's baseline: global step ``t`` of an
    epoch is rows ``t*B .. (t+1)*B`` of one permutation of the whole split, each rank its
    slice, decoded with the trainer's decode; and it runs as ``trainer.train`` does."""
    import functools

    import numpy as np
    import torch

    from bench.full_shuffle_train import epoch_permutation, make_full_shuffle_loader
    from data.loader import open_split
    from data.transforms import decode_batch, train_params
    from tests.conftest import TRAIN_SMALL
    from tests.procs import ok, run, summary_of

    parquet = open_split(data_set, "train")
    table = parquet.dataset().to_table(columns=["image", "label"])
    images, labels = np.array(table.column("image").to_pylist(), dtype=object), table.column("label").to_numpy()
    perms = []
    for epoch in (0, 1):
        perm = epoch_permutation(parquet.rows, 0, epoch)
        assert sorted(perm) == list(range(parquet.rows))
        perms.append(perm)
        got = {}
        for rank in (0, 1):
            with make_full_shuffle_loader(parquet, batch_size=8, image_size=16, epoch=epoch, rank=rank,
                                          world_size=2) as batches:
                got[rank] = list(batches)
        assert len(got[0]) == len(got[1]) == parquet.rows // 16
        for t, ((x0, y0), (x1, y1)) in enumerate(zip(got[0], got[1])):
            rows = perm[16 * t:16 * (t + 1)]
            assert torch.cat([y0, y1]).tolist() == labels[rows].tolist()
            for rank, x in ((0, x0), (1, x1)):
                rng = np.random.default_rng([0, epoch, rank, t, 7])
                assert torch.equal(x, decode_batch(images[rows[8 * rank:8 * (rank + 1)]], 16,
                                                   functools.partial(train_params, rng=rng)))
    assert perms[0].tolist() != perms[1].tolist()  # a fresh permutation each epoch
    out = str(tmp_path / "run")
    ok(run("bench.full_shuffle_train", "--data", data_set, "--out", out, *TRAIN_SMALL))
    summary = summary_of(out)
    assert summary["steps"] == 3 and summary["val_count"] == 12  # exact validation, as the trainer does
