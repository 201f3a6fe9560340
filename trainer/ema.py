"""``--model-ema``: an exponential moving average of the weights, kept beside the model.

After every optimizer step each floating-point tensor of the average (parameters and
BatchNorm statistics) moves towards the model's, ``ema = d * ema + (1 - d) * model``,
with ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update: the average follows
the model closely at first, while the early weights are still far from good, and
settles to ``decay`` later (the ramp timm and TensorFlow's ExponentialMovingAverage use).
Integer buffers (BatchNorm's batch counter) are copied. The average is what validation
scores and what :func:`trainer.model.model_from_checkpoint` loads.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """The moving average of ``model`` (a copy of it, never trained directly)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, own = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in floats], [own[k] for k in floats], 1.0 - d)
        for k, v in ema.items():
            if not v.is_floating_point():
                v.copy_(own[k])

    def state_dict(self) -> dict:
        """The averaged weights (``weights``: what :func:`trainer.model.model_from_checkpoint`
        loads) and the update count (``updates``: where the ramp stands)."""
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
