"""How :mod:`bench` turns a path into a number: delivered images per wall-clock second.

A path is read after a warm-up (its workers started, its buffers filled), for a fixed
time, by a consumer that does nothing else, so the rate is what the path can deliver.
Paths are measured in interleaved rounds and the median is kept, because on a shared
machine the background load drifts; only ratios from one run mean anything. Each
measurement also counts the CPU seconds the path used (all its processes and threads):
images per CPU second is its efficiency, which background load disturbs much less.
"""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import numpy as np
import psutil
import torch

from bench.paths import Batch, reference_transform
from data.transforms import decode_crop, train_params

Opener = Callable[[], ContextManager[Iterator[Batch]]]


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Rate:
    """One measurement: images per wall-clock second, and per CPU second the path used."""
    images_per_s: float
    images_per_cpu_s: float


class CpuClock:
    """CPU seconds used by this process and its descendants (loader workers), leaving out
    Spark's JVM and its Python daemons, which idle while a path is read."""

    def __init__(self) -> None:
        self.me = psutil.Process()

    def _processes(self) -> list[psutil.Process]:
        procs = [self.me]
        for child in self.me.children():
            with contextlib.suppress(psutil.Error):
                if "java" not in child.name():
                    procs += [child, *child.children(recursive=True)]
        return procs

    def read(self) -> dict[int, float]:
        out = {}
        for p in self._processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out

    @staticmethod
    def used(start: dict[int, float], end: dict[int, float]) -> float:
        return sum(v - start.get(pid, 0.0) for pid, v in end.items())


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and all its descendants, Spark's JVM and its
    Python workers included, and by descendants that have ended (counted in their parent)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def stream_rate(open_path: Opener, seconds: float, warmup_batches: int, warmup_s: float) -> Rate:
    """What one path delivers, after ``warmup_batches`` and at least ``warmup_s`` seconds."""
    clock = CpuClock()
    with open_path() as batches:
        started = time.perf_counter()
        for _ in range(warmup_batches):
            next(batches)
        while time.perf_counter() - started < warmup_s:
            next(batches)
        images, cpu0, t0 = 0, clock.read(), time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            images += len(next(batches)[1])
        cpu = CpuClock.used(cpu0, clock.read())
        return Rate(images / elapsed, images / max(cpu, 1e-9))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Let torch use one core, as a DataLoader worker does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ceiling_rate(decode_one: Callable[[bytes], object], blobs: list[bytes], seconds: float) -> Rate:
    """``cores()`` x the rate of ``decode_one`` over in-memory files in a tight loop on one core."""
    with one_thread():
        for data in blobs[:3]:
            decode_one(data)
        done, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            decode_one(blobs[done % len(blobs)])
            done += 1
        return Rate(cores() * done / elapsed, done / max(time.process_time() - cpu0, 1e-9))


def all_cores_rate(data: str, size: int, seconds: float) -> Rate:
    """``cores()`` processes at once, each running the project's decode over ``data``'s
    stored images in a tight loop: what the cores deliver together with no reading at all.
    On a VM the cores at once can be slower than cores x one core (shared caches, memory
    bandwidth, the host's clock), a loss no loader can win back."""
    from data import workers as wp

    ctx = wp.worker_context()
    start, results = ctx.Event(), ctx.Queue()
    with wp.main_hidden():
        procs = [ctx.Process(target=_decode_loop, args=(data, size, seconds, start, results), daemon=True)
                 for _ in range(cores())]
        for proc in procs:
            proc.start()
    try:
        for _ in procs:
            results.get(timeout=120)  # each is ready: imports done, images in memory, decoder warm
        start.set()
        rates = [results.get(timeout=seconds + 120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    return Rate(sum(r.images_per_s for r in rates), statistics.mean(r.images_per_cpu_s for r in rates))


def _decode_loop(data: str, size: int, seconds: float, start, results) -> None:
    blobs, decode = read_parquet_sample(data), project_decoder(size)
    results.put(ceiling_rate(decode, blobs, 0.2))  # warm, and ready
    start.wait()
    one = ceiling_rate(decode, blobs, seconds)
    results.put(Rate(one.images_per_s / cores(), one.images_per_cpu_s))


def convert_checker(quality: int, max_side: int | None) -> Callable[[bytes], object]:
    """What ``data.convert`` does to each file's bytes: decode fully, check, keep or re-encode
    (:func:`data.images.try_rgb_jpeg`): the work its conversion ceiling counts."""
    from data.images import try_rgb_jpeg

    return lambda data: try_rgb_jpeg(data, quality, max_side)


def reference_decoder(size: int) -> Callable[[bytes], object]:
    """Decode + RandomResizedCrop + flip + ToTensor + Normalize on PIL, as ``raw_files`` does."""
    from PIL import Image

    transform = reference_transform(size)
    return lambda data: transform(Image.open(io.BytesIO(data)).convert("RGB"))


def project_decoder(size: int, seed: int = 0) -> Callable[[bytes], object]:
    """The project's own per-image decode (:func:`data.transforms.decode_crop`, train mode)."""
    rng = np.random.default_rng(seed)
    return lambda data: decode_crop(data, size, lambda w, h: train_params(w, h, rng))


def read_sample(images: str, limit: int = 256) -> list[bytes]:
    """Up to ``limit`` image files of a ``<class>/<image>`` folder, in memory."""
    from torchvision.datasets import ImageFolder

    files = [path for path, _ in ImageFolder(images).samples]
    step = max(1, len(files) // limit)
    out = []
    for path in files[::step][:limit]:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


# Stored images a decode ceiling cycles through: the train split itself up to this many. The
# first 256 rows of the 3,000-image set's resized train split (2,100 rows), cycled, decoded
# 2.6% faster than all of it in a shuffled order (373 vs 383 us per image, median of 8
# alternating passes on one core: the images' own cost and their bytes no longer all in the
# cache, as in the loader), which raised that ceiling above what the loader's images cost; on
# the 600-image set (420 rows) they cost the same (375 vs 373 us).
DECODE_SAMPLE = 2048


def read_parquet_sample(data: str, limit: int = DECODE_SAMPLE) -> list[bytes]:
    """The first ``limit`` stored images of a converted data set's train split (rows are in
    hashed-path order, so any classes), in memory."""
    from data.split_reader import open_split

    table = open_split(data, "train").dataset().head(limit, columns=["image"])
    return table.column("image").to_pylist()


def median_rates(measure: list[tuple[str, Callable[[], Rate]]], rounds: int,
                 log: Callable[[str], None] = lambda _: None) -> dict[str, dict]:
    """Run every measurement once per round, in the order given, interleaved; keep each one's
    medians and rounds. A name given twice is measured in parts (a ceiling's halves before and
    after its path) whose rates are averaged per round."""
    runs: dict[str, list[Rate]] = {name: [] for name, _ in measure}
    for r in range(rounds):
        parts: dict[str, list[Rate]] = {name: [] for name, _ in measure}
        for name, fn in measure:
            rate = fn()
            parts[name].append(rate)
            log(f"round {r + 1}/{rounds}  {name:<22} {rate.images_per_s:8.1f} images/s "
                f"{rate.images_per_cpu_s:8.1f} per CPU-s")
        for name, rates in parts.items():
            runs[name].append(Rate(statistics.mean(x.images_per_s for x in rates),
                                   statistics.mean(x.images_per_cpu_s for x in rates)))
    return {name: {"images_per_s": statistics.median(x.images_per_s for x in v),
                   "images_per_cpu_s": statistics.median(x.images_per_cpu_s for x in v),
                   "rounds": [x.images_per_s for x in v]} for name, v in runs.items()}
