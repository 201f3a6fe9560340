"""Loader worker processes: how they start, how they end, how a hung one is seen.

Workers are started by a ``forkserver``, never forked from the rank itself: a rank runs
other threads (the step heartbeat, gloo's, Arrow's), and a process forked while another
thread holds a lock (malloc's, the import lock, a C library's) can wait for that lock
forever in the child. The fork server is a single-threaded process started once per rank
with the loader and Petastorm already imported, so starting workers for every epoch and
validation stays cheap; workers do not re-run the caller's script (:func:`main_hidden`),
so a script without an ``if __name__ == "__main__":`` guard works. Each worker ends with
the rank that owns it (:func:`worker_init`), and on ``SIGUSR1`` writes its threads' stacks
where ``SPARKDP_STACKS_DIR`` says (the trainer's hang watchdog sends it to
:func:`live_workers`).

A worker that dies (the OOM killer's SIGKILL) or freezes must not leave its rank with a
raw DataLoader traceback or waiting until a collective times out: the rank names the
worker, the cause and the memory it held when last seen (:func:`describe_end`), and a
worker its loader waited on past the watchdog's limit is ended (:func:`end_stalled`).
"""
from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import multiprocessing.queues
import multiprocessing.reduction
import os
import queue
import signal
import sys
import threading
import time
import types
import weakref
from typing import Iterator

from data.quick_exit import skip_final_gc

STACKS_DIR_ENV = "SPARKDP_STACKS_DIR"  # set: workers dump their stacks there on SIGUSR1
PRELOAD = ["data.loader", "petastorm", "petastorm.reader", "petastorm.arrow_reader_worker"]  # every worker's imports
_SERVER_ENV = "SPARKDP_FORK_SERVER"  # set while the fork server starts: it imports this module

if os.environ.pop(_SERVER_ENV, None):  # the fork server: its exit skips the final collections
    skip_final_gc()


class _PipeQueue(multiprocessing.queues.SimpleQueue):
    """The DataLoader's queues (requests to a worker, its batches back) without
    ``multiprocessing.Queue``'s feeder thread: ``put`` pickles and writes to the pipe itself.
    A feeder thread woke for every message and took the GIL from the sender's main thread
    (in the rank ~12 futex calls per message); the messages are small (a request; a ring
    slot and its labels; a shared-memory handle) and the DataLoader keeps a few in flight,
    so the pipe never fills and ``put`` never waits. Each queue has one reader (a worker, or
    the rank's main or pin-memory thread), so ``get`` takes no lock. Measured with the decode
    stubbed out (resized 3,000-image split, batch 32, two workers, six alternating pairs):
    the rank's CPU per step 146 -> 89 us (medians), the workers' per image 19.4 -> 16.8 us."""

    def get(self, block: bool = True, timeout: float | None = None):
        if not self._poll(timeout if block else 0):
            raise queue.Empty
        return multiprocessing.reduction.ForkingPickler.loads(self._reader.recv_bytes())

    def cancel_join_thread(self) -> None:  # no thread to join
        pass

    join_thread = cancel_join_thread


class _WorkerContext(multiprocessing.context.ForkServerContext):
    """Processes started by the fork server, talking through :class:`_PipeQueue`."""

    def Queue(self, maxsize: int = 0) -> _PipeQueue:  # noqa: N802 (multiprocessing's name)
        return _PipeQueue(ctx=self)


_CONTEXT = _WorkerContext()


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start from. The fork server is started
    here unless it runs: call this early to have its imports overlap other start-up work."""
    _CONTEXT.set_forkserver_preload(PRELOAD)
    # pyarrow's allocator starts a background thread on import: off, the server stays single-threaded.
    with _env(JE_ARROW_MALLOC_CONF="background_thread:false", **{_SERVER_ENV: "1"}):
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return _CONTEXT


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


def stacks_file(directory: str, rank: int, worker: int) -> str:
    """Where loader worker ``worker`` of rank ``rank`` writes its stacks."""
    return os.path.join(directory, f"rank{rank}-worker{worker}.txt")


def worker_init(stacks_dir: str | None, rank: int, owner: int, worker: int) -> None:
    """In each worker: end with the rank that owns it; on SIGUSR1, write all its threads'
    stacks to ``stacks_dir``."""
    threading.Thread(target=_exit_with, args=(owner,), name="sparkdp-owner-watch", daemon=True).start()
    if stacks_dir:
        os.makedirs(stacks_dir, exist_ok=True)
        dump = open(stacks_file(stacks_dir, rank, worker), "a")  # kept open for the handler
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)


# Loaders whose workers run (data.loader.Batches: ``workers()``, ``waiting``, ``awaited_worker()``,
# ``rank``), what each worker's memory was when last seen, and why the rank ended a worker itself.
_LIVE: "weakref.WeakSet" = weakref.WeakSet()
_RSS: dict[int, int] = {}       # pid -> resident bytes, sampled by sample_memory()
_VERDICTS: dict[int, str] = {}  # pid -> why end_stalled() killed it
_STALL_TICKS: dict[int, int | None] = {}  # pid -> its CPU time at end_stalled()'s last look
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)


def register(loader) -> None:
    """Count a loader's workers in :func:`live_workers` while it lives."""
    _LIVE.add(loader)


def unregister(loader) -> None:
    _LIVE.discard(loader)


def live_workers() -> list[tuple[int, int]]:
    """``(worker index, pid)`` of every loader worker this process has running."""
    return [(i, w.pid) for loader in list(_LIVE) for i, w in enumerate(loader.workers()) if w.pid is not None]


def proc_status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"


def dump_workers(rank: int, directory: str) -> list[str]:
    """Ask this rank's loader workers for their stacks; one line per worker on what happened."""
    lines = []
    for worker, pid in live_workers():
        status = proc_status(pid)
        state = status.get("State", "gone")
        where = f"loader worker {worker} (pid {pid}): state {state}, waiting in {wchan(pid)}"
        if not status:
            lines.append(f"{where}: the process is gone")
        elif state.startswith("T"):
            lines.append(f"{where}: STOPPED (SIGSTOP or a debugger), so it cannot dump its stacks")
        elif not int(status.get("SigCgt", "0"), 16) & _SIGUSR1_BIT:
            lines.append(f"{where}: NOT STARTED - it never reached its worker loop (no stack handler), "
                         "e.g. stuck between fork and start")
        else:
            os.kill(pid, signal.SIGUSR1)
            lines.append(f"{where}: stacks in {stacks_file(directory, rank, worker)}")
    return lines


def sample_memory() -> None:
    """Note each live loader worker's resident memory, so a worker the OOM killer ends can
    be described by what it held (the trainer's watchdog calls this every second)."""
    live = {pid for _, pid in live_workers()}
    for pid in live:
        try:
            with open(f"/proc/{pid}/statm") as f:
                _RSS[pid] = int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
    for pid in set(_RSS) - live:
        del _RSS[pid]
    for pid in set(_STALL_TICKS) - live:
        del _STALL_TICKS[pid]


def _cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def end_stalled(idle_s: float, limit: str) -> list[str]:
    """End the worker a waiting loader waits for, if it is frozen: a loader that delivered
    nothing past ``limit`` while its worker is stopped (SIGSTOP) or used no CPU since the
    last call (a deadlock, a read that never returns) would keep its rank waiting until a
    collective times out, or for ever. A worker still computing is slow, not frozen, and
    is left alone. The watchdog calls this every second of a stall, after writing the
    stacks (:func:`dump_workers`). Returns one line per worker ended; the loader then
    fails with :func:`describe_end`'s line."""
    ended = []
    for loader in [x for x in list(_LIVE) if x.waiting]:
        worker = loader.awaited_worker()
        procs = loader.workers()
        if worker is None or worker >= len(procs) or procs[worker].pid is None:
            continue
        pid = procs[worker].pid
        state = proc_status(pid).get("State", "gone")
        ticks, before = _cpu_ticks(pid), _STALL_TICKS.get(pid)
        _STALL_TICKS[pid] = ticks
        if not state.startswith("T") and (before is None or ticks != before):
            continue  # working (or first seen): look again in a second
        if stacks_dir := os.environ.get(STACKS_DIR_ENV):  # let its SIGUSR1 handler finish writing
            path, deadline = stacks_file(stacks_dir, loader.rank, worker), time.monotonic() + 2.0
            while not state.startswith("T") and time.monotonic() < deadline and \
                    not (os.path.exists(path) and os.path.getsize(path)):
                time.sleep(0.05)
        _VERDICTS[pid] = f"froze: it delivered nothing for {idle_s:.0f} s ({limit}; state {state}, waiting in " \
                         f"{wchan(pid)}), so the rank ended it"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        ended.append(f"loader worker {worker} (pid {pid})")
    return ended


def describe_end(rank: int, worker: int, pid: int, exitcode: int | None) -> str:
    """One line on a loader worker that is gone: which, why (a signal, the OOM killer, a
    freeze) and the memory it held when last seen."""
    cause = _VERDICTS.pop(pid, None)
    if cause is None and exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        cause = f"was killed by {name}" + (" (the kernel's OOM killer, most likely, or kill -9)"
                                           if -exitcode == signal.SIGKILL else "")
    elif cause is None:
        cause = f"exited with status {exitcode}"
    rss = _RSS.pop(pid, None)
    memory = f"{rss / 2**20:.0f} MiB resident when last seen" if rss else "not sampled"
    stacks = os.environ.get(STACKS_DIR_ENV)
    return (f"rank {rank}: loader worker {worker} (pid {pid}) {cause}; its memory: {memory}"
            + (f"; Python stacks: {stacks}" if stacks else ""))
