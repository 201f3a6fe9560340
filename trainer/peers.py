"""Name the rank that hung or died when a collective fails.

Gloo and NCCL report a lost peer as "Timed out waiting 600000ms for recv" or
"Connection reset by peer": true, but silent about *which* rank stopped. Each rank
keeps a heartbeat counter and its step count in the rendezvous store, a key-value
server that outlives the process group; a background thread publishes both each
second, so the training loop does no store I/O. A rank whose collective failed reads the counters twice a few seconds apart: ranks whose heartbeat stood
still are hung or dead, and their last step says where they stopped.
"""
from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import torch.distributed as dist

STEP_KEY = "sparkdp/step/{rank}"
STALL_KEY = "sparkdp/stall/{rank}"
ALIVE_KEY = "sparkdp/alive/{rank}"
PEER_FAILURE = re.compile(r"timed out|timeout|connection (closed|reset|refused)|broken pipe|pair closure|"
                          r"peer|nccl|watchdog", re.IGNORECASE)


def _store():
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # private API: without it we only lose the rank names
        return None


class StepBeacon:
    """Publishes this rank's step and heartbeat; on failure, says which ranks stopped."""

    def __init__(self, rank: int, world_size: int, interval_s: float = 1.0):
        self.rank, self.world_size, self.interval_s = rank, world_size, interval_s
        self.store = _store() if world_size > 1 else None
        self.step = 0
        self.stall = ""  # what this rank last finished, while its watchdog sees no progress
        self._stop = threading.Event()
        if self.store is not None:
            threading.Thread(target=self._beat, name="sparkdp-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        """Every interval: publish the step and bump the heartbeat (off the training loop's path)."""
        while not self._stop.wait(self.interval_s):
            try:
                self.store.set(STEP_KEY.format(rank=self.rank), str(self.step))
                self.store.set(STALL_KEY.format(rank=self.rank), self.stall)
                self.store.add(ALIVE_KEY.format(rank=self.rank), 1)
            except Exception:  # the store is gone: the job is ending
                return

    def close(self) -> None:
        self._stop.set()

    def mark(self, step: int) -> None:
        """Record this rank's step; the heartbeat thread publishes it."""
        self.step = step

    def stalled(self, where: str | None) -> None:
        """Publish that this rank makes no progress since ``where`` (None: progressing again)."""
        self.stall = where or ""

    def _heartbeat(self, rank: int) -> int | None:
        try:
            return int(self.store.add(ALIVE_KEY.format(rank=rank), 0))
        except Exception:
            return None

    def _read(self, template: str, rank: int) -> str | None:
        key = template.format(rank=rank)
        try:
            return self.store.get(key).decode() if self.store.check([key]) else None
        except Exception:
            return None

    def _step(self, rank: int) -> int | None:
        step = self._read(STEP_KEY, rank)
        return int(step) if step else None

    def _peers(self) -> list[int]:
        return [r for r in range(self.world_size) if r != self.rank]

    def stopped_ranks(self) -> dict[int, int | None]:
        """{rank: last step} for every other rank whose heartbeat stands still."""
        if self.store is None:
            return {}
        try:
            self.store.set_timeout(timedelta(seconds=5))
        except Exception:
            pass
        before = {r: self._heartbeat(r) for r in self._peers()}
        time.sleep(3 * self.interval_s)
        after = {r: self._heartbeat(r) for r in self._peers()}
        return {r: self._step(r) for r in self._peers()
                if after[r] is None or after[r] == before[r]}

    def describe(self, exc: BaseException, timeout_s: float) -> str | None:
        """One line naming the stopped ranks, or None if ``exc`` is not a lost-peer error."""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self.world_size < 2 or not PEER_FAILURE.search(first):
            return None
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # drop gloo's source-file prefix
        stopped = self.stopped_ranks()
        who = ", ".join(f"rank {r} (last step {s})" if s is not None else f"rank {r} (before its first step)"
                        for r, s in sorted(stopped.items()))
        if not who:  # alive but stuck (a frozen loader worker, say): its watchdog published where
            stuck = {r: self._read(STALL_KEY, r) for r in self._peers()}
            who = ", ".join(f"rank {r} (last step {self._step(r)}, alive but no progress since {w})"
                            for r, w in sorted(stuck.items()) if w) or "another rank"
        return (f"rank {self.rank} gave up at step {self.step}: {who} stopped responding within "
                f"--dist-timeout {timeout_s:g}s ({first}). Check that rank's log; "
                "restart with --resume auto to continue from the last checkpoint")
