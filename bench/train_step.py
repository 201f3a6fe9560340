"""``--train-step``: a real training step fed by each input path, against synthetic input.

The model, optimizer and precision follow the trainer (SGD, bf16 autocast and
channels_last on CUDA). Each path feeds the same model for a fixed time after a
warm-up; the time spent in ``next(batches)`` is the data wait. Synthetic input is one
batch kept on the device: the rate the model itself allows. A path keeps up when its
rate is near the synthetic one (its data-wait fraction near 0).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from bench.measure import Opener
from data.loader import model_input, normalize
from trainer.model import build_model, to_device
from trainer.precision import autocast_context, precision_dtype


def to_model_input(images, device: torch.device, size: int, channels_last: bool) -> torch.Tensor:
    """Whatever a path yields -> normalised float on ``device``, as the model wants it: the
    trainer's :func:`data.loader.model_input`, or a batch its path already normalised."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():  # raw_files, petastorm_converter
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return images.to(device, non_blocking=True).contiguous(memory_format=fmt)
    return model_input(images, size, device, channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One model + optimizer, stepped on batches from any source."""

    def __init__(self, model_name: str, num_classes: int, size: int, device: torch.device):
        self.device, self.size, self.cuda = device, size, device.type == "cuda"
        self.model = to_device(build_model(model_name, num_classes), device)  # as the trainer does
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.criterion = nn.CrossEntropyLoss()

    def step(self, images, labels: torch.Tensor) -> None:
        x = to_model_input(images, self.device, self.size, self.cuda)
        y = labels.to(self.device, non_blocking=True)
        with autocast_context(self.device, precision_dtype("auto", self.device)):
            loss = self.criterion(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, next_batch: Callable[[], tuple], seconds: float, warmup_steps: int, warmup_s: float) -> dict:
        """Step for ``seconds`` after ``warmup_steps`` and at least ``warmup_s`` seconds (loader
        workers starting up are not what is measured): images/s and the data-wait fraction."""
        started = time.perf_counter()
        for _ in range(warmup_steps):
            self.step(*next_batch())
        while time.perf_counter() - started < warmup_s:
            self.step(*next_batch())
        _sync(self.device)
        images, waited, steps, t0 = 0, 0.0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or steps < 2:
            w0 = time.perf_counter()
            batch = next_batch()
            waited += time.perf_counter() - w0
            self.step(*batch)
            images, steps = images + len(batch[1]), steps + 1
        _sync(self.device)
        elapsed = time.perf_counter() - t0
        return {"images_per_s": images / elapsed, "data_wait_fraction": waited / elapsed, "steps": steps}


def train_step_rates(openers: dict[str, Opener], *, model: str, num_classes: int, batch_size: int, size: int,
                     device: torch.device, seconds: float, warmup_s: float, warmup_steps: int = 2) -> dict:
    """Training images/s and data-wait fraction for each path and for synthetic input."""
    runner = StepRunner(model, num_classes, size, device)
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    fixed = (normalize(x, device, channels_last=runner.cuda), torch.randint(0, num_classes, (batch_size,)))
    synthetic = runner.run(lambda: fixed, seconds, warmup_steps, warmup_s)
    out = {"synthetic": synthetic}
    for name, open_path in openers.items():
        with open_path() as batches:
            out[name] = runner.run(lambda: next(batches), seconds, warmup_steps, warmup_s)
    for r in out.values():
        r["ratio_to_synthetic"] = round(r["images_per_s"] / synthetic["images_per_s"], 3)
        r["images_per_s"], r["data_wait_fraction"] = round(r["images_per_s"], 1), round(r["data_wait_fraction"], 4)
    return {"model": model, "device": str(device), "paths": out}
