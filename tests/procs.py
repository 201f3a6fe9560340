"""Start trainer processes for tests and scripts, and end them if they hang."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
