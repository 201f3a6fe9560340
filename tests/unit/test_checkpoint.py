"""trainer.checkpoint: the parts round-trip, a file of another format or none is refused in
one line, and a resume notes what changes the run's trajectory."""
from __future__ import annotations

import os

import pytest
import torch

from data.errors import UserError
from trainer import checkpoint as ckpt
from trainer.classify import model_only
from trainer.ema import ModelEma
from trainer.model import build_model, model_from_checkpoint
from trainer.train import Progress

IDENTITY = ckpt.RunIdentity(config={"seed": 1, "workers": 2, "val_every": None, "image_size": 32},
                            classes=["cat", "dog"], data_fingerprint="abc", model_name="shufflenet_v2_x0_5",
                            world_size=2, global_batch=16, streams=4, micro_batch=8, mlflow_run_id="r1")


def format_1(path: str) -> str:
    """A checkpoint as the trainer wrote it before the parts: one flat dict."""
    torch.save({"format": 1, "model": {"w": torch.ones(2)}, "optimizer": {}, "step": 3, "epoch": 0,
                "step_in_epoch": 3, "best_val_top1": 0.5, "config": {"seed": 1}, "classes": ["cat", "dog"],
                "data_fingerprint": "abc", "model_name": "resnet18", "mlflow_run_id": "r1"}, path)
    return path


def test_progress_round_trips_what_it_saves_and_not_the_session():
    saved = Progress(step=7, epoch=1, step_in_epoch=2, best_top1=0.25, skipped_steps=3, images=99, busy_s=1.5)
    restored = Progress()
    restored.load_state_dict(saved.state_dict())
    assert restored.state_dict() == saved.state_dict()
    assert (restored.step, restored.epoch, restored.step_in_epoch, restored.best_top1, restored.skipped_steps) == \
        (7, 1, 2, 0.25, 3)
    assert (restored.images, restored.busy_s) == (0, 0.0)  # this session's numbers stay this session's


def test_run_identity_round_trips_through_a_weights_only_file(tmp_path):
    path = ckpt.save_checkpoint({ckpt.MODEL: {}, ckpt.RUN: IDENTITY.state_dict()}, str(tmp_path / "last.pt"))
    again = ckpt.run_identity(ckpt.load_checkpoint(path))  # load_checkpoint reads with weights_only=True
    assert again == IDENTITY and again.state_dict() == IDENTITY.state_dict()


def test_rng_state_round_trips():
    rng = ckpt.RngState()
    saved = rng.state_dict()
    first = torch.rand(3)
    rng.load_state_dict(saved)
    assert torch.equal(torch.rand(3), first)


def test_a_checkpoint_of_the_older_format_is_refused_in_one_line(tmp_path):
    path = format_1(str(tmp_path / "last.pt"))
    with pytest.raises(UserError) as refused:
        ckpt.load_checkpoint(path)
    line = str(refused.value)
    assert "\n" not in line and line == (f"{path} is from an older version of the trainer (checkpoint format 1, this "
                                         f"version reads {ckpt.FORMAT_VERSION}): retrain, or load it with the "
                                         "version that wrote it")


def test_resume_auto_stops_at_an_older_format_instead_of_falling_back(tmp_path):
    folder = ckpt.checkpoint_dir(str(tmp_path))
    os.makedirs(folder)
    format_1(os.path.join(folder, ckpt.LAST))
    format_1(os.path.join(folder, ckpt.PREVIOUS))
    with pytest.raises(UserError, match=f"^{os.path.join(folder, ckpt.LAST)} is from an older version"):
        ckpt.load_resume(str(tmp_path), "auto")


def test_a_file_that_is_no_checkpoint_keeps_its_message(tmp_path):
    path = str(tmp_path / "weights.pt")
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(UserError, match=f"^{path} is not a checkpoint written by this trainer$"):
        ckpt.load_checkpoint(path)


def test_another_data_set_or_model_is_refused():
    with pytest.raises(UserError, match="was made for another data set"):
        IDENTITY.check_compatible("last.pt", fingerprint="xyz", classes=["cat", "dog"], model_name="shufflenet_v2_x0_5")
    with pytest.raises(UserError, match="was trained with model 'shufflenet_v2_x0_5', not 'resnet50'"):
        IDENTITY.check_compatible("last.pt", fingerprint="abc", classes=["cat", "dog"], model_name="resnet50")
    IDENTITY.check_compatible("last.pt", fingerprint="abc", classes=["cat", "dog"], model_name="shufflenet_v2_x0_5")
    with pytest.raises(UserError, match="was trained with model None"):  # another loop's file: no run part
        ckpt.run_identity({ckpt.MODEL: {}}).check_compatible("last.pt", fingerprint="abc", classes=["cat", "dog"],
                                                             model_name="shufflenet_v2_x0_5")


def test_resume_notes_settings_that_change_the_trajectory():
    def now(config: dict, **order) -> ckpt.RunIdentity:
        return ckpt.RunIdentity(**{**IDENTITY.state_dict(), "config": config, **order})

    # Loader workers, the world size and bookkeeping settings do not change the trajectory ...
    assert IDENTITY.changed_settings(now({"seed": 1, "workers": 1, "val_every": 5}, world_size=1)) == []
    # ... the seed, the global batch, the streams and the micro-batch do.
    assert IDENTITY.changed_settings(now({"seed": 2, "workers": 2}, global_batch=32, streams=8)) == [
        "--seed 1 -> 2", "global batch 16 -> 32", "streams 4 -> 8"]


def test_the_model_only_checkpoint_keeps_what_scoring_reads():
    state = {ckpt.FORMAT: ckpt.FORMAT_VERSION, ckpt.MODEL: {"w": torch.ones(2)}, ckpt.RUN: IDENTITY.state_dict(),
             ckpt.PROGRESS: Progress(step=5).state_dict()}
    small = model_only(state)
    assert set(small) == {ckpt.FORMAT, ckpt.MODEL, ckpt.RUN}
    run = ckpt.run_identity(small)
    assert (run.model_name, run.classes, run.config, run.mlflow_run_id) == ("shufflenet_v2_x0_5", ["cat", "dog"],
                                                                           {"image_size": 32}, None)


def test_the_model_of_a_checkpoint_is_the_ema_when_the_run_kept_one():
    net = build_model("shufflenet_v2_x0_5", 2)
    ema = ModelEma(net, decay=0.5)
    with torch.no_grad():
        for param in ema.module.parameters():
            param.add_(1.0)
    state = {ckpt.MODEL: net.state_dict(), ckpt.RUN: IDENTITY.state_dict()}
    plain = model_from_checkpoint(state).state_dict()
    assert all(torch.equal(v, state[ckpt.MODEL][k]) for k, v in plain.items())
    averaged = model_from_checkpoint({**state, ckpt.EMA: ema.state_dict()}).state_dict()
    assert all(torch.equal(v, ema.state_dict()["weights"][k]) for k, v in averaged.items())
    # The MLflow model and batch prediction score what evaluate and predict score.
    small = model_only({**state, ckpt.EMA: ema.state_dict()})[ckpt.MODEL]
    assert all(torch.equal(v, ema.state_dict()["weights"][k]) for k, v in small.items())
