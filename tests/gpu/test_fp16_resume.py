"""fp16 with loss scaling on the GPU, and a resumed fp16 run that continues exactly.

The real trainer (``trainer.train.main``), in this process, with ``--precision fp16
--decode gpu``: one run straight through, one stopped after 5 steps and resumed; their
last checkpoints must match bit for bit (weights, optimizer, loss scaler, skipped-step
count). Deterministic kernels are asked for, and ``tests/gpu/run.sh`` sets
``CUBLAS_WORKSPACE_CONFIG`` before CUDA starts, so that what is compared is the resume,
not cuBLAS's or cuDNN's choice of reduction order.

Skipped without CUDA, except in the GPU check's dry run on CPU
(``SPARKDP_GPU_DRY_RUN=1``), where the same test runs fp32 with the loss scaler forced on
(``SPARKDP_FORCE_GRAD_SCALER``) and CPU decode, so the check itself is known to work
before a GPU is spent on it. The GPU machine has no MLflow: these runs log to the
``NullTracker`` every non-zero rank uses (tracking is covered by the CPU suite,
``tests/test_recipe.py`` among others).
"""
from __future__ import annotations

import os

import pytest
import torch

import trainer.train
from tests.parquet_sets import write_data_set
from trainer import checkpoint as ckpt
from trainer.precision import FORCE_SCALER_ENV
from trainer.tracking import NullTracker

CUDA = torch.cuda.is_available()
DRY_RUN_ENV = "SPARKDP_GPU_DRY_RUN"
pytestmark = pytest.mark.skipif(not CUDA and os.environ.get(DRY_RUN_ENV) != "1",
                                reason=f"needs a CUDA device (or {DRY_RUN_ENV}=1 for the CPU dry run)")


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)  # a few backward kernels have no such variant
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def test_fp16_run_with_loss_scaling_resumes_exactly(tmp_path, monkeypatch, deterministic):
    monkeypatch.setattr(trainer.train, "make_tracker", lambda *args, **kwargs: NullTracker())
    if CUDA:
        precision = ["--precision", "fp16", "--decode", "gpu"]
    else:  # the dry run: the scaler at a scale that overflows fp32 gradients, so it skips and backs off
        monkeypatch.setenv(FORCE_SCALER_ENV, "3e38")
        precision = ["--precision", "fp32"]
    data = str(tmp_path / "data")
    write_data_set(data, row_groups=4, rows_per_group=16, val_rows=16)
    run = ["--data", data, "--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--epochs", "2",
           "--workers", "1", "--seed", "3", "--log-every", "1", "--no-progress", *precision]
    whole_out, stopped_out = str(tmp_path / "whole"), str(tmp_path / "stopped")
    whole = trainer.train.main([*run, "--out", whole_out])
    assert trainer.train.main([*run, "--out", stopped_out, "--stop-after-steps", "5"])["steps"] == 5
    resumed = trainer.train.main([*run, "--out", stopped_out, "--resume", "auto"])

    a = ckpt.load_checkpoint(os.path.join(whole_out, "checkpoints", ckpt.LAST))
    b = ckpt.load_checkpoint(os.path.join(stopped_out, "checkpoints", ckpt.LAST))
    assert a[ckpt.PROGRESS]["step"] == b[ckpt.PROGRESS]["step"] == whole["steps"] == resumed["steps"] == 16
    assert ckpt.run_identity(a).config["precision"] == precision[1] and a[ckpt.SCALER], "the loss scaler was not on"
    print(f"loss scale {a[ckpt.SCALER]['scale']:g}, skipped steps {a[ckpt.PROGRESS]['skipped_steps']}, "
          f"val_loss {whole['val_loss']:.6f}")
    assert a[ckpt.SCALER] == b[ckpt.SCALER]
    assert a[ckpt.PROGRESS]["skipped_steps"] == b[ckpt.PROGRESS]["skipped_steps"] == resumed["skipped_steps"]
    differ = [name for name, t in a[ckpt.MODEL].items() if not torch.equal(t, b[ckpt.MODEL][name])]
    assert not differ, f"{len(differ)} tensors differ after resuming, e.g. {differ[:3]}"
    assert whole["val_loss"] == resumed["val_loss"] and whole["val_top1"] == resumed["val_top1"]
