"""Build a torchvision classifier with a head sized for the data set's classes."""
from __future__ import annotations

import os
import socket

import torch
import torchvision
from torch import nn

from data.errors import UserError
from trainer import checkpoint as ckpt


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


DOWNLOAD_TIMEOUT_S = 20  # per connect/read: offline, a download fails in seconds, not minutes


def resolve_weights(model_name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights called ``weights`` (``IMAGENET1K_V2``, ``DEFAULT``, or
    ``ResNet50_Weights.IMAGENET1K_V2``) for ``model_name``."""
    available = torchvision.models.get_model_weights(model_name)
    try:
        return available[weights.rsplit(".", 1)[-1]]
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in available)])
        raise UserError(f"unknown weights {weights!r} for {model_name} (have: {names})") from None


def weights_cache_path(model_name: str, weights: str) -> str:
    """Where torchvision keeps these weights: ``TORCH_HOME/hub/checkpoints/<file name of the URL>``."""
    url = resolve_weights(model_name, weights).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def fetch_weights(model_name: str, weights: str, progress: bool = True) -> str:
    """The cached weights file, downloaded first when it is not in the torch cache (where and
    as torchvision's own loader does: ``torch.hub``, hash checked, with a progress bar). A file already there is used
    as it is. A failed download is one UserError line saying where to put the file."""
    enum = resolve_weights(model_name, weights)
    path = weights_cache_path(model_name, weights)
    if os.path.isfile(path):
        return path
    print(f"downloading {enum} for {model_name} from {enum.url} to {path}", flush=True)
    hash_prefix = torch.hub.HASH_REGEX.search(os.path.basename(path))  # what torchvision's loader checks
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(enum.url, path, hash_prefix.group(1) if hash_prefix else None, progress)
    except Exception as exc:  # URLError, timeouts, HTTP errors, a hash mismatch, an unwritable cache
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0]
        raise UserError(f"cannot download weights {enum} for {model_name} ({reason}): on a machine with internet "
                        f"download {enum.url} and place it at {path}, or use --weights-path FILE") from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """Load every tensor whose name and shape match; return the names left out (the head)."""
    own = model.state_dict()
    state = {strip_wrappers(k): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return set(own) - set(usable)


def strip_wrappers(name: str) -> str:
    """A parameter name without DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    return name


def pretrained_model(name: str, num_classes: int, weights: str | None = None,
                     weights_path: str | None = None) -> tuple[nn.Module, set[str]]:
    """:func:`build_model`, and the names of the tensors that did not come from the weights
    (the fresh head; every tensor when there are no weights)."""
    if name not in classification_models():
        raise UserError(f"unknown model {name!r}: use a torchvision classification model "
                        f"such as resnet50, resnet18, efficientnet_b0, convnext_tiny, vit_b_16")
    model = torchvision.models.get_model(name, num_classes=num_classes)
    if weights:
        path = weights_cache_path(name, weights)
        if not os.path.isfile(path):
            raise UserError(f"weights {name} {weights} are not in the torch cache ({path}): fetch_weights() "
                            "downloads them")
        return model, _load_matching(model, torch.load(path, map_location="cpu", weights_only=True))
    if weights_path:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read --weights-path {weights_path}: {str(exc).splitlines()[0]}") from None
        return model, _load_matching(model, state.get("model", state))
    return model, set(model.state_dict())


def build_model(name: str, num_classes: int, weights: str | None = None,
                weights_path: str | None = None) -> nn.Module:
    """``torchvision.models.get_model(name, num_classes=...)``, optionally warm-started
    from torchvision ``weights`` already in the torch cache (:func:`fetch_weights` puts
    them there) or a state_dict file.

    Pretrained tensors are loaded by name and shape, so the classifier head (whose shape
    depends on the class count) starts fresh while the backbone keeps its weights.
    """
    return pretrained_model(name, num_classes, weights, weights_path)[0]


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CUDA also channels_last (the loaders' image layout), with
    cuDNN autotuning for the fixed input shape."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def model_from_checkpoint(state: dict) -> nn.Module:
    """The model a checkpoint dict (see :mod:`trainer.checkpoint`) was validated with, in
    eval mode: its EMA weights when the run kept them (``--model-ema``), else its weights."""
    run = ckpt.run_identity(state)
    model = build_model(run.model_name, len(run.classes))
    model.load_state_dict({strip_wrappers(k): v for k, v in ckpt.scored_weights(state).items()})
    return model.eval()
