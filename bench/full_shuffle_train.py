"""``trainer.train`` with its train loader swapped for a uniform in-memory shuffle: the
baseline the project's order is compared with (docs/performance.md).

Run it exactly as ``trainer.train`` (same options, under ``torchrun`` or not)::

    torchrun --standalone --nproc-per-node 2 -m bench.full_shuffle_train --data DIR --out RUN ...

Everything but the order is the trainer's own: model, optimizer, LR schedule, loss, BN,
DDP, validation, checkpoints, number of steps (``steps_per_epoch`` as the trainer computes
it). The train split is read into memory once per rank (encoded JPEGs); each epoch is a
fresh uniform permutation of all its rows, seeded by (seed, epoch) and the same on every
rank; global step ``t`` is rows ``t*B .. (t+1)*B`` of it (``B`` the global batch, the
remainder dropped, as the project's loader drops it) and rank ``r`` takes its slice
``r*b .. (r+1)*b``. Images go through the same decode and augmentation
(:func:`data.transforms.decode_batch` with :func:`data.transforms.train_params`); only the
random draws differ (keyed by (seed, epoch, rank, step) instead of per stream). Decoding
runs in the rank itself, not in loader workers: slower per step, identical batches' kind.
``--auto-augment``/``--random-erase`` and ``--decode gpu`` are refused (not needed by the
compared recipe).
"""
from __future__ import annotations

import contextlib
import functools
import sys

import numpy as np
import torch

from data.errors import UserError, cli
from data.loader import ParquetSplit
from data.rank_loaders import TrainBatches, train_steps_per_epoch
from data.transforms import decode_batch, train_params

ORDER_KEY = 1001  # mixed into the permutation seed: not any key the project's loader uses


@functools.lru_cache(maxsize=2)
def _rows(parquet: ParquetSplit) -> tuple[np.ndarray, np.ndarray]:
    """(encoded images, labels) of a split, in storage order."""
    table = parquet.dataset().to_table(columns=["image", "label"])
    return (np.array(table.column("image").to_pylist(), dtype=object),
            table.column("label").to_numpy().astype(np.int64))


def epoch_permutation(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's uniform order of the split's rows (every rank draws the same)."""
    return np.random.default_rng([seed, epoch, ORDER_KEY]).permutation(rows)


def _batches(images, labels, perm, *, rank: int, batch: int, world: int, size: int, seed: int, epoch: int, skip: int):
    for step in range(skip, len(perm) // (batch * world)):
        idx = perm[step * batch * world + rank * batch:][:batch]
        rng = np.random.default_rng([seed, epoch, rank, step, 7])
        yield decode_batch(images[idx], size, functools.partial(train_params, rng=rng)), torch.from_numpy(labels[idx])


@contextlib.contextmanager
def make_full_shuffle_loader(parquet: ParquetSplit, *, batch_size: int, image_size: int,
                             steps_per_epoch: int | None = None, epoch: int = 0, skip_batches: int = 0,
                             seed: int = 0, rank: int = 0, world_size: int = 1, decode: str = "cpu",
                             auto_augment: str = "none", random_erase: float = 0.0, **_unused):
    """Drop-in for :func:`data.rank_loaders.make_train_loader` (the arguments the trainer passes)."""
    if decode != "cpu" or auto_augment != "none" or random_erase:
        raise UserError("the full-shuffle baseline supports --decode cpu without --auto-augment/--random-erase")
    steps = train_steps_per_epoch(parquet, batch_size, world_size, steps_per_epoch)
    images, labels = _rows(parquet)
    if steps * batch_size * world_size > len(labels):
        raise UserError("the full-shuffle baseline takes at most one pass per epoch (--steps-per-epoch too large)")
    perm = epoch_permutation(len(labels), seed, epoch)
    yield TrainBatches(_batches(images, labels, perm, rank=rank, batch=batch_size, world=world_size,
                                size=image_size, seed=seed, epoch=epoch, skip=skip_batches), steps, skip_batches)


def main(argv: list[str] | None = None):
    import trainer.train

    trainer.train.make_train_loader = make_full_shuffle_loader  # the only change: TrainingRun.loader calls this name
    return trainer.train.main(argv)


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
