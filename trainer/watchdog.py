"""Hang watchdog: a rank that makes no progress for a while writes down where it stands.

The training loop calls :meth:`Watchdog.tick` when training starts and after every step
and validation batch.
When no tick has come for ``after_s`` seconds, a background thread writes
``RUN/stacks/rank<R>.txt``: the Python stack of every thread of this rank (by thread
name) and, for each of its loader workers, its process state and whether it could dump
its own stacks. Each worker installs a ``faulthandler`` for SIGUSR1 when it starts
(:mod:`data.workers`, while ``SPARKDP_STACKS_DIR`` is set); the watchdog sends that signal,
and the worker writes ``rank<R>-worker<W>.txt`` beside the rank's file. A worker that
is stopped (SIGSTOP, a debugger) or has not reached its worker loop (its handler is not
installed: it is stuck between fork and start) cannot dump: the rank's file says which.
The rank prints one ``warning:`` line naming the file, and does so once per stall. A
rank that was waiting on its loader all that time has a frozen loader worker: the
watchdog ends that worker and the loader stops the run with one line naming it
(:func:`data.workers.end_stalled`). Otherwise it does not stop the run (``--dist-timeout``
does that: the rank may wait on a peer), so a slow step costs nothing but the file. A
failed collective adds the folder to its one-line error. Every second it also notes the
loader workers' memory, which names the likely cause when one is killed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from typing import Callable

from data.workers import STACKS_DIR_ENV, dump_workers, end_stalled, sample_memory

STACKS = "stacks"


def stacks_dir(run_dir: str) -> str:
    return os.path.join(run_dir, STACKS)


def thread_stacks() -> str:
    """Every thread of this process: name, ident and Python stack, innermost call last."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, '?')} (ident {ident})\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class Watchdog:
    """Writes this rank's stacks (and its loader workers') after ``after_s`` s without a tick."""

    def __init__(self, run_dir: str, rank: int, after_s: float, on_stall: Callable[[str | None], None] | None = None,
                 interval_s: float = 1.0):
        self.directory, self.rank, self.after_s, self.interval_s = stacks_dir(run_dir), rank, after_s, interval_s
        self.on_stall = on_stall or (lambda where: None)  # told where it stalled, then None once it moves on
        os.environ[STACKS_DIR_ENV] = self.directory  # loader workers started from now on install their handler
        self.last, self.where, self.dumped = None, "", False  # armed by the first tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sparkdp-watchdog", daemon=True)
        self._thread.start()

    def tick(self, where: str) -> None:
        """Progress: ``where`` says what just finished (e.g. ``train step 12``)."""
        if self.dumped:
            self.on_stall(None)
        self.last, self.where, self.dumped = time.monotonic(), where, False

    def watch(self, batches, what: str):
        """Iterate ``batches``, ticking after each one."""
        for i, batch in enumerate(batches, 1):
            yield batch
            self.tick(f"{what} batch {i}")

    def path(self) -> str:
        return os.path.join(self.directory, f"rank{self.rank}.txt")

    def dump(self, reason: str) -> str:
        """Write the stacks now; returns the rank's file."""
        os.makedirs(self.directory, exist_ok=True)
        workers = dump_workers(self.rank, self.directory)
        with open(self.path(), "a") as f:
            f.write(f"=== rank {self.rank} (pid {os.getpid()}) at {time.strftime('%Y-%m-%d %H:%M:%S')}: {reason}; "
                    f"last progress: {self.where}\n")
            f.write("loader workers:\n" + "".join(f"  {line}\n" for line in workers or ["(none running)"]))
            f.write(thread_stacks() + "\n")
        return self.path()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            sample_memory()
            idle = time.monotonic() - (self.last or time.monotonic())
            if idle < self.after_s:
                continue
            if self.dumped:
                # A rank waiting on its loader all this time has a frozen worker: end it, and the
                # loader fails with one line (data.workers); a rank waiting on a peer goes on waiting.
                end_stalled(idle, f"--stacks-after {self.after_s:g}")
                continue
            self.dumped = True
            self.on_stall(self.where)
            try:
                path = self.dump(f"no progress for {idle:.0f} s")
            except OSError as exc:
                print(f"[rank {self.rank}] warning: no progress for {idle:.0f} s since {self.where}; "
                      f"could not write stacks: {exc}", file=sys.stderr, flush=True)
                continue
            print(f"[rank {self.rank}] warning: no progress for {idle:.0f} s since {self.where}; Python stacks "
                  f"of this rank and its loader workers: {path}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop watching; drop the empty files loader workers opened for a dump that never came."""
        self._stop.set()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.directory):
                path = os.path.join(self.directory, name)
                if os.path.getsize(path) == 0:
                    os.remove(path)
            os.rmdir(self.directory)  # only if empty
