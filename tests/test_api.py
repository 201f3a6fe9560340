"""The public API for custom loops: names at the package roots, the train/eval loader
factories, and ``examples/custom_loop.py`` run by real ``torchrun`` (2 CPU ranks, gloo).
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

import pytest
import torch

import data
import trainer
from tests.procs import ROOT, ok, run

BATCH = 8
STEPS_PER_EPOCH = 84 // (BATCH * 2)  # train rows // (batch x ranks)


def test_public_names_import_from_the_package_roots_and_are_what_the_trainer_uses():
    import trainer.evaluate
    import trainer.train

    from data import make_eval_loader, make_train_loader, open_split, train_steps_per_epoch
    from trainer import ClassificationSums, compute_init, find_latest_checkpoint, make_tracker, save_checkpoint

    for package in (data, trainer):
        for name in package.__all__:
            obj = getattr(package, name)
            assert obj.__doc__ and obj.__module__.startswith(package.__name__ + "."), name
            assert name in dir(package)
    assert (trainer.train.make_train_loader, trainer.train.make_eval_loader, trainer.evaluate.make_eval_loader) == \
        (make_train_loader, make_eval_loader, make_eval_loader)
    assert (trainer.train.open_split, trainer.train.train_steps_per_epoch) == (open_split, train_steps_per_epoch)
    assert (trainer.train.compute_init, trainer.train.make_tracker) == (compute_init, make_tracker)
    assert trainer.train.evaluate is trainer.evaluate.evaluate  # one scoring loop, summing ClassificationSums
    assert trainer.train.make_device_prefetcher is data.make_device_prefetcher  # the trainer's decode-ahead
    assert trainer.train.evaluate.__module__ == ClassificationSums.__module__
    assert trainer.train.ckpt.save_checkpoint is save_checkpoint
    assert trainer.train.ckpt.find_latest_checkpoint is find_latest_checkpoint
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018


def test_package_roots_import_without_torch():
    # `python -m data.convert` imports data/__init__ first: it must not pay for torch.
    code = "import sys, data, trainer; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("imported,forbidden", [
    ("data, data.convert.cli, data.convert.job, data.loader, data.rank_loaders, data.gpu_decode, data.gpu_prefetch, "
     "data.synthetic",
     ("trainer", "bench", "launch")),        # data/ is the bottom layer
    ("trainer.evaluate, trainer.predict", ("trainer.train", "bench", "launch")),  # scoring needs no training program
])
def test_dependencies_point_one_way(imported, forbidden):
    code = (f"import sys, {imported}; bad = sorted(m for m in sys.modules if m.startswith({forbidden!r})); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def train_loader(data_dir: str, rank: int, batch_size: int = BATCH, **kwargs):
    return data.make_train_loader(data_dir, batch_size=batch_size, image_size=16, workers=0, rank=rank,
                                  world_size=2, **kwargs)


def bounded(batches, limit: int = 50) -> list:
    """At most ``limit`` batches: a loader that never stops fails the test instead of hanging it."""
    return list(itertools.islice(batches, limit))


def test_train_loader_gives_exactly_steps_per_epoch_batches(seven_groups):
    data_dir = seven_groups[0]
    for rank in range(2):
        with train_loader(data_dir, rank, epoch=1) as batches:
            assert len(batches) == STEPS_PER_EPOCH  # default: one pass over the split
            full = bounded(batches)
            assert next(batches, None) is None
        assert len(full) == STEPS_PER_EPOCH
        assert all(x.shape == (BATCH, 3, 16, 16) and x.dtype == torch.uint8 and y.shape == (BATCH,) for x, y in full)
    with train_loader(data_dir, 1, steps_per_epoch=13) as batches:  # 104 rows: more than a rank's 42
        assert len(bounded(batches)) == 13
    with train_loader(data_dir, 1, epoch=1, skip_batches=3) as batches:  # resume after step 3
        rest = bounded(batches)
    assert len(rest) == STEPS_PER_EPOCH - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, full[3:]))
    with pytest.raises(data.UserError, match="larger than a rank's share"):
        with train_loader(data_dir, 0, batch_size=43):
            pass


def test_eval_loader_reads_each_image_once_across_ranks(seven_groups):
    data_dir, manifest = seven_groups
    parquet = data.open_split(data_dir, "val")
    val_files = sorted(f for f in os.listdir(os.path.join(data_dir, "val")) if f.endswith(".parquet"))
    assert sorted(os.path.basename(f) for f, _ in parquet.files) == val_files  # each file with its row groups
    assert sum(n for _, n in parquet.files) == parquet.row_groups == manifest.splits["val"].row_groups
    counts = []
    for rank in range(2):
        with data.make_eval_loader(parquet, batch_size=5, image_size=8, workers=0, rank=rank, world_size=2) as b:
            counts.append(sum(len(y) for _, y in b))
    assert sum(counts) == manifest.splits["val"].rows and min(counts) > 0


def example(data_dir: str, out: str, *args: str) -> str:
    """Run examples/custom_loop.py under torchrun with 2 CPU ranks; its stdout."""
    return ok(run("torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  os.path.join(ROOT, "examples", "custom_loop.py"), "--data", data_dir, "--out", out,
                  "--batch-size", str(BATCH), "--image-size", "32", "--workers", "1", *args)).stdout


def test_example_runs_under_torchrun_with_equal_steps_per_rank_and_resumes(seven_groups, tmp_path):
    data_dir, manifest = seven_groups
    out = str(tmp_path)
    assert trainer.find_latest_checkpoint(out) is None
    printed = example(data_dir, out, "--epochs", "1")
    # Rank/world come from torch.distributed: a world of one would run 10 steps and see 48 images.
    assert f"steps per rank: [{STEPS_PER_EPOCH}, {STEPS_PER_EPOCH}]" in printed, printed
    assert re.findall(r"\((\d+) images\)", printed) == [str(manifest.splits["val"].rows)], printed
    latest = trainer.find_latest_checkpoint(out)
    assert latest and trainer.load_checkpoint(latest)["epoch"] == 1
    printed = example(data_dir, out, "--epochs", "2", "--steps-per-epoch", "2")  # continues at epoch 2
    assert "steps per rank: [2, 2]" in printed and re.findall(r"epoch \d+:", printed) == ["epoch 2:"], printed
    assert trainer.load_checkpoint(latest)["epoch"] == 2
