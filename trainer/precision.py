"""Mixed precision: which autocast dtype a ``--precision`` choice means, the context for it,
and the loss scaler fp16 needs.

``auto`` is bf16 on a GPU that supports it (Ampere and later), fp16 with loss scaling
(:class:`torch.amp.GradScaler`) on one that does not (T4, V100), fp32 on CPU.
"""
from __future__ import annotations

import contextlib
import os

import torch

from data.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Test hook: enables the GradScaler whatever the precision, starting at this scale. On CPU,
# where fp16 autocast is refused, a scale near float32's limit makes gradients overflow, so
# the scaler's skip, back-off, growth and checkpointed state are exercised for real.
FORCE_SCALER_ENV = "SPARKDP_FORCE_GRAD_SCALER"


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a ``--precision`` choice on ``device`` (None: fp32, no autocast)."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU (fp16 autocast with loss scaling); on CPU use fp32 or bf16")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (skips steps whose gradients overflowed); a disabled scaler
    otherwise, unless the :data:`FORCE_SCALER_ENV` test hook is set."""
    forced = os.environ.get(FORCE_SCALER_ENV)
    if forced:
        return torch.amp.GradScaler(device.type, init_scale=float(forced), growth_interval=3)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
