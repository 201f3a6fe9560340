"""The slow half of the fault suite: the sharding matrix under real torchrun.

    .venv/bin/python tests/fault_suite.py [--quick] [--timeout 180]

For world sizes 1-4 x loader workers 0-2 x train splits of 1-8 Parquet row groups, it
trains 2 steps per epoch for 2 epochs with ``torchrun --nproc-per-node W`` (gloo, CPU; W=1 a plain process)
and checks every rank ran the same number of steps (summary.json ``rank_steps``) and
validation counted every val image once. A run that does not end within ``--timeout``
seconds is a hang and fails. ``--quick`` runs row-group counts 1, 2 and 8 only.
Prints a table and exits non-zero if any combination failed. (96 runs: ~25 minutes on
2 cores; the fast half, ``tests/test_faults.py``, runs with ``make test``.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.parquet_sets import write_data_set  # noqa: E402
from tests.procs import finish, start  # noqa: E402

TRAIN = ["--model", "resnet18", "--image-size", "16", "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "2",
         "--no-progress", "--dist-timeout", "60", "--optimizer", "adamw", "--lr", "0.001"]


def run_one(data: str, out: str, world: int, workers: int, timeout: float) -> tuple[bool, str]:
    proc = start("trainer.train", "--data", data, "--out", out, "--workers", str(workers), *TRAIN, nproc=world)
    result = finish(proc, timeout)
    if result is None:
        return False, f"hang: no exit after {timeout:.0f} s"
    err = result.stderr
    if result.returncode != 0:
        # The ranks' own one-line errors say what happened; torchrun's report after them does not.
        said = [line for line in err.splitlines() if "error:" in line and "error_file" not in line]
        return False, f"exit {result.returncode}: " + (" | ".join(said) or err.strip()[-300:])
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    if summary["rank_steps"] != [4] * world:
        return False, f"rank steps {summary['rank_steps']}"
    if summary["val_count"] != 12:
        return False, f"val count {summary['val_count']} (expected 12)"
    return True, "ok"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="row-group counts 1, 2 and 8 only")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a run counts as hung")
    a = p.parse_args()
    groups = (1, 2, 8) if a.quick else range(1, 9)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="fault_suite_") as tmp:
        print(f"{'row groups':>10} {'world':>5} {'workers':>7} {'seconds':>7}  result", flush=True)
        for rg in groups:
            data = os.path.join(tmp, f"rg{rg}")
            write_data_set(data, rg, rows_per_group=12 if rg > 1 else 24)
            for world in range(1, 5):
                for workers in range(3):
                    started = time.monotonic()
                    out = os.path.join(tmp, f"run_{rg}_{world}_{workers}")
                    good, why = run_one(data, out, world, workers, a.timeout)
                    failures += not good
                    shutil.rmtree(out, ignore_errors=True)  # 96 runs' checkpoints would fill a small disk
                    print(f"{rg:>10} {world:>5} {workers:>7} {time.monotonic() - started:>7.1f}  {why}", flush=True)
    print(f"{failures} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
