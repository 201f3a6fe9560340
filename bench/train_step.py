"""``--train-step``: a real training step fed by each input path, against synthetic input.

The model, optimizer and precision follow the trainer (SGD, ``--precision``: bf16
autocast on CUDA by default, fp16 with the trainer's loss scaler; channels_last on CUDA;
``--compile``: ``torch.compile``). Each path feeds the same model for a fixed time after
a warm-up; the time spent in ``next(batches)`` is the data wait. The project's paths are
made ready one batch ahead on a side stream, as the trainer does
(:mod:`data.gpu_prefetch`). Synthetic input is one batch kept on the device: the rate
the model itself allows (with ``--compile``, also without compiling: ``synthetic_eager``).
A path keeps up when its rate is near the synthetic one (its data-wait fraction near 0).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
from torch import nn

from bench.measure import Opener
from data.gpu_prefetch import make_device_prefetcher
from data.gpu_decode import model_input
from data.transforms import normalize
from trainer.model import build_model, to_device
from trainer.precision import autocast_context, make_scaler, precision_dtype


def to_model_input(images, device: torch.device, size: int, channels_last: bool) -> torch.Tensor:
    """Whatever a path yields -> normalised float on ``device``, as the model wants it: the
    trainer's :func:`data.gpu_decode.model_input`, or a batch its path already normalised."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():  # raw_files, petastorm_converter
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return images.to(device, non_blocking=True).contiguous(memory_format=fmt)
    return model_input(images, size, device, channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One model + optimizer + loss scaler, stepped on batches from any source."""

    def __init__(self, model_name: str, num_classes: int, size: int, device: torch.device, precision: str = "auto",
                 compile_: bool = False):
        self.device, self.size, self.cuda = device, size, device.type == "cuda"
        self.eager = to_device(build_model(model_name, num_classes), device)  # as the trainer does
        self.model = torch.compile(self.eager) if compile_ else self.eager
        self.optimizer = torch.optim.SGD(self.eager.parameters(), lr=0.01, momentum=0.9)
        self.dtype = precision_dtype(precision, device)
        self.scaler = make_scaler(device, self.dtype)
        self.criterion = nn.CrossEntropyLoss()

    def prepare(self, images, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A path's batch as the step takes it: model input and labels on the device."""
        return to_model_input(images, self.device, self.size, self.cuda), labels.to(self.device, non_blocking=True)

    def step(self, images, labels: torch.Tensor, model: nn.Module | None = None) -> None:
        x, y = self.prepare(images, labels)
        with autocast_context(self.device, self.dtype):
            loss = self.criterion((model or self.model)(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def run(self, next_batch: Callable[[], tuple], seconds: float, warmup_steps: int, warmup_s: float,
            model: nn.Module | None = None) -> dict:
        """Step for ``seconds`` after ``warmup_steps`` and at least ``warmup_s`` seconds (loader
        workers starting up, and compiling, are not what is measured): images/s and the
        data-wait fraction."""
        started = time.perf_counter()
        for _ in range(warmup_steps):
            self.step(*next_batch(), model)
        while time.perf_counter() - started < warmup_s:
            self.step(*next_batch(), model)
        _sync(self.device)
        images, waited, steps, t0 = 0, 0.0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or steps < 2:
            w0 = time.perf_counter()
            batch = next_batch()
            waited += time.perf_counter() - w0
            self.step(*batch, model)
            images, steps = images + len(batch[1]), steps + 1
        _sync(self.device)
        elapsed = time.perf_counter() - t0
        return {"images_per_s": images / elapsed, "data_wait_fraction": waited / elapsed, "steps": steps}


def train_step_rates(openers: dict[str, Opener], *, model: str, num_classes: int, batch_size: int, size: int,
                     device: torch.device, seconds: float, warmup_s: float, warmup_steps: int = 2,
                     precision: str = "auto", compile_: bool = False) -> dict:
    """Training images/s and data-wait fraction for each path and for synthetic input
    (with ``compile_``, also for synthetic input without compiling: ``synthetic_eager``)."""
    runner = StepRunner(model, num_classes, size, device, precision, compile_)
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    fixed = (normalize(x, device, channels_last=runner.cuda), torch.randint(0, num_classes, (batch_size,)))
    synthetic = runner.run(lambda: fixed, seconds, warmup_steps, warmup_s)
    out = {"synthetic": synthetic}
    if compile_:
        out["synthetic_eager"] = runner.run(lambda: fixed, seconds, warmup_steps, warmup_s, runner.eager)
    for name, open_path in openers.items():
        with contextlib.ExitStack() as stack:
            batches = stack.enter_context(open_path())
            if name.startswith("project"):  # one batch ahead on a side stream, as the trainer reads them
                batches = stack.enter_context(make_device_prefetcher(batches, runner.prepare, device))
            out[name] = runner.run(lambda: next(batches), seconds, warmup_steps, warmup_s)
    for r in out.values():
        r["ratio_to_synthetic"] = round(r["images_per_s"] / synthetic["images_per_s"], 3)
        r["images_per_s"], r["data_wait_fraction"] = round(r["images_per_s"], 1), round(r["data_wait_fraction"], 4)
    return {"model": model, "device": str(device), "precision": precision, "compiled": compile_,
            "loss_scaling": runner.scaler.is_enabled(), "paths": out}
