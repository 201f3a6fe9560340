"""Build a torchvision classifier with a head sized for the data set's classes."""
from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from data.errors import UserError
from trainer import checkpoint as ck


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _pretrained_state(model_name: str, weights: str) -> dict[str, torch.Tensor]:
    """torchvision weights from the local torch cache only: never a surprise download."""
    try:
        enum = torchvision.models.get_model_weights(model_name)[weights]
    except KeyError:
        names = ", ".join(w.name for w in torchvision.models.get_model_weights(model_name))
        raise UserError(f"unknown weights {weights!r} for {model_name} (have: {names})") from None
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
    if not os.path.isfile(cached):
        raise UserError(
            f"weights {model_name}/{weights} are not in the local torch cache ({cached}); fetch them on a "
            f"machine with internet (python -c \"import torchvision; torchvision.models.get_model("
            f"'{model_name}', weights='{weights}')\") and copy the file, or use --weights-path")
    return torch.load(cached, map_location="cpu", weights_only=True)


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape match; return the names left out (the head)."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def build_model(name: str, num_classes: int, weights: str | None = None,
                weights_path: str | None = None) -> nn.Module:
    """``torchvision.models.get_model(name, num_classes=...)``, optionally warm-started.

    Pretrained tensors are loaded by name and shape, so the classifier head (whose shape
    depends on the class count) starts fresh while the backbone keeps its weights.
    """
    if name not in classification_models():
        raise UserError(f"unknown model {name!r}: use a torchvision classification model "
                        f"such as resnet50, resnet18, efficientnet_b0, convnext_tiny, vit_b_16")
    model = torchvision.models.get_model(name, num_classes=num_classes)
    if weights:
        _load_matching(model, _pretrained_state(name, weights))
    elif weights_path:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read --weights-path {weights_path}: {str(exc).splitlines()[0]}") from None
        _load_matching(model, state.get("model", state))
    return model


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CUDA also channels_last (the loaders' image layout), with
    cuDNN autotuning for the fixed input shape."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def model_from_checkpoint(state: dict) -> nn.Module:
    """The trained model held by a checkpoint dict (see :mod:`trainer.checkpoint`), in eval mode."""
    model = build_model(state[ck.MODEL_NAME], len(state[ck.CLASSES]))
    model.load_state_dict(state[ck.MODEL])
    return model.eval()
