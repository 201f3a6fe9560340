"""The DDP trainer end to end: real ``torchrun`` processes (gloo on CPU), real Petastorm,
a real MLflow sqlite store, data sets made by the real ``data.convert``.

One 2-rank reference run (7 row groups, 2 epochs x 5 steps) is shared by most tests; a
hang (say, ranks taking different step counts) fails through the subprocess timeout.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from data.errors import UserError
from data.manifest import Manifest
from tests.sample_images import class_image
from tests.procs import ROOT, TIMEOUT_S, ok, one_error_line, run, summary_of
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.model import model_from_checkpoint

TRAIN = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.002",
         "--warmup-steps", "0", "--workers", "2", "--seed", "1", "--log-every", "1", "--no-progress",
         "--dist-timeout", "60"]
EPOCHS = 2
REFERENCE = TRAIN + ["--epochs", str(EPOCHS), "--ckpt-every", "3"]
STEPS_PER_EPOCH = 84 // (8 * 2)  # train rows // (batch x ranks)
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def train(data: str, out: str, *args: str, nproc: int = 2) -> dict:
    ok(run("trainer.train", "--data", data, "--out", out, *args, nproc=nproc))
    return summary_of(out)


@pytest.fixture(scope="module")
def reference(seven_groups, tmp_path_factory):
    """An uninterrupted 2-rank run: (run folder, summary)."""
    assert seven_groups[1].splits["train"].rows == 84  # STEPS_PER_EPOCH depends on it
    out = str(tmp_path_factory.mktemp("reference"))
    return out, train(seven_groups[0], out, *REFERENCE)


def mlflow_client(summary: dict):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])


def test_two_ranks_take_equal_steps_on_a_single_row_group(one_group, tmp_path):
    # 2 ranks x 2 workers = 4 train streams over 1 row group: no NoDataAvailableError, no hang.
    summary = train(one_group[0], str(tmp_path), *TRAIN, "--epochs", "1")
    assert summary["rank_steps"] == [STEPS_PER_EPOCH, STEPS_PER_EPOCH]
    assert summary["steps"] == summary["steps_per_epoch"] == STEPS_PER_EPOCH
    assert summary["val_count"] == one_group[1].splits["val"].rows


def test_two_ranks_take_equal_steps_on_seven_row_groups(reference, seven_groups):
    # 7 row groups over 4 train streams: streams of 2, 2, 2 and 1 row groups.
    _, summary = reference
    assert summary["world_size"] == 2 and summary["steps_per_epoch"] == STEPS_PER_EPOCH
    assert summary["rank_steps"] == [TOTAL_STEPS, TOTAL_STEPS] and summary["steps"] == TOTAL_STEPS
    assert summary["val_count"] == seven_groups[1].splits["val"].rows


def test_loss_falls_on_a_learnable_set(reference):
    _, summary = reference
    losses = [m.value for m in sorted(mlflow_client(summary).get_metric_history(summary["mlflow_run_id"], "train_loss"),
                                      key=lambda m: m.step)]
    assert len(losses) == TOTAL_STEPS and losses[0] > 0.8 * math.log(3)  # step 1: about chance (ln 3)
    # Train losses are noisy (16 heavily cropped images a step); validation is not.
    assert summary["val_loss"] < 0.25 * losses[0] and summary["val_top1"] >= 0.8


def test_validation_counts_each_image_once_and_matches_one_and_two_rank_evaluation(reference, seven_groups,
                                                                                   tmp_path):
    from trainer.evaluate import main as evaluate_main

    out, summary = reference
    last = os.path.join(out, "checkpoints", ckpt.LAST)
    single = evaluate_main(["--checkpoint", last, "--data", seven_groups[0], "--split", "val", "--workers", "0",
                            "--json", str(tmp_path / "one.json")])
    ok(run("trainer.evaluate", "--checkpoint", last, "--data", seven_groups[0], "--split", "val", "--batch-size", "3",
           "--json", str(tmp_path / "two.json"), nproc=2))
    with open(tmp_path / "two.json") as f:
        double = json.load(f)
    assert double["world_size"] == 2 and single["world_size"] == 1
    for res in (single, double):
        assert res["count"] == summary["val_count"] == seven_groups[1].splits["val"].rows
        assert res["top1"] == summary["val_top1"] and res["top5"] == summary["val_top5"]
        assert res["loss"] == pytest.approx(summary["val_loss"], rel=1e-5, abs=1e-7)
        assert res["confusion_matrix"] == single["confusion_matrix"]
    # The report: per-class accuracy by name, and a readable PNG.
    assert list(single["per_class_accuracy"]) == seven_groups[1].classes
    assert list(single["per_class_count"].values()) == seven_groups[1].splits["val"].per_class
    with Image.open(single["confusion_png"]) as png:
        assert png.format == "PNG" and min(png.size) > 100


def test_evaluate_refuses_a_data_set_with_other_classes(reference, seven_groups, tmp_path):
    from trainer.evaluate import main as evaluate_main

    other = str(tmp_path / "other")
    shutil.copytree(seven_groups[0], other)
    manifest = Manifest.load(other)
    manifest.classes = list(reversed(manifest.classes))
    manifest.save(other)
    with pytest.raises(UserError, match="trained on 3 classes"):
        evaluate_main(["--checkpoint", os.path.join(reference[0], "checkpoints", ckpt.BEST), "--data", other])


def test_checkpoint_round_trip(reference, seven_groups, tmp_path):
    out, summary = reference
    state = ckpt.load_checkpoint(os.path.join(out, "checkpoints", ckpt.LAST))
    assert set(state) == {ckpt.FORMAT, ckpt.MODEL, ckpt.OPTIMIZER, ckpt.SCHEDULER, ckpt.SCALER, ckpt.PROGRESS,
                          ckpt.RUN, ckpt.RNG}  # no ema part without --model-ema
    progress, run_part = state[ckpt.PROGRESS], ckpt.run_identity(state)
    assert (progress["step"], progress["epoch"], progress["step_in_epoch"]) == (TOTAL_STEPS, EPOCHS, 0)
    assert run_part.classes == seven_groups[1].classes and run_part.data_fingerprint == seven_groups[1].fingerprint
    assert run_part.mlflow_run_id == summary["mlflow_run_id"] and run_part.world_size == 2
    assert not any(k.startswith("module.") for k in state[ckpt.MODEL])
    assert TrainConfig.from_dict(run_part.config).model == run_part.model_name == "resnet18"
    model = model_from_checkpoint(state)
    assert all(torch.equal(v, state[ckpt.MODEL][k]) for k, v in model.state_dict().items())

    copy = ckpt.save_checkpoint(state, str(tmp_path / "copy.pt"))
    assert os.listdir(tmp_path) == ["copy.pt"]  # the temp file was renamed, not left behind
    again = ckpt.load_checkpoint(copy)
    assert all(torch.equal(again[ckpt.MODEL][k], v) for k, v in state[ckpt.MODEL].items())
    assert again[ckpt.OPTIMIZER]["param_groups"] == state[ckpt.OPTIMIZER]["param_groups"]
    assert again[ckpt.SCHEDULER] == state[ckpt.SCHEDULER]
    best = ckpt.load_checkpoint(os.path.join(out, "checkpoints", ckpt.BEST))
    assert best[ckpt.PROGRESS]["best_top1"] == summary["best_val_top1"]


def test_resume_after_a_stop_ends_exactly_like_an_uninterrupted_run(reference, seven_groups, tmp_path):
    ref_out, ref_summary = reference
    out = str(tmp_path)
    # Stop mid-epoch 2 after 8 steps (last.pt also written at steps 3, 5 and 6 on the way) ...
    first = train(seven_groups[0], out, *REFERENCE, "--stop-after-steps", "8")
    assert first["steps"] == 8 and first["rank_steps"] == [8, 8]
    stopped = ckpt.load_checkpoint(os.path.join(out, "checkpoints", ckpt.LAST))
    progress = stopped[ckpt.PROGRESS]
    assert (progress["step"], progress["epoch"], progress["step_in_epoch"]) == (8, 1, 3)
    # ... then continue: an odd number of batches to skip with 2 loader workers per rank.
    second_run = ok(run("trainer.train", "--data", seven_groups[0], "--out", out, *REFERENCE, "--resume", "auto",
                        nproc=2))
    assert "resuming from" in second_run.stdout and "note:" not in second_run.stdout
    second = summary_of(out)
    assert second["steps"] == TOTAL_STEPS and second["rank_steps"] == [TOTAL_STEPS, TOTAL_STEPS]

    resumed = ckpt.load_checkpoint(os.path.join(out, "checkpoints", ckpt.LAST))
    uninterrupted = ckpt.load_checkpoint(os.path.join(ref_out, "checkpoints", ckpt.LAST))
    assert resumed[ckpt.MODEL].keys() == uninterrupted[ckpt.MODEL].keys()
    for name, tensor in uninterrupted[ckpt.MODEL].items():
        assert torch.equal(resumed[ckpt.MODEL][name], tensor), name
    for index, moments in uninterrupted[ckpt.OPTIMIZER]["state"].items():
        for key, value in moments.items():
            assert torch.equal(resumed[ckpt.OPTIMIZER]["state"][index][key], value), (index, key)
    for key in ("val_loss", "val_top1", "val_top5", "val_count", "best_val_top1"):
        assert second[key] == ref_summary[key], key

    # One MLflow run across both parts, with each step's train loss logged once.
    assert first["mlflow_run_id"] == second["mlflow_run_id"]
    client = mlflow_client(second)
    history = client.get_metric_history(second["mlflow_run_id"], "train_loss")
    assert sorted(m.step for m in history) == list(range(1, TOTAL_STEPS + 1))
    assert client.get_run(second["mlflow_run_id"]).info.status == "FINISHED"


def test_mlflow_gets_params_metrics_and_artifacts(reference):
    _, summary = reference
    assert summary["mlflow_tracking_uri"].startswith("sqlite:///") and summary["mlflow_tracking_uri"].endswith(
        os.path.join(summary["run_dir"], "mlflow.db"))
    client = mlflow_client(summary)
    run_ = client.get_run(summary["mlflow_run_id"])
    assert run_.info.status == "FINISHED"
    params = run_.data.params
    assert (params["model"], params["batch_size"], params["optimizer"]) == ("resnet18", "8", "adamw")
    assert (params["world_size"], params["steps_per_epoch"], params["epochs"]) == (
        "2", str(STEPS_PER_EPOCH), str(EPOCHS))
    assert {"train_loss", "lr", "train_images_per_s", "data_wait_fraction",
            "val_loss", "val_top1", "val_top5"} <= set(run_.data.metrics)
    assert len(client.get_metric_history(run_.info.run_id, "val_top1")) == EPOCHS  # once per epoch
    assert run_.data.metrics["val_top1"] == summary["val_top1"]
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"classes.json", "config.json", ckpt.BEST, "summary.json"} <= artifacts


def test_resume_with_another_data_set_is_refused(reference, one_group, tmp_path):
    last = os.path.join(reference[0], "checkpoints", ckpt.LAST)
    line = one_error_line(run("trainer.train", "--data", one_group[0], "--out", str(tmp_path), *REFERENCE,
                              "--resume", last))
    assert "another data set" in line and last in line


def test_user_errors_exit_2_with_one_line_and_no_traceback(seven_groups, tmp_path):
    data = seven_groups[0]
    cases = {
        "data folder not found": ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "a")],
        "unknown model": ["--data", data, "--out", str(tmp_path / "b"), "--model", "resnet_nine"],
        "larger than a rank's share": ["--data", data, "--out", str(tmp_path / "c"), "--batch-size", "85"],
        "checkpoint not found": ["--data", data, "--out", str(tmp_path / "d"), "--resume", str(tmp_path / "x.pt")],
    }
    procs = {}
    for expected, args in cases.items():  # all at once: each start mostly waits on imports
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs[expected] = subprocess.Popen([sys.executable, "-m", "trainer.train", *args], cwd=ROOT, env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=TIMEOUT_S)
        assert expected in one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def test_predict_names_the_class_of_jpeg_and_png_files(reference, seven_groups, tmp_path):
    from trainer.predict import predict

    best = os.path.join(reference[0], "checkpoints", ckpt.BEST)
    classes = seven_groups[1].classes
    images = [class_image(0, str(tmp_path / "a.jpg")), class_image(1, str(tmp_path / "b.png"), "RGBA"),
              class_image(2, str(tmp_path / "c.webp"))]
    result = predict(best, images, top_k=3)
    for k, path in enumerate(images):
        names, probs = zip(*result[path])
        assert sorted(names) == sorted(classes) and list(probs) == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert names[0] == classes[k], result[path]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg: not an image"):
        predict(best, [str(broken)])

    printed = ok(run("trainer.predict", "--checkpoint", best, "--top-k", "2", *images)).stdout.splitlines()
    assert printed[0] == images[0] and len(printed) == 3 * 3 and printed[1].split()[0] == classes[0]
    line = one_error_line(run("trainer.predict", "--checkpoint", best, images[0], str(tmp_path / "nope.jpg")))
    assert "image not found" in line and "nope.jpg" in line
