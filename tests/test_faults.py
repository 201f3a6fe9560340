"""Faults and bad input: a rank killed or hung, a checkpoint write killed, a full disk,
broken splits, and the sharding matrix. Real torchrun, Petastorm, Spark and MLflow.

The slow half of the fault suite (the sharding matrix under real torchrun for every
world size x workers x row-group count) is ``python tests/fault_suite.py``.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq
import pytest
import torch

from data.errors import UserError
from data.loader import make_loader, open_split
from tests.parquet_sets import write_data_set
from tests.procs import ROOT, TIMEOUT_S, completed, ok, start, summary_of, tiny_disk
from trainer import checkpoint as ckpt
from trainer.train import main as train_main

TINY = ["--model", "resnet18", "--image-size", "32", "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.002",
        "--seed", "5", "--no-progress", "--log-every", "5"]


def torchrun(*args: str, nproc: int = 2, restarts: int = 0) -> subprocess.Popen:
    return start("trainer.train", *args, nproc=nproc, restarts=restarts)


def rank_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The trainer processes torchrun started (its direct children), by rank order of start."""
    return sorted((c for c in psutil.Process(proc.pid).children() if "trainer.train" in " ".join(c.cmdline())),
                  key=lambda c: c.create_time())


def wait_for(path: str, proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"{path} never appeared:\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.2)


def test_killed_rank_restarts_from_last_checkpoint_and_ends_like_an_uninterrupted_run(seven_groups, tmp_path):
    data = seven_groups[0]
    args = [*TINY, "--data", data, "--epochs", "3", "--ckpt-every", "3", "--workers", "1"]
    plain = str(tmp_path / "plain")
    ok(completed(torchrun(*args, "--out", plain)))
    faulty = str(tmp_path / "faulty")
    proc = torchrun(*args, "--out", faulty, "--resume", "auto", restarts=2)
    wait_for(os.path.join(faulty, "checkpoints", "last.pt"), proc)
    rank_processes(proc)[-1].send_signal(signal.SIGKILL)
    result = ok(completed(proc))
    assert "resuming from" in result.stdout
    expected, got = summary_of(plain), summary_of(faulty)
    assert got["steps"] == expected["steps"] == 3 * (84 // 8)
    assert got["rank_steps"] == [got["steps"]] * 2
    assert got["val_count"] == expected["val_count"] == 24
    assert got["val_top1"] == expected["val_top1"]
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=got["mlflow_tracking_uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [got["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"


def test_a_hung_rank_is_named_and_the_job_ends(seven_groups, tmp_path):
    out = str(tmp_path / "run")
    proc = torchrun(*TINY, "--data", seven_groups[0], "--out", out, "--epochs", "50", "--ckpt-every", "2",
                    "--workers", "0", "--dist-timeout", "30")
    wait_for(os.path.join(out, "checkpoints", "last.pt"), proc)
    rank0, hung = rank_processes(proc)
    hung.send_signal(signal.SIGSTOP)
    try:
        rank0.wait(timeout=180)  # it gives up after --dist-timeout and exits by itself
    finally:
        # torchrun then sends the stopped rank SIGTERM, which waits while it is stopped, and
        # SIGKILL 30 s later: that wait is torchrun's, the test does not sit through it.
        with contextlib.suppress(psutil.NoSuchProcess):
            hung.kill()
    result = completed(proc, timeout=60)
    assert result.returncode != 0
    assert "[rank 0] error: rank 0 gave up at step" in result.stderr
    assert "rank 1 (last step" in result.stderr and "stopped responding within --dist-timeout 30s" in result.stderr
    # The frozen rank cannot write; rank 0, stuck in a collective, wrote its stacks and names the folder.
    stacks = os.path.join(out, "stacks")
    assert f"Python stacks of each rank: {stacks}" in result.stderr
    assert "train_one_epoch" in open(os.path.join(stacks, "rank0.txt")).read()


SLOW_PICKLE = """
import sys, time, torch
from trainer.checkpoint import save_checkpoint
class Slow:  # pickling blocks: the process is killed with a partial temp file on disk
    def __reduce__(self):
        print("writing", flush=True); time.sleep(600); return (int, (0,))
save_checkpoint({"model": {"w": torch.zeros(4)}, "later": Slow()}, sys.argv[1])
"""


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one(tmp_path):
    last = str(tmp_path / "run" / "checkpoints" / ckpt.LAST)
    ckpt.save_checkpoint({ckpt.MODEL: {"w": torch.ones(4)}, ckpt.PROGRESS: {"step": 7}}, last)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PICKLE, last], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    partial = glob.glob(os.path.join(os.path.dirname(last), ".last.pt.*.tmp"))
    assert len(partial) == 1
    proc.kill()
    proc.wait()
    assert ckpt.find_resume(str(tmp_path / "run"), "auto") == last
    state = ckpt.load_checkpoint(last)
    assert state[ckpt.PROGRESS]["step"] == 7 and torch.equal(state[ckpt.MODEL]["w"], torch.ones(4))
    # The next write cleans up.
    ckpt.save_checkpoint({ckpt.MODEL: {"w": torch.zeros(4)}, ckpt.PROGRESS: {"step": 8}}, last)
    assert not glob.glob(os.path.join(os.path.dirname(last), ".*.tmp"))
    assert ckpt.load_checkpoint(last)[ckpt.PROGRESS]["step"] == 8


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path):
    with tiny_disk(str(tmp_path / "disk"), "1m") as disk:
        last = os.path.join(disk, "checkpoints", ckpt.LAST)
        ckpt.save_checkpoint({ckpt.MODEL: {"w": torch.ones(10)}, ckpt.PROGRESS: {"step": 1}}, last)
        with pytest.raises(UserError, match="cannot write checkpoint .*No space left on device.*unchanged"):
            ckpt.save_checkpoint({ckpt.MODEL: {"w": torch.zeros(1_000_000)}, ckpt.PROGRESS: {"step": 2}}, last)
        assert ckpt.load_checkpoint(last)[ckpt.PROGRESS]["step"] == 1
        assert os.listdir(os.path.dirname(last)) == [ckpt.LAST]


def test_full_disk_while_converting_publishes_nothing(spark, seven_groups, tmp_path):
    from data.convert import convert

    images = os.path.join(os.path.dirname(seven_groups[0]), "images")  # tests/converted.py's source folder
    with tiny_disk(str(tmp_path / "disk"), "150k") as disk:
        with pytest.raises(UserError, match="writing .* failed: No space left on device; nothing was published"):
            convert(images, os.path.join(disk, "out"), spark=spark, progress=False)
        assert os.listdir(disk) == []


def test_unwritable_out_is_one_line(seven_groups, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write to --out"):
        train_main(["--data", seven_groups[0], "--out", str(blocker / "run"), *TINY])
    from data.convert import convert

    with pytest.raises(UserError, match="is not a folder"):
        convert(os.path.join(os.path.dirname(seven_groups[0]), "images"), str(blocker / "data"), progress=False)


def _rewrite_train(data: str, change) -> None:
    for path in glob.glob(os.path.join(data, "train", "*.parquet")):
        pq.write_table(change(pq.read_table(path)), path)


@pytest.mark.parametrize("damage,message", [
    ("garbage", "cannot read Parquet split"),
    ("no_label", r"has no column\(s\) label"),
    ("label_out_of_range", "but the manifest has 3 classes"),
])
def test_a_broken_split_stops_before_training(one_group, tmp_path, damage, message):
    data = str(tmp_path / "data")
    shutil.copytree(one_group[0], data)
    if damage == "garbage":
        path = sorted(glob.glob(os.path.join(data, "train", "*.parquet")))[0]
        with open(path, "r+b") as f:
            f.seek(0)
            f.write(b"\0" * 64)  # header magic gone
            f.seek(-64, os.SEEK_END)
            f.write(b"\0" * 64)  # footer gone
    elif damage == "no_label":
        _rewrite_train(data, lambda t: t.drop(["label"]))
    else:
        import pyarrow.compute as pc

        _rewrite_train(data, lambda t: t.set_column(t.schema.get_field_index("label"), "label",
                                                    pc.add(t.column("label"), 3)))
    out = str(tmp_path / "run")
    with pytest.raises(UserError, match=message):
        train_main(["--data", data, "--out", out, *TINY])
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def test_split_fractions_and_foreign_checkpoint_are_user_errors(seven_groups, one_group, tmp_path):
    from data.convert import convert

    with pytest.raises(UserError, match="sum"):
        convert(os.path.join(os.path.dirname(seven_groups[0]), "images"), str(tmp_path / "x"), split="0.5,0.2,0.2")
    foreign = str(tmp_path / "foreign" / "checkpoints" / ckpt.LAST)
    made_for = ckpt.RunIdentity(model_name="resnet18", classes=one_group[1].classes,
                                data_fingerprint=one_group[1].fingerprint)
    ckpt.save_checkpoint({ckpt.MODEL: {}, ckpt.RUN: made_for.state_dict()}, foreign)
    with pytest.raises(UserError, match="made for another data set"):
        train_main(["--data", seven_groups[0], "--out", str(tmp_path / "run"), *TINY, "--resume", foreign])


@pytest.mark.parametrize("row_groups", [1, 2, 3, 5, 8])
def test_sharding_matrix_every_rank_gets_full_batches(tmp_path, row_groups):
    """World sizes 1-4 x loader workers 0-2: every rank's train stream yields its
    steps_per_epoch full batches (no NoDataAvailableError, no hang) on 1-8 row groups."""
    data = str(tmp_path / "data")
    manifest = write_data_set(data, row_groups)
    parquet = open_split(data, "train", manifest)
    assert parquet.row_groups == row_groups
    batch = 4
    for world_size in range(1, 5):
        steps = parquet.rows // (batch * world_size)
        for workers in (0, 1, 2) if row_groups in (1, 8) else (0,):
            for rank in range(world_size):
                with make_loader(parquet, workers=workers, rank=rank, world_size=world_size, batch_size=batch,
                                 image_size=16, train=True, seed=1) as batches:
                    sizes = [len(labels) for _, labels in (next(batches) for _ in range(steps))]
                assert sizes == [batch] * steps, (world_size, workers, rank)


def test_three_ranks_with_two_workers_on_one_row_group_take_equal_steps(one_group, tmp_path):
    out = str(tmp_path / "run")
    ok(completed(torchrun(*TINY, "--data", one_group[0], "--out", out, "--epochs", "1", "--steps-per-epoch", "3",
                       "--workers", "2", nproc=3)))
    assert summary_of(out)["rank_steps"] == [3, 3, 3]
