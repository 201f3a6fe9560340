"""`make demo` (``python -m launch.demo``), shrunk: every step runs, and its output, read as
a log (not a terminal), carries no warning and no redrawn bar."""
from __future__ import annotations

import json
import os

from tests.procs import ok, run


def test_the_demo_runs_every_step_and_prints_no_warnings_or_bar_frames(tmp_path):
    out = str(tmp_path / "demo")
    result = ok(run("launch.demo", "--out", out, "--classes", "2", "--per-class", "30", "--epochs", "1",
                    "--steps-per-epoch", "3", timeout=600))
    log = result.stdout + result.stderr
    assert "== demo finished" in result.stdout and "MLflow run:" in result.stdout
    lines = [line for line in log.splitlines() if "warn" in line.lower()]
    assert not lines, lines
    assert "\r" not in log
    with open(os.path.join(out, "run", "summary.json")) as f:
        assert json.load(f)["steps"] == 3
    with open(os.path.join(out, "run", "test_metrics.json")) as f:
        assert json.load(f)["count"] > 0
