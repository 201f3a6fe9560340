"""Loader worker processes: how they start, how they end, how a hung one is seen.

Workers are started by a ``forkserver``, never forked from the rank itself: a rank runs
other threads (the step heartbeat, gloo's, Arrow's, the queues' feeders), and a process
forked while another thread holds a lock (malloc's, the import lock, a C library's) can
wait for that lock forever in the child. The fork server is a single-threaded process
started once per rank with the loader and Petastorm already imported, so starting
workers for every epoch and validation stays cheap; workers do not re-run the caller's
script (:func:`main_hidden`), so a script without an ``if __name__ == "__main__":``
guard works. Each worker ends with the rank that owns it (:func:`worker_init`), and on
``SIGUSR1`` writes its threads' stacks where ``SPARKDP_STACKS_DIR`` says (the trainer's
hang watchdog sends it to :func:`live_workers`).
"""
from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
import weakref
from typing import Iterator

WORKER_START = "forkserver"
STACKS_DIR_ENV = "SPARKDP_STACKS_DIR"  # set: workers dump their stacks there on SIGUSR1
PRELOAD = ["data.loader", "petastorm", "petastorm.reader", "petastorm.arrow_reader_worker"]  # every worker's imports

_LIVE: "weakref.WeakSet" = weakref.WeakSet()  # the DataLoader iterators whose workers run


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start from. The fork server is started
    here unless it runs: call this early to have its imports overlap other start-up work."""
    ctx = multiprocessing.get_context(WORKER_START)
    ctx.set_forkserver_preload(PRELOAD)
    # pyarrow's allocator starts a background thread on import: off, the server stays single-threaded.
    with _env(JE_ARROW_MALLOC_CONF="background_thread:false"):
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return ctx


@contextlib.contextmanager
def main_hidden() -> Iterator[None]:
    """Start processes that do not re-run the caller's main module: a spawn-style start
    imports the parent's ``__main__`` again in each new process, and an unguarded script
    would run its whole training in every worker. Workers need nothing from it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _exit_with(pid: int) -> None:
    """End this worker once process ``pid`` (the rank that owns it) is gone or a zombie: a
    worker's parent is the fork server, which lives as long as any worker holds its
    "alive" pipe, so neither notices a rank killed with SIGKILL."""
    while True:
        time.sleep(1.0)
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            os._exit(1)
        if state in ("Z", "X"):
            os._exit(1)


def worker_init(stacks_dir: str | None, rank: int, owner: int, worker: int) -> None:
    """In each worker: end with the rank that owns it; on SIGUSR1, write all its threads'
    stacks to ``stacks_dir``."""
    threading.Thread(target=_exit_with, args=(owner,), name="sparkdp-owner-watch", daemon=True).start()
    if stacks_dir:
        os.makedirs(stacks_dir, exist_ok=True)
        dump = open(os.path.join(stacks_dir, f"rank{rank}-worker{worker}.txt"), "a")  # kept open for the handler
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)


def register(loader_iterator) -> None:
    """Count a DataLoader iterator's workers in :func:`live_workers` while it lives."""
    _LIVE.add(loader_iterator)


def unregister(loader_iterator) -> None:
    _LIVE.discard(loader_iterator)


def live_workers() -> list[tuple[int, int]]:
    """``(worker index, pid)`` of every loader worker this process has running."""
    return [(i, w.pid) for it in list(_LIVE) for i, w in enumerate(getattr(it, "_workers", [])) if w.pid is not None]
