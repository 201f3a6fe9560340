"""One batch ahead: the next batch is made ready on the device while the current step runs.

:func:`make_device_prefetcher` wraps a loader's ``(images, labels)`` batches and yields
what ``prepare(images, labels)`` makes of them (the trainer's: normalised inputs and
labels on the device, a :class:`data.gpu_decode.JpegBatch` decoded there first), in the
same order and no more or fewer of them: the loader's own ordering, and so its resume
logic (``skip_batches``), is untouched. A background thread takes batch ``k + 1`` from
the loader and prepares it while the caller's step ``k`` runs:

* on CUDA, ``prepare`` runs on a side stream; an event recorded after it is waited on by
  the caller's current stream when the batch is handed over (the step is ordered after
  the decode, on the device, without stopping the host), and the tensors handed over are
  ``record_stream``-ed on the current stream, so their memory is not reused while the
  step still reads them. nvJPEG holds the host until a batch is decoded; in the thread,
  that wait no longer holds the training step. The JPEG bytes arrive pinned (the
  loader's ``pin_memory``).
* on CPU there is no stream and no event; the same thread, hand-over and ordering run,
  which is how the tests cover this module without a GPU.

At most one batch is ready or being prepared beyond the one the caller holds. The
thread stops when the loader ends or raises (its error is raised in the caller) or when
the prefetcher is closed.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import torch

_END = object()  # the loader is exhausted
_JOIN_TIMEOUT_S = 5.0  # closing while the thread waits on the loader: the loader's own close ends it


class DevicePrefetcher:
    """Iterator over ``prepare(images, labels)`` for each loader batch, one batch ahead."""

    def __init__(self, batches: Iterable, prepare: Callable[[Any, torch.Tensor], Any], device: torch.device | str):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # the thread must name it
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._ready: queue.Queue = queue.Queue()
        self._room = threading.Semaphore(1)  # batches that may be ready or in preparation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(batches), prepare), daemon=True,
                                        name="sparkdp-prefetch")
        self._thread.start()

    def _fill(self, batches: Iterator, prepare: Callable) -> None:
        try:
            if self.stream is not None:
                torch.cuda.set_device(self.device)  # a new thread starts on device 0
            while self._wait_for_room():
                batch = next(batches, _END)
                if batch is _END:
                    self._ready.put((_END, None))
                    return
                with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                    prepared = prepare(*batch)
                    done = self.stream.record_event() if self.stream is not None else None
                self._ready.put((prepared, done))
        except BaseException as exc:  # raised again in the caller's thread
            self._ready.put((exc, None))

    def _wait_for_room(self) -> bool:
        while not self._stop.is_set():
            if self._room.acquire(timeout=0.1):
                return not self._stop.is_set()
        return False

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self):
        prepared, done = self._ready.get()
        if prepared is _END or isinstance(prepared, BaseException):
            self._ready.put((prepared, None))  # every later call ends (or fails) the same way
            if prepared is _END:
                raise StopIteration
            raise prepared
        self._room.release()  # the thread may start on the next batch while the caller steps
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for t in _tensors(prepared):
                if t.device.type == "cuda":
                    t.record_stream(current)
        return prepared

    def close(self) -> None:
        """Stop the thread (before the loader it reads is closed)."""
        self._stop.set()
        self._thread.join(_JOIN_TIMEOUT_S)


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


@contextlib.contextmanager
def make_device_prefetcher(batches: Iterable, prepare: Callable[[Any, torch.Tensor], Any],
                           device: torch.device | str) -> Iterator[DevicePrefetcher]:
    """Context manager yielding a :class:`DevicePrefetcher`; close it before the loader."""
    prefetcher = DevicePrefetcher(batches, prepare, device)
    try:
        yield prefetcher
    finally:
        prefetcher.close()
