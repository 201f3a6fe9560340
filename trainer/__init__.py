"""The DDP trainer (``torchrun -m trainer.train``) and its building blocks.

The public API for custom training loops, importable from here::

    from trainer import compute_init, compute_cleanup, print0, ClassificationSums, make_tracker
    from trainer import save_checkpoint, load_checkpoint, find_latest_checkpoint

``trainer.train`` is built from these same functions. Names resolve on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from data.lazy import lazy_exports

_EXPORTS = {
    "DistInfo": "trainer.distributed",
    "all_reduce_sum": "trainer.distributed",
    "broadcast_buffers": "trainer.distributed",
    "broadcast_object": "trainer.distributed",
    "compute_cleanup": "trainer.distributed",
    "compute_init": "trainer.distributed",
    "print0": "trainer.distributed",
    "checkpoint_dir": "trainer.checkpoint",
    "find_latest_checkpoint": "trainer.checkpoint",
    "load_checkpoint": "trainer.checkpoint",
    "save_checkpoint": "trainer.checkpoint",
    "MLflowTracker": "trainer.tracking",
    "NullTracker": "trainer.tracking",
    "make_tracker": "trainer.tracking",
    "ClassificationSums": "trainer.metrics",
    "build_model": "trainer.model",
    "warmup_cosine": "trainer.schedule",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from trainer.checkpoint import checkpoint_dir, find_latest_checkpoint, load_checkpoint, save_checkpoint
    from trainer.distributed import (DistInfo, all_reduce_sum, broadcast_buffers, broadcast_object, compute_cleanup,
                                     compute_init, print0)
    from trainer.metrics import ClassificationSums
    from trainer.model import build_model
    from trainer.schedule import warmup_cosine
    from trainer.tracking import MLflowTracker, NullTracker, make_tracker
