"""Checkpoints that go wrong: a damaged one (truncated copy, zero bytes, another file in its
place) makes ``--resume auto`` fall back to the newest one that loads, and evaluate and
predict say so in one line; a disk that fills up while checkpointing or while storing the
MLflow model ends the run in one line, loses nothing, and ``--resume auto`` finishes it.
Real trainer, in process (one rank), on the small converted data set; the full disks are
real small tmpfs mounts (skipped where mounting is not permitted).
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from data.errors import UserError, cli
from trainer import checkpoint as ckpt
from trainer.evaluate import main as evaluate_main
from trainer.predict import main as predict_main
from tests.procs import resize_disk, tiny_disk
from trainer.train import main as train_main

SMALL = ["--model", "shufflenet_v2_x0_5", "--image-size", "32", "--batch-size", "4", "--optimizer", "sgd",
         "--lr", "0.01", "--workers", "0", "--seed", "2", "--no-progress", "--epochs", "2", "--steps-per-epoch", "2",
         "--ckpt-every", "1"]


def damage(path: str, how: str) -> None:
    if how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "empty":
        open(path, "wb").close()
    else:  # another file renamed over it
        with open(path, "wb") as f:
            f.write(b"step,loss\n1,0.5\n" * 100)


def write(folder: str, step: int, name: str = ckpt.LAST) -> str:
    path = os.path.join(folder, name)
    return ckpt.save_checkpoint({ckpt.MODEL: {"w": torch.full((4,), float(step))}, ckpt.PROGRESS: {"step": step}},
                                path, os.path.join(folder, ckpt.PREVIOUS) if name == ckpt.LAST else None)


@pytest.mark.parametrize("how", ["truncated", "empty", "other_file"])
def test_resume_auto_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, how):
    run = str(tmp_path)
    folder = ckpt.checkpoint_dir(run)
    write(folder, 1, ckpt.BEST)
    for step in (2, 3):
        write(folder, step)  # last.pt 3, previous.pt 2
    assert ckpt.load_checkpoint(os.path.join(folder, ckpt.PREVIOUS))[ckpt.PROGRESS]["step"] == 2
    damage(os.path.join(folder, ckpt.LAST), how)
    path, state, note = ckpt.load_resume(run, "auto")
    assert path == os.path.join(folder, ckpt.PREVIOUS) and state[ckpt.PROGRESS]["step"] == 2
    assert note.startswith(f"cannot read checkpoint {os.path.join(folder, ckpt.LAST)}") and "\n" not in note
    assert note.endswith(f"resuming from {path}, the newest checkpoint that loads")
    damage(path, how)
    assert ckpt.load_resume(run, "auto")[1][ckpt.PROGRESS]["step"] == 1  # then best.pt
    damage(os.path.join(folder, ckpt.BEST), how)
    with pytest.raises(UserError, match=f"no checkpoint in {folder} loads"):
        ckpt.load_resume(run, "auto")


@pytest.mark.parametrize("how", ["truncated", "empty", "other_file"])
def test_evaluate_and_predict_on_a_damaged_checkpoint_are_one_line(one_group, tmp_path, capsys, how):
    path = write(str(tmp_path), 1)
    damage(path, how)
    image = os.path.join(os.path.dirname(one_group[0]), "images")
    image = os.path.join(image, sorted(os.listdir(image))[0])
    image = os.path.join(image, sorted(os.listdir(image))[0])
    for command, args in ((evaluate_main, ["--checkpoint", path, "--data", one_group[0]]),
                          (predict_main, ["--checkpoint", path, image])):
        with pytest.raises(SystemExit) as stopped:
            cli(command)(args)
        err = capsys.readouterr().err.strip()
        assert stopped.value.code == 2 and "\n" not in err, err
        assert err.startswith(f"error: cannot read checkpoint {path}") or err == \
            f"error: {path} is not a checkpoint written by this trainer", err


@pytest.fixture(scope="module")
def plain(one_group, tmp_path_factory):
    """The weights an uninterrupted run of SMALL ends with."""
    out = str(tmp_path_factory.mktemp("plain"))
    train_main(["--data", one_group[0], "--out", out, *SMALL])
    weights = ckpt.load_checkpoint(os.path.join(ckpt.checkpoint_dir(out), ckpt.LAST))[ckpt.MODEL]
    shutil.rmtree(out)
    return weights


def same_weights(out: str, plain: dict) -> bool:
    got = ckpt.load_checkpoint(os.path.join(ckpt.checkpoint_dir(out), ckpt.LAST))[ckpt.MODEL]
    return all(torch.equal(got[k], plain[k]) for k in plain)


def test_a_truncated_last_checkpoint_costs_one_step_and_nothing_else(one_group, plain, tmp_path, capsys):
    """The run resumed from previous.pt ends with the uninterrupted run's weights, bit for bit."""
    data, broken = one_group[0], str(tmp_path / "broken")
    train_main(["--data", data, "--out", broken, *SMALL, "--stop-after-steps", "3"])
    folder = ckpt.checkpoint_dir(broken)
    damage(os.path.join(folder, ckpt.LAST), "truncated")
    capsys.readouterr()
    summary = train_main(["--data", data, "--out", broken, *SMALL, "--resume", "auto"])
    out = capsys.readouterr().out
    previous = os.path.join(folder, ckpt.PREVIOUS)
    assert f"warning: cannot read checkpoint {os.path.join(folder, ckpt.LAST)}" in out
    assert f"resuming from {previous}, the newest checkpoint that loads" in out
    assert f"resuming from {previous} at step 2 " in out
    assert summary["steps"] == 4 and same_weights(broken, plain)


def test_a_full_disk_while_checkpointing_ends_in_one_line_and_resume_finishes(one_group, plain, tmp_path):
    run = str(tmp_path / "run")
    folder = ckpt.checkpoint_dir(run)
    with tiny_disk(folder, "6m"):  # two checkpoints of ~2.8 MiB fit, not a third beside them
        with pytest.raises(UserError) as failed:
            train_main(["--data", one_group[0], "--out", run, *SMALL])
        line = str(failed.value)
        assert "\n" not in line and line.startswith(f"cannot write checkpoint {folder}/"), line
        assert f": No space left on device in {folder}: the checkpoint needs about 2." in line
        assert line.endswith("the previous checkpoint is unchanged: free space (or fix the folder) and rerun with "
                             "--resume auto")
        assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]  # the partial file is gone
        path, state, note = ckpt.load_resume(run, "auto")
        assert path == os.path.join(folder, ckpt.LAST) and note is None and state[ckpt.PROGRESS]["step"] >= 1
        resize_disk(folder, "64m")
        summary = train_main(["--data", one_group[0], "--out", run, *SMALL, "--resume", "auto"])
        assert summary["steps"] == 4 and same_weights(run, plain)


def test_a_full_disk_while_storing_the_mlflow_model_keeps_the_checkpoints(one_group, plain, tmp_path):
    run = str(tmp_path / "run")
    artifacts = os.path.join(run, "mlartifacts")  # the run's MLflow artifact store (trainer.tracking)
    with tiny_disk(artifacts, "256k"):  # the run's small JSON artifacts fit, the model does not
        with pytest.raises(UserError) as failed:
            train_main(["--data", one_group[0], "--out", run, *SMALL])
        line = str(failed.value)
        assert "\n" not in line and line.startswith(f"cannot store the MLflow model and artifacts in file://"
                                                    f"{artifacts}/"), line
        assert "MiB): No space left on device; the run's checkpoints are kept in " in line
        assert same_weights(run, plain)  # all steps done, the checkpoints written
        resize_disk(artifacts, "64m")
        summary = train_main(["--data", one_group[0], "--out", run, *SMALL, "--resume", "auto"])
        assert summary["steps"] == 4 and summary["mlflow_model_uri"] == f"runs:/{summary['mlflow_run_id']}/model"
    import mlflow

    runs = mlflow.MlflowClient(summary["mlflow_tracking_uri"]).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(summary["mlflow_tracking_uri"]).search_experiments()])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(summary["mlflow_run_id"], "FINISHED")]
