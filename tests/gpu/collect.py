"""The GPU check's one JSON: ``python -m tests.gpu.collect --out FILE --command CMD [--pytest LOG] [RUN=JSON ...]``.

``tests/gpu/run.sh`` calls it after each step, so a check cut short still leaves what it
measured. ``RUN=JSON`` names a ``python -m bench --train-step`` result: ``bf16`` (the
default precision, gpu and cpu decode), ``fp16`` (loss scaling) and ``compile``
(``--compile``). Written: the machine, the command, the date, the GPU tests' summary line,
each run whole, and the ratios the issue asks for (null where a run is missing):

* ``gpu_decode``: ``--decode gpu`` training rate / synthetic-input rate, and its data wait
  (goal: >= 0.95x, <= 5%);
* ``cpu_decode``: the same with ``--decode cpu`` and the same loader workers;
* ``compiled_ceiling``: the synthetic rate with ``--compile`` / without it (one run);
* ``gpu_decode_vs_compiled_ceiling``: ``--decode gpu`` with ``--compile`` / compiled synthetic;
* ``fp16_gpu_decode``: ``--decode gpu`` / synthetic, both fp16 with loss scaling;
* ``fp16_vs_bf16_ceiling``: fp16 synthetic / bf16 synthetic (two runs of the same check).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re

from bench.report import TRAIN_GOAL


def _steps(runs: dict, run: str) -> dict:
    return runs.get(run, {}).get("train_step", {}).get("paths", {})


def _row(runs: dict, run: str, path: str) -> dict | None:
    row = _steps(runs, run).get(path)
    if row is None:
        return None
    return {"ratio": row["ratio_to_synthetic"], "data_wait": row["data_wait_fraction"],
            "images_per_s": row["images_per_s"], "meets_goal": row.get("meets_goal")}


def _rate_ratio(runs: dict, a: tuple[str, str], b: tuple[str, str]) -> float | None:
    top, bottom = _steps(runs, a[0]).get(a[1]), _steps(runs, b[0]).get(b[1])
    return round(top["images_per_s"] / bottom["images_per_s"], 3) if top and bottom else None


def ratios(runs: dict) -> dict:
    """The issue's ratios from the runs present (see the module docstring)."""
    return {"goal": {"ratio_at_least": TRAIN_GOAL[0], "data_wait_at_most": TRAIN_GOAL[1]},
            "gpu_decode": _row(runs, "bf16", "project_gpu_decode"),
            "cpu_decode": _row(runs, "bf16", "project"),
            "compiled_ceiling": _rate_ratio(runs, ("compile", "synthetic"), ("compile", "synthetic_eager")),
            "gpu_decode_vs_compiled_ceiling": _row(runs, "compile", "project_gpu_decode"),
            "fp16_gpu_decode": _row(runs, "fp16", "project_gpu_decode"),
            "fp16_vs_bf16_ceiling": _rate_ratio(runs, ("fp16", "synthetic"), ("bf16", "synthetic"))}


def tests_summary(log: str | None) -> str | None:
    """pytest's last summary line ("3 passed, 1 skipped in 40.1s"), if the log has one."""
    if not log or not os.path.isfile(log):
        return None
    with open(log, errors="replace") as f:
        lines = [line.strip("= \n") for line in f if re.search(r"\d+ (passed|failed|error)", line)]
    return lines[-1] if lines else None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.collect", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--pytest")
    p.add_argument("runs", nargs="*", metavar="RUN=JSON")
    a = p.parse_args(argv)
    runs = {}
    for item in a.runs:
        name, path = item.split("=", 1)
        if os.path.isfile(path):
            with open(path) as f:
                runs[name] = json.load(f)
    machine = next((r["machine"] for r in runs.values()), {})
    result = {"machine": machine, "command": a.command, "date": datetime.date.today().isoformat(),
              "tests": tests_summary(a.pytest), "ratios": ratios(runs), "runs": runs}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    print(json.dumps(main()["ratios"], indent=1))
