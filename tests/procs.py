"""Run the project's programs as real processes for tests and scripts, and end them if they hang.

``start``/``finish`` serve scripts too (``tests/fault_suite.py``: ``finish`` returns None
on a hang); ``run``/``completed`` fail the calling test instead, and ``ok``,
``one_error_line`` and ``summary_of`` check what a finished process left behind;
``tiny_disk`` mounts a small tmpfs for full-disk tests.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # seconds before a trainer process counts as hung


def start(module: str, *args: str, nproc: int = 1, restarts: int | None = None) -> subprocess.Popen:
    """``python -m module`` (nproc 1) or ``torchrun --standalone --nproc-per-node nproc -m module``,
    in its own session (so a hang can be killed with all its children), one thread per process."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
        *(["--max-restarts", str(restarts)] if restarts is not None else [])]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([*launcher, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess | None:
    """Wait for ``proc``; None if it ran past ``timeout`` (a hang: it is killed, children too)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.hung_output = proc.communicate()  # what it printed before it was killed, for the report
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def completed(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """:func:`finish` in a test: a hang fails the test."""
    result = finish(proc, timeout)
    if result is None:
        out, err = proc.hung_output
        pytest.fail(f"no exit after {timeout} s (a hang?): {' '.join(proc.args)}\n--- stdout tail\n{out[-3000:]}"
                    f"\n--- stderr tail\n{err[-5000:]}")
    return result


def run(module: str, *args: str, nproc: int = 1, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m module`` (nproc 1) or ``torchrun --nproc-per-node nproc -m module``; a hang fails the test."""
    return completed(start(module, *args, nproc=nproc), timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert exit 0, showing the output tails otherwise."""
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """Assert exit 2 with a single ``error: ...`` line on stderr and no traceback; return it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def summary_of(out: str) -> dict:
    """The ``summary.json`` a training run wrote into ``out``."""
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@contextlib.contextmanager
def tiny_disk(path: str, size: str):
    """A tmpfs of ``size`` at ``path`` (root only: skipped elsewhere)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        for _ in range(25):  # Spark's JVM may hold a file for a moment
            if subprocess.run(["umount", path], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:  # still held (the shared Spark session keeps a handle): detach it anyway
            subprocess.run(["umount", "-l", path], capture_output=True)


def resize_disk(path: str, size: str) -> None:
    """Grow (or shrink) a :func:`tiny_disk` in place: the disk freed, as a user would."""
    subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True, capture_output=True)
