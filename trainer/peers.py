"""Name the rank that hung or died when a collective fails.

Gloo and NCCL report a lost peer as "Timed out waiting 600000ms for recv" or
"Connection closed by peer": true, but silent about *which* rank stopped. Each rank
publishes its step count in the rendezvous store (a key-value server that lives in the
launcher, outside the ranks), so a rank whose collective failed can read the others'
last steps and say who fell behind. The process group itself is unusable by then.
"""
from __future__ import annotations

import re
from datetime import timedelta

import torch.distributed as dist

KEY = "sparkdp/step/{rank}"
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
    """Publishes this rank's step; on failure, reports which ranks stopped short of it."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.store = _store() if world_size > 1 else None
        self.step = 0

    def mark(self, step: int) -> None:
        self.step = step
        if self.store is not None:
            self.store.set(KEY.format(rank=self.rank), str(step))

    def peer_steps(self) -> dict[int, int | None]:
        """Last published step of every other rank (None: never reported, or unreachable)."""
        steps: dict[int, int | None] = {}
        if self.store is None:
            return steps
        try:
            self.store.set_timeout(timedelta(seconds=5))
        except Exception:
            pass
        for r in range(self.world_size):
            if r == self.rank:
                continue
            key = KEY.format(rank=r)
            try:
                steps[r] = int(self.store.get(key)) if self.store.check([key]) else None
            except Exception:
                steps[r] = None
        return steps

    def describe(self, exc: BaseException, timeout_s: float) -> str | None:
        """One line naming the lagging ranks, or None if ``exc`` is not a lost-peer error."""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self.world_size < 2 or not PEER_FAILURE.search(first):
            return None
        steps = self.peer_steps()
        behind = [f"rank {r} (at step {s})" if s is not None else f"rank {r} (no step reported)"
                  for r, s in sorted(steps.items()) if s is None or s < self.step]
        who = ", ".join(behind) if behind else "another rank (every rank reported this step; it stopped later)"
        return (f"rank {self.rank} gave up at step {self.step}: {who} stopped responding within "
                f"--dist-timeout {timeout_s:g}s ({first[:160]}). Check that rank's log; "
                "restart with --resume auto to continue from the last checkpoint")
