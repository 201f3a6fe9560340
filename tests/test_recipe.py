"""The training recipe: defaults that learn, fine-tuning from torchvision weights, loss
scaling, the recipe's augmentations and regularisers, torch.compile.

Real ``torchrun`` processes (gloo on CPU), real Petastorm and MLflow, data sets made by
the real ``data.convert``. The learning test uses a small real data set (scikit-learn's
handwritten digits, :mod:`tests.digits`): a synthetic one is learnt by almost any recipe.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torchvision

from data.manifest import Manifest
from tests.procs import TIMEOUT_S, ok, one_error_line, run, summary_of
from trainer import checkpoint as ckpt
from trainer.model import DOWNLOAD_TIMEOUT_S, fetch_weights, model_from_checkpoint, weights_cache_path
from trainer.precision import FORCE_SCALER_ENV

DEFAULTS_RUN = ["--model", "resnet18", "--image-size", "32", "--epochs", "6", "--batch-size", "32"]
# 114 steps of ResNet-18 on 2 x 32 images at 32 px (the digits are 8 x 8): about a minute on
# 2 free cores, 3 on a machine shared with other test runs (64 px learns the same, 4x slower).
LEARNING_TIMEOUT_S = 900
SMALL = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--workers", "1", "--seed", "1",
         "--log-every", "1", "--no-progress", "--dist-timeout", "60"]


def train(data: str, out: str, *args: str, nproc: int = 2, timeout: float = TIMEOUT_S):
    result = ok(run("trainer.train", "--data", data, "--out", out, *args, nproc=nproc, timeout=timeout))
    return result, summary_of(out)


def mlflow_params(summary: dict) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    return client.get_run(summary["mlflow_run_id"]).data.params


@pytest.fixture(scope="module")
def digits(spark, tmp_path_factory):
    """scikit-learn's 1,797 digits as JPEGs, converted: about 1,250 train and 360 val images."""
    from data.convert import convert
    from tests.digits import write_digits

    base = tmp_path_factory.mktemp("digits")
    out = str(base / "data")
    convert(write_digits(str(base / "images")), out, spark=spark, progress=False)
    return out, Manifest.load(out)


@pytest.mark.timeout(2 * LEARNING_TIMEOUT_S)
def test_all_defaults_learn_a_small_real_data_set(digits, tmp_path):
    # The run a new user starts first: 2 CPU ranks x 32 images, ResNet-18 at 32 px, 6 epochs,
    # every optimisation setting left at its default (AdamW at 0.004 x sqrt(64 / 256), 1 warm-up epoch).
    data, manifest = digits
    assert manifest.num_classes == 10 and 1200 < manifest.splits["train"].rows < 1300
    result, summary = train(data, str(tmp_path), *DEFAULTS_RUN, "--no-progress", timeout=LEARNING_TIMEOUT_S)
    assert ("adamw LR 0.002 (0.004 per 256 images x sqrt(global batch 64 / 256)), linear warm-up over 19 steps"
            in result.stdout)
    params = mlflow_params(summary)
    assert (float(params["effective_lr"]), params["effective_warmup_steps"]) == (0.002, "19")
    # Chance is 0.10; a learning rate tuned for 8 GPUs ends near 0.3, this recipe above 0.9.
    assert summary["val_top1"] >= 0.85, summary



def test_scaler_augmentations_ema_and_mixing_resume_exactly(seven_groups, tmp_path, monkeypatch):
    # The GradScaler on, starting at a scale that overflows fp32 gradients: its skips, back-offs
    # and growth (every 3 steps) run for real on CPU, where fp16 itself is refused.
    monkeypatch.setenv(FORCE_SCALER_ENV, "3e38")  # near float32's largest, 3.4e38
    data = seven_groups[0]
    recipe = [*SMALL, "--epochs", "2", "--optimizer", "adamw", "--auto-augment", "ta_wide", "--random-erase", "0.5",
              "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1", "--model-ema",
              "--model-ema-decay", "0.9"]
    whole_out, stopped_out = str(tmp_path / "whole"), str(tmp_path / "stopped")
    _, whole = train(data, whole_out, *recipe)
    assert whole["skipped_steps"] > 0, whole
    _, first = train(data, stopped_out, *recipe, "--stop-after-steps", "7")
    assert first["steps"] == 7
    resumed_run, resumed = train(data, stopped_out, *recipe, "--resume", "auto")
    assert "note:" not in resumed_run.stdout

    a = ckpt.load_checkpoint(os.path.join(whole_out, "checkpoints", ckpt.LAST))
    b = ckpt.load_checkpoint(os.path.join(stopped_out, "checkpoints", ckpt.LAST))
    assert a[ckpt.SCALER] == b[ckpt.SCALER] and a[ckpt.SCALER]["scale"] < 3e38
    assert a[ckpt.PROGRESS]["skipped_steps"] == b[ckpt.PROGRESS]["skipped_steps"] == whole["skipped_steps"] == \
        resumed["skipped_steps"]
    assert a[ckpt.EMA]["updates"] == b[ckpt.EMA]["updates"] == a[ckpt.PROGRESS]["step"]
    for key, weights in ((ckpt.MODEL, lambda s: s[ckpt.MODEL]), (ckpt.EMA, lambda s: s[ckpt.EMA]["weights"])):
        for name, tensor in weights(a).items():
            assert torch.equal(weights(b)[name], tensor), (key, name)
    averaged = [k for k, v in a[ckpt.MODEL].items() if v.is_floating_point() and v.numel() > 1]
    ema = a[ckpt.EMA]["weights"]
    assert not any(torch.equal(ema[k], a[ckpt.MODEL][k]) for k in averaged)  # an average, not a copy
    for key in ("val_loss", "val_top1", "best_val_top1"):
        assert whole[key] == resumed[key], key
    # Validation scored the EMA weights: they are what evaluate and predict load.
    model = model_from_checkpoint(a)
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    params = mlflow_params(whole)
    assert (params["auto_augment"], params["mixup_alpha"], params["model_ema"]) == ("ta_wide", "0.2", "True")


def fake_imagenet_resnet18(path: str) -> dict:
    """A resnet18 state_dict with 1,000 classes, as torchvision's file holds, but of our own
    making (no network here): placed in the cache, it must be used as it is."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


def test_weights_in_the_torch_cache_are_used_and_the_backbone_frozen_then_fine_tuned(seven_groups, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = weights_cache_path("resnet18", "IMAGENET1K_V1")
    assert cached == str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    pretrained = fake_imagenet_resnet18(cached)
    out = str(tmp_path / "run")
    tune = [*SMALL, "--weights", "IMAGENET1K_V1", "--freeze-backbone-epochs", "1", "--backbone-lr-factor", "0.1",
            "--epochs", "2", "--steps-per-epoch", "2", "--warmup-steps", "0"]
    first, _ = train(seven_groups[0], out, *tune, "--stop-after-steps", "2", nproc=1)  # 1 rank: cheaper
    assert "downloading" not in first.stdout and "backbone frozen from epoch 1" in first.stdout
    frozen = ckpt.load_checkpoint(os.path.join(out, "checkpoints", ckpt.LAST))
    assert torch.equal(frozen[ckpt.MODEL]["conv1.weight"], pretrained["conv1.weight"])  # frozen: untouched
    assert frozen[ckpt.MODEL]["fc.weight"].shape == (3, 512)  # the fresh head, trained
    lrs = sorted({g["lr"] for g in frozen[ckpt.OPTIMIZER]["param_groups"]})
    assert lrs[0] == pytest.approx(0.1 * lrs[1])
    train(seven_groups[0], out, *tune, "--resume", "auto", nproc=1)  # epoch 2: everything trains
    tuned = ckpt.load_checkpoint(os.path.join(out, "checkpoints", ckpt.LAST))
    assert not torch.equal(tuned[ckpt.MODEL]["conv1.weight"], pretrained["conv1.weight"])


def test_weights_that_cannot_be_downloaded_fail_in_one_line_within_seconds(seven_groups, tmp_path, monkeypatch):
    # This machine reaches no download server: the download fails, fast, and says where the file goes.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = weights_cache_path("resnet18", "IMAGENET1K_V1")
    started = time.monotonic()
    with pytest.raises(Exception) as exc:
        fetch_weights("resnet18", "IMAGENET1K_V1", progress=False)
    assert time.monotonic() - started < DOWNLOAD_TIMEOUT_S + 5
    assert cached in str(exc.value) and not os.path.exists(cached)
    line = one_error_line(run("trainer.train", "--data", seven_groups[0], "--out", str(tmp_path / "run"), *SMALL,
                              "--weights", "IMAGENET1K_V1"))
    assert "ResNet18_Weights.IMAGENET1K_V1" in line and f"place it at {cached}" in line


@pytest.mark.parametrize("args,expected", [
    (["--precision", "fp16"], "--precision fp16 needs a CUDA GPU"),
    (["--weights", "IMAGENET9K"], "unknown weights 'IMAGENET9K' for resnet18 (have: DEFAULT, IMAGENET1K_V1)"),
    (["--freeze-backbone-epochs", "1"], "need pretrained weights"),
], ids=["fp16-on-cpu", "unknown-weights", "freeze-without-weights"])
def test_recipe_user_errors_are_one_line(seven_groups, tmp_path, args, expected):
    line = one_error_line(run("trainer.train", "--data", seven_groups[0], "--out", str(tmp_path), *SMALL, *args))
    assert expected in line


def test_compiled_model_checkpoints_like_an_eager_one(seven_groups, tmp_path):
    from trainer.evaluate import main as evaluate_main
    from trainer.predict import predict

    out = str(tmp_path / "run")
    train(seven_groups[0], out, *SMALL, "--compile", "--epochs", "1", "--steps-per-epoch", "2", nproc=1)
    for name in (ckpt.LAST, ckpt.BEST):
        state = ckpt.load_checkpoint(os.path.join(out, "checkpoints", name))
        keys = list(state[ckpt.MODEL])
        assert not any("_orig_mod." in k or k.startswith("module.") for k in keys), keys[:3]
    best = os.path.join(out, "checkpoints", ckpt.BEST)
    res = evaluate_main(["--checkpoint", best, "--data", seven_groups[0], "--split", "val", "--workers", "0"])
    assert res["count"] == seven_groups[1].splits["val"].rows
    image = str(tmp_path / "a.jpg")
    from tests.sample_images import class_image
    predicted = predict(best, [class_image(0, image)], top_k=1)
    assert predicted[image][0][0] in seven_groups[1].classes
