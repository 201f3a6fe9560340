"""This rank's loaders over a converted data set folder: the public entry points.

:func:`make_train_loader` and :func:`make_eval_loader` take the folder written by
``python -m data.convert`` (or a :class:`~data.split_reader.ParquetSplit` from
:func:`open_split`, to check a split once and reuse it every epoch), read the
manifest, and take rank and world size from ``torch.distributed`` when a process group
is up (else a world of one). Sharding, exactly-once evaluation and resumable train
streams are :mod:`data.order`'s; see its docstring.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from data.errors import UserError
from data.loader import Batches, ParquetSplit, make_loader
from data.manifest import Manifest
from data.split_reader import open_split


def train_steps_per_epoch(parquet: ParquetSplit, batch_size: int, world_size: int,
                          steps_per_epoch: int | None = None) -> int:
    """Steps every rank runs per epoch: ``steps_per_epoch`` if given, else one pass,
    ``rows // (batch_size * world_size)``. Refuses a batch larger than a rank's share."""
    per_rank = parquet.rows // world_size
    if per_rank < batch_size:
        raise UserError(f"batch size {batch_size} is larger than a rank's share of the train split "
                        f"({parquet.rows} rows / {world_size} ranks = {per_rank}): lower it or use fewer ranks")
    return steps_per_epoch or parquet.rows // (batch_size * world_size)


class TrainBatches:
    """Exactly ``steps_per_epoch`` batches of an infinite train stream (fewer, by the
    skipped ones, when resuming mid-epoch). An iterator; ``len()`` is the batches left."""

    def __init__(self, batches: Batches, steps_per_epoch: int, skip_batches: int = 0):
        self.batches, self.steps_per_epoch, self.step = batches, steps_per_epoch, skip_batches

    def __iter__(self) -> "TrainBatches":
        return self

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.step, 0)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step >= self.steps_per_epoch:
            raise StopIteration
        batch = next(self.batches)
        self.step += 1
        return batch


def _parquet_split(data: str | ParquetSplit, split: str) -> ParquetSplit:
    return data if isinstance(data, ParquetSplit) else open_split(data, split)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank/world, else the process group's, else a world of one."""
    import torch.distributed as dist

    up = dist.is_available() and dist.is_initialized()
    return (rank if rank is not None else dist.get_rank() if up else 0,
            world_size if world_size is not None else dist.get_world_size() if up else 1)


def _loader_args(workers: int, pin_memory: bool | None, rank: int | None, world_size: int | None) -> dict:
    rank, world_size = _rank_world(rank, world_size)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return {"workers": workers, "pin_memory": pin, "rank": rank, "world_size": world_size}


@contextlib.contextmanager
def make_train_loader(data: str | ParquetSplit, *, batch_size: int, image_size: int,
                      steps_per_epoch: int | None = None, epoch: int = 0, skip_batches: int = 0, seed: int = 0,
                      workers: int = 2, pin_memory: bool | None = None, decode: str = "cpu", split: str = "train",
                      rank: int | None = None, world_size: int | None = None, auto_augment: str = "none",
                      random_erase: float = 0.0, streams: int | None = None) -> Iterator[TrainBatches]:
    """This rank's shuffled, augmented train batches for one epoch: ``(uint8 [B,3,H,W], int64 [B])``.

    Every rank gets exactly ``steps_per_epoch`` batches (default: one pass over the
    split, see :func:`train_steps_per_epoch`), however the rows are grouped, so DDP
    ranks never wait on each other at an epoch's end. ``(seed, epoch)`` fix the order and
    augmentation (RandomResizedCrop and flip, plus ``auto_augment``: ``ta_wide``, ``ra`` or
    ``augmix``, and ``random_erase`` probability, see :class:`data.transforms.Augment`);
    ``skip_batches`` resumes an epoch after that many steps and yields the
    batches an uninterrupted run would have. The global batch (``batch_size x
    world_size``) is read from ``streams`` canonical streams (default
    :func:`data.order.default_streams`): with the same ``streams`` and global batch, step
    ``t`` covers the same images with the same augmentation on any world size that divides
    ``streams``, so a run can resume on another world size. Feed images to :func:`data.transforms.normalize`
    on the device. ``data`` is a data set folder or :func:`open_split`'s result;
    ``pin_memory`` defaults to whether CUDA is available.
    """
    parquet = _parquet_split(data, split)
    args = _loader_args(workers, pin_memory, rank, world_size)
    steps = train_steps_per_epoch(parquet, batch_size, args["world_size"], steps_per_epoch)
    with make_loader(parquet, batch_size=batch_size, image_size=image_size, train=True, seed=seed, epoch=epoch,
                     skip_batches=skip_batches, decode=decode, auto_augment=auto_augment,
                     random_erase=random_erase, streams=streams, **args) as batches:
        yield TrainBatches(batches, steps, skip_batches)


@contextlib.contextmanager
def make_eval_loader(data: str | ParquetSplit, split: str = "val", *, batch_size: int, image_size: int,
                     workers: int = 2, pin_memory: bool | None = None, decode: str = "cpu",
                     rank: int | None = None, world_size: int | None = None) -> Iterator[Batches]:
    """This rank's share of a split, center-cropped, for evaluation: every image is read
    exactly once across all ranks (ranks may get different numbers of batches, the last
    one partial). Sum metrics and reduce them (:class:`trainer.metrics.ClassificationSums`);
    evaluate the unwrapped model, not the DDP one, since ranks finish at different times.
    """
    with make_loader(_parquet_split(data, split), batch_size=batch_size, image_size=image_size, train=False,
                     decode=decode, **_loader_args(workers, pin_memory, rank, world_size)) as batches:
        yield batches
