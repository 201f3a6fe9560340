"""The learning rate: how large (a batch scaling rule per optimizer) and how it moves (warm-up, cosine).

Defaults that learn at any scale: the peak LR is a base LR per 256 images, scaled with the
global batch, so neither 2 CPU ranks x 32 images nor 64 GPUs x 256 images start with a step
size tuned for another batch, and it is reached by a linear warm-up. SGD scales linearly
(Goyal et al., "Accurate, Large Minibatch SGD": torchvision's ResNet recipe, 0.1 per 256),
AdamW by the square root (Malladi et al., "On the SDEs and Scaling Rules for Adaptive
Gradient Algorithms"; timm's rule for adaptive optimizers). ``--lr`` overrides the rule.
"""
from __future__ import annotations

import math

import torch

REFERENCE_BATCH = 256
BASE_LR = {"sgd": 0.1, "adamw": 0.004}  # per REFERENCE_BATCH images of global batch
SQRT_SCALED = {"adamw"}  # optimizers whose LR follows sqrt(global batch), the others follow it linearly


def batch_ratio(optimizer: str, global_batch: int) -> float:
    """How much the base LR is multiplied by at ``global_batch``: linear, or its square root."""
    ratio = global_batch / REFERENCE_BATCH
    return math.sqrt(ratio) if optimizer in SQRT_SCALED else ratio


def peak_lr(lr: float | None, base_lr: float | None, optimizer: str, global_batch: int) -> float:
    """``lr`` when given, else ``base_lr`` (default: the optimizer's) scaled by :func:`batch_ratio`."""
    if lr is not None:
        return lr
    return (base_lr if base_lr is not None else BASE_LR[optimizer]) * batch_ratio(optimizer, global_batch)


def lr_rule(lr: float | None, base_lr: float | None, optimizer: str, global_batch: int) -> str:
    """Where :func:`peak_lr` came from, for the start-of-run line."""
    if lr is not None:
        return "--lr"
    scaled = f"global batch {global_batch} / {REFERENCE_BATCH}"
    return (f"{base_lr if base_lr is not None else BASE_LR[optimizer]:g} per {REFERENCE_BATCH} images x "
            + (f"sqrt({scaled})" if optimizer in SQRT_SCALED else scaled))


def warmup_length(warmup_steps: int | None, warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """``warmup_steps`` when given, else ``warmup_epochs`` epochs, at most half of ``total_steps``."""
    if warmup_steps is not None:
        return warmup_steps
    return min(round(warmup_epochs * steps_per_epoch), total_steps // 2)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR: linear warm-up over ``warmup_steps``, then cosine to zero at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
