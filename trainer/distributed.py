"""Process-group set-up and the few collectives the trainer needs.

Rank, world size and local rank come from the environment that ``torchrun``,
TorchDistributor or any other launcher sets (RANK, WORLD_SIZE, LOCAL_RANK); a plain
``python -m trainer.train`` is a world of one and creates no process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from trainer.config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: from :func:`compute_init`."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def compute_init(timeout_s: float | None = None) -> DistInfo:
    """Join the process group (NCCL on CUDA, gloo on CPU) and pick this rank's device.

    ``timeout_s`` bounds every collective: if a peer rank dies or hangs, the others fail
    with an error after that long instead of waiting forever. Default: the environment's
    SPARKDP_DIST_TIMEOUT, else the trainer's ``--dist-timeout`` default.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s or float(os.environ.get("SPARKDP_DIST_TIMEOUT", TrainConfig.dist_timeout)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                store=_attempt_store(rank, world_size, timeout), rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, device)


def _attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The env:// rendezvous store, under a prefix unique to this torchrun restart.

    After ``torchrun --max-restarts`` restarts the ranks, the store can still hold the
    previous attempt's keys; gloo then reads a dead rank's address and fails to connect
    ("Connection refused"). A per-attempt prefix keeps each attempt's keys apart.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"sparkdp/attempt_{attempt}", store)


def compute_cleanup() -> None:
    """Leave the process group if we joined one (safe to call more than once)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print() on global rank 0 only."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across ranks (in place on a float64/int64 CPU or device tensor)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    if dist.get_backend() == "nccl" and not values.is_cuda:  # NCCL reduces device tensors only
        on_device = values.cuda()
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        values.copy_(on_device.cpu())
    else:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank; returns it everywhere."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank ``src``'s buffers (BatchNorm running statistics).

    DDP broadcasts rank 0's buffers at the start of each forward, but the forward then
    updates them from each rank's own batch, so after a step the ranks' running
    statistics differ. Evaluating the unwrapped model without this would score a
    different model on each rank's share (and not the one rank 0 saves).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)
