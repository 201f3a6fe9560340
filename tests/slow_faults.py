"""Slow faults, outside ``make test`` (they wait out a stalled store or start a Spark cluster):

    .venv/bin/python -m pytest tests/slow_faults.py        # ~8 minutes on 2 cores

- the S3 server (moto) stopped for 30 s mid-training: the run goes on with the same steps
  and images as an undisturbed one (reads retried, data.object_store);
- the S3 server stopped for good: the run ends with one line naming the object, past the
  stated limit (data.object_store.STALL_LIMIT_S), not at --dist-timeout;
- a Spark worker killed during ``launch.spark --cluster`` training: one line naming the
  lost rank and the checkpoint to resume from.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
import pytest
import torch

from tests.procs import completed, ok, start, summary_of
from trainer import checkpoint as ckpt

BUCKET = "sparkdp-slow"
RUN = ["--model", "shufflenet_v2_x0_5", "--image-size", "32", "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.01",
       "--seed", "3", "--no-progress", "--workers", "1", "--epochs", "2", "--steps-per-epoch", "20",
       "--ckpt-every", "2", "--log-every", "5"]


@pytest.fixture(scope="module")
def s3_data(s3_server, seven_groups):
    return s3_server.upload(seven_groups[0], BUCKET, "sets/seven_groups")


@pytest.fixture
def aws(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)


@contextlib.contextmanager
def stopped(proc):
    """The S3 server frozen (SIGSTOP), as a store that stops answering; resumed at the end."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def wait_for(path: str, proc) -> None:
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, completed(proc).stderr[-3000:]
        time.sleep(0.2)


def last_weights(out: str) -> dict:
    return ckpt.load_checkpoint(os.path.join(ckpt.checkpoint_dir(out), ckpt.LAST))[ckpt.MODEL]


def test_a_store_stopped_for_30_s_costs_time_only(s3_server, s3_data, aws, tmp_path):
    plain, stalled = str(tmp_path / "plain"), str(tmp_path / "stalled")
    ok(completed(start("trainer.train", "--data", s3_data, "--out", plain, *RUN)))
    proc = start("trainer.train", "--data", s3_data, "--out", stalled, *RUN)
    wait_for(os.path.join(ckpt.checkpoint_dir(stalled), ckpt.LAST), proc)
    with stopped(s3_server.proc):
        time.sleep(30)
        assert proc.poll() is None  # the run was still going while the store was away
    result = ok(completed(proc))
    assert summary_of(stalled)["steps"] == summary_of(plain)["steps"] == 40
    a, b = last_weights(plain), last_weights(stalled)
    assert all(torch.equal(a[k], b[k]) for k in a), "the stalled run trained on other images"
    assert "Traceback" not in result.stderr


def test_a_store_gone_for_good_ends_the_run_in_one_line_naming_the_object(s3_server, s3_data, aws, tmp_path):
    out = str(tmp_path / "run")
    proc = start("trainer.train", "--data", s3_data, "--out", out, *RUN, "--epochs", "50")
    wait_for(os.path.join(ckpt.checkpoint_dir(out), ckpt.LAST), proc)
    with stopped(s3_server.proc):
        result = completed(proc)  # well before the 300 s hang limit: the limit is 90 s of failures
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot read {s3_data}/"), lines[0]
    assert "the object store did not answer for " in lines[0] and "(retried for 90 s;" in lines[0]
    assert ckpt.load_resume(out, "auto")[0] is not None  # a checkpoint to go on from


def rank_processes(cluster) -> dict[int, tuple]:
    """{rank: (its Spark worker, its process)} of the trainer ranks running on the cluster."""
    found = {}
    for worker in cluster.workers:
        for pid in cluster.executor_pids(worker):
            for p in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    env = p.environ()
                    if "LOCAL_RANK" in env:  # a process torchrun started
                        found.setdefault(int(env["RANK"]), (worker, p))
    return found


def test_a_worker_lost_during_cluster_training_names_the_rank_and_the_checkpoint(spark_cluster, seven_groups,
                                                                                  tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_DRIVER_MEMORY", "1g")
    out = str(tmp_path / "run")
    proc = start("launch.spark", "--cluster", "--num-processes", "2", "--master", spark_cluster.url, "--",
                 "--data", seven_groups[0], "--out", out, *RUN, "--workers", "0", "--epochs", "50",
                 "--dist-timeout", "60")
    wait_for(os.path.join(ckpt.checkpoint_dir(out), ckpt.LAST), proc)
    ranks = rank_processes(spark_cluster)
    assert 1 in ranks, ranks
    victim = ranks[1][0]
    spark_cluster.kill_worker(victim)
    try:
        result = completed(proc)
    finally:
        spark_cluster.workers.remove(victim)
        spark_cluster.start_worker()  # two workers again for later tests
        for _, rank in ranks.values():  # a rank Spark's task kill orphaned would wait out --dist-timeout
            with contextlib.suppress(psutil.Error):
                rank.kill()
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(error) == 1, result.stderr[-5000:]
    assert error[0].startswith("error: training stopped: Spark lost rank 1 ("), error[0]
    path, state, _ = ckpt.load_resume(out, "auto")
    assert error[0].endswith(f"rerun the same command with --resume auto to continue from {path} "
                             f"(step {state[ckpt.PROGRESS]['step']})"), error[0]
