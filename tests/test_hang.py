"""Hangs: loader workers never forked from a threaded rank, a frozen worker explains
itself, and a short soak of the 2-rank training on an oversubscribed CPU."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

from data import make_eval_loader, make_train_loader
from data.workers import live_workers
from tests import soak
from tests.procs import ROOT, finish, start

# Batch 32: a ring message then holds 4 steps, so a worker stopped or killed a few steps in
# is needed again within ~20 steps (at batch 4 the ring held ~150 steps, ~30 s of training).
TINY = ["--model", "resnet18", "--image-size", "32", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.002",
        "--no-progress"]


def test_loader_workers_come_from_a_single_threaded_server_not_the_caller(seven_groups):
    # The caller has other threads (this one), as a training rank does; its workers must
    # not be forked from it.
    with make_train_loader(seven_groups[0], batch_size=4, image_size=32, workers=2) as batches:
        next(batches)
        workers = [psutil.Process(pid) for _, pid in live_workers()]
        assert len(workers) == 2
        server = {w.parent().pid for w in workers}
        assert len(server) == 1 and server != {os.getpid()}
        assert psutil.Process(server.pop()).num_threads() == 1
    with make_eval_loader(seven_groups[0], batch_size=4, image_size=32, workers=2) as batches:
        assert sum(len(labels) for _, labels in batches) == seven_groups[1].splits["val"].rows


UNGUARDED = """
import sys
from data import make_eval_loader
print("body", flush=True)
with make_eval_loader(sys.argv[1], batch_size=4, image_size=32, workers=2) as batches:
    print("rows", sum(len(labels) for _, labels in batches))
"""


def test_a_script_without_a_main_guard_runs_once(seven_groups, tmp_path):
    # Workers start spawn-style but must not re-run the caller's script.
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    result = subprocess.run([sys.executable, str(script), seven_groups[0]], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["body", "rows", str(seven_groups[1].splits["val"].rows)]


def rank_workers(proc, rank: int) -> list[psutil.Process]:
    """The live loader workers of ``rank`` under a torchrun ``proc`` (children of its fork server)."""
    for child in psutil.Process(proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank):
                return [w for server in child.children() if "forkserver" in " ".join(server.cmdline())
                        for w in server.children()]
    return []


def test_a_frozen_loader_worker_leaves_stacks_and_a_line_naming_it(seven_groups, tmp_path):
    out = str(tmp_path / "run")
    proc = start("trainer.train", *TINY, "--data", seven_groups[0], "--out", out, "--epochs", "1",
                 "--steps-per-epoch", "400", "--workers", "2", "--dist-timeout", "40", "--stacks-after", "5",
                 "--log-every", "1", nproc=2)
    frozen = None
    deadline = time.monotonic() + 240
    while frozen is None and time.monotonic() < deadline and proc.poll() is None:
        workers = rank_workers(proc, 1)
        if len(workers) == 2:
            time.sleep(2)  # a few steps in
            frozen = workers[0]
            frozen.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
    try:
        assert frozen is not None, "training never started"
        proc.wait(timeout=240)  # the stopped worker holds the output pipes open: wait for the exit alone
    finally:
        if frozen is not None:
            with contextlib.suppress(psutil.Error):
                frozen.kill()
    result = finish(proc, 30)
    assert result is not None, "the job did not end"
    assert result.returncode != 0
    stacks = os.path.join(out, "stacks")
    rank1 = open(os.path.join(stacks, "rank1.txt")).read()
    assert f"(pid {frozen.pid}): state T" in rank1 and "STOPPED" in rank1
    assert "_next_data" in rank1 or "_get_data" in rank1  # the prefetch thread waits for that worker's batch
    assert f"[rank 1] warning: no progress for" in result.stderr and "stacks/rank1.txt" in result.stderr
    # The other worker of rank 1 dumped its own stacks (faulthandler, on SIGUSR1).
    others = [f for f in os.listdir(stacks) if f.startswith("rank1-worker")]
    assert others and any("File " in open(os.path.join(stacks, f)).read() for f in others)
    # Rank 1 ended the frozen worker at --stacks-after, not at --dist-timeout, and says so in one line.
    error = [line for line in result.stderr.splitlines() if "[rank 1] error:" in line]
    assert len(error) == 1, result.stderr
    assert f"rank 1: loader worker " in error[0] and f"(pid {frozen.pid}) froze: it delivered nothing for" in error[0]
    assert "--stacks-after 5; state T (stopped)" in error[0] and stacks in error[0]
    assert "Traceback" not in "\n".join(line for line in result.stderr.splitlines() if "[rank 1]" in line)


def test_a_killed_loader_worker_is_one_line_naming_it_and_its_memory(seven_groups, tmp_path):
    """The OOM killer's SIGKILL, as a user sees it: no DataLoader traceback."""
    out = str(tmp_path / "run")
    proc = start("trainer.train", *TINY, "--data", seven_groups[0], "--out", out, "--epochs", "1",
                 "--steps-per-epoch", "400", "--workers", "2", "--log-every", "1")
    killed, deadline = None, time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        workers = [w for server in psutil.Process(proc.pid).children() if "forkserver" in " ".join(server.cmdline())
                   for w in server.children()]
        if len(workers) == 2:
            time.sleep(3)  # a few steps in: the rank has sampled the workers' memory
            killed = workers[1]
            killed.kill()
        time.sleep(0.5)
    assert killed is not None, "training never started"
    result = finish(proc, 240)
    assert result is not None, "the run did not end"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: rank 0: loader worker ") and f"(pid {killed.pid}) was killed by SIGKILL " \
        "(the kernel's OOM killer, most likely, or kill -9); its memory: " in lines[0], lines[0]
    assert " MiB resident when last seen; Python stacks: " in lines[0]
    assert os.path.isfile(os.path.join(out, "stacks", "rank0.txt"))


def test_soak_run_under_a_cpu_burner(tmp_path):
    # One run of the soak (3 validations under 2 busy loops) keeps the tool itself working;
    # `python tests/soak.py` runs 10 of them for the rare hang.
    results = soak.soak(runs=1, epochs=3, burners=2, dist_timeout=120, work_dir=str(tmp_path))
    assert [good for good, _ in results] == [True], results
