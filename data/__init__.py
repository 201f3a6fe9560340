"""Images -> Parquet splits (``python -m data.convert``) -> per-rank batches.

The public API for custom training loops, importable from here::

    from data import Manifest, make_train_loader, make_eval_loader, normalize

Names resolve on first use, so ``python -m data.convert`` does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from data.lazy import lazy_exports

_EXPORTS = {
    "Batches": "data.loader",
    "ParquetSplit": "data.split_reader",
    "normalize": "data.transforms",
    "decode_on_device": "data.gpu_decode",
    "make_device_prefetcher": "data.gpu_prefetch",
    "Manifest": "data.manifest",
    "UserError": "data.errors",
    "TrainBatches": "data.rank_loaders",
    "make_eval_loader": "data.rank_loaders",
    "make_train_loader": "data.rank_loaders",
    "open_split": "data.rank_loaders",
    "train_steps_per_epoch": "data.rank_loaders",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from data.errors import UserError
    from data.gpu_decode import decode_on_device
    from data.gpu_prefetch import make_device_prefetcher
    from data.loader import Batches
    from data.split_reader import ParquetSplit
    from data.transforms import normalize
    from data.manifest import Manifest
    from data.rank_loaders import (TrainBatches, make_eval_loader, make_train_loader, open_split,
                                   train_steps_per_epoch)
