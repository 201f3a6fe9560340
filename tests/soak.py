"""Soak test: the same 2-rank training, again and again, on an oversubscribed CPU.

    .venv/bin/python tests/soak.py [--runs 10] [--epochs 3] [--burners 2] [--dist-timeout 120]

Each run trains ResNet-18 under ``torchrun --nproc-per-node 2`` for ``--epochs`` epochs
with validation after each one (a new train and val loader, so new loader workers, every
epoch), while ``--burners`` busy-looping processes compete for the cores. A run passes
when it exits 0 and every rank ran the planned number of steps; a run that has not ended
``--dist-timeout`` + 180 s after it started counts as hung, and its ``stacks/`` folder
(written by the trainer's hang watchdog) is listed. Prints one line per run and a
closing line; exits non-zero if any run failed. (10 runs of 3 epochs: ~10 minutes on 2
cores; ``tests/test_hang.py`` runs 2 of them in ``make test``.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.parquet_sets import write_data_set  # noqa: E402
from tests.procs import finish, start  # noqa: E402

ROW_GROUPS, ROWS_PER_GROUP, VAL_ROWS, BATCH = 8, 24, 48, 8
STEPS_PER_EPOCH = ROW_GROUPS * ROWS_PER_GROUP // (BATCH * 2)


def _burn() -> None:
    while True:
        pass


@contextlib.contextmanager
def cpu_burners(n: int) -> Iterator[None]:
    """``n`` processes that keep a core busy each until the block ends."""
    procs = [multiprocessing.get_context("spawn").Process(target=_burn, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.join()


def run_once(data: str, out: str, epochs: int, dist_timeout: float) -> tuple[bool, str]:
    """One 2-rank training run: (passed, what happened)."""
    proc = start("trainer.train", "--data", data, "--out", out, "--model", "resnet18", "--image-size", "32",
                 "--batch-size", str(BATCH), "--epochs", str(epochs), "--optimizer", "adamw", "--lr", "0.002",
                 "--workers", "2", "--dist-timeout", str(dist_timeout), "--no-progress", nproc=2)
    result = finish(proc, dist_timeout + 180)
    stacks = os.path.join(out, "stacks")
    dumped = f"; stacks: {stacks} ({', '.join(sorted(os.listdir(stacks)))})" if os.path.isdir(stacks) else ""
    if result is None:
        return False, f"hung: no exit after {dist_timeout + 180:.0f} s{dumped}"
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if "error:" in line and "error_file" not in line]
        return False, f"exit {result.returncode}: {' | '.join(said) or result.stderr.strip()[-300:]}{dumped}"
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    expected = [epochs * STEPS_PER_EPOCH] * 2
    if summary["rank_steps"] != expected or summary["val_count"] != VAL_ROWS:
        return False, f"rank steps {summary['rank_steps']} (expected {expected}), val count {summary['val_count']}"
    return True, f"ok: rank steps {summary['rank_steps']}{dumped}"


def soak(runs: int, epochs: int, burners: int, dist_timeout: float, work_dir: str) -> list[tuple[bool, str]]:
    """Run the training ``runs`` times under ``burners`` busy processes; print and return each result."""
    data = os.path.join(work_dir, "data")
    write_data_set(data, ROW_GROUPS, rows_per_group=ROWS_PER_GROUP, val_rows=VAL_ROWS)
    results = []
    with cpu_burners(burners):
        for i in range(runs):
            started = time.monotonic()
            good, why = run_once(data, os.path.join(work_dir, f"run{i}"), epochs, dist_timeout)
            results.append((good, why))
            print(f"run {i + 1}/{runs}  {time.monotonic() - started:6.1f} s  {why}", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--burners", type=int, default=2, help="busy-looping processes beside the training")
    p.add_argument("--dist-timeout", type=float, default=120.0)
    p.add_argument("--keep", help="keep the run folders here (default: a temp folder, removed)")
    a = p.parse_args()
    with contextlib.ExitStack() as stack:
        work = a.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="soak_"))
        results = soak(a.runs, a.epochs, a.burners, a.dist_timeout, work)
    passed = sum(good for good, _ in results)
    print(f"{passed} of {len(results)} runs passed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
