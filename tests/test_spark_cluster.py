"""The project on a real standalone Spark cluster (a master and two 1-core workers on 127.0.0.1,
the ``spark_cluster`` fixture): conversion (and conversion that loses a worker midway),
TorchDistributor in cluster mode (the trainer and a custom loop script), batch prediction, and
batch prediction that loses a worker midway. (Losing a worker during training:
``tests/slow_faults.py``.)

Each command runs as its own process, the driver of a Spark application on the cluster
(the test process already holds the local[2] session of the other tests).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time

import pyarrow.parquet as pq
import pytest

from tests.procs import ROOT, completed, ok, run, start, summary_of
from tests.spark_cluster import children
from tests.sample_images import BROKEN, image_folder

RUN_ID = re.compile(r"-[0-9a-f]{8}(?=\.parquet$)")  # a data file's name: part-NNNNN-<conversion run>.parquet
SMALL_TRAIN = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
               "--steps-per-epoch", "2", "--workers", "0", "--no-progress", "--dist-timeout", "120"]


@pytest.fixture(autouse=True)
def small_drivers(monkeypatch):
    """Drivers (the commands under test) keep to 1 GiB: the machine is small."""
    monkeypatch.setenv("SPARK_DRIVER_MEMORY", "1g")


def test_convert_on_the_cluster_gives_the_local_splits(spark_cluster, one_group, tmp_path):
    data, manifest = one_group
    images = os.path.join(os.path.dirname(data), "images")
    out = str(tmp_path / "converted")
    ok(run("data.convert", "--images", images, "--out", out, "--seed", "7", "--files-per-split", "1",
           "--master", spark_cluster.url, "--no-progress"))
    with open(os.path.join(out, "manifest.json")) as f:
        on_cluster = json.load(f)
    assert on_cluster["classes"] == manifest.classes
    for name, split in manifest.splits.items():
        assert on_cluster["splits"][name]["rows"] == split.rows
        assert on_cluster["splits"][name]["per_class"] == split.per_class
    local_paths = sorted(pq.read_table(os.path.join(data, "val"), columns=["path"]).column("path").to_pylist())
    assert sorted(pq.read_table(os.path.join(out, "val"), columns=["path"]).column("path").to_pylist()) == local_paths


@contextlib.contextmanager
def worker_lost_midway(cluster, proc):
    """SIGKILL the first worker and its executor once a Python task runs there (while the
    application ``proc`` runs); after the block, a fresh worker for later tests."""
    victim = cluster.workers[0]
    deadline = time.monotonic() + 240
    while not any(children(pid) for pid in cluster.executor_pids(victim)):  # a Python worker started
        assert proc.poll() is None, completed(proc).stderr[-3000:]
        assert time.monotonic() < deadline, "no Python task started on the first worker"
        time.sleep(0.2)
    cluster.kill_worker(victim)
    try:
        yield
    finally:
        cluster.workers.remove(victim)
        cluster.start_worker()  # the cluster has two workers again


def split_files(data: str) -> dict[str, bytes]:
    """Every Parquet file of a converted data set, by relative path less its run id: its bytes."""
    found = {}
    for split in ("train", "val", "test"):
        for name in sorted(os.listdir(os.path.join(data, split))):
            with open(os.path.join(data, split, name), "rb") as f:
                found[f"{split}/{RUN_ID.sub('', name)}"] = f.read()
    return found


def test_a_worker_lost_during_conversion_publishes_the_same_bytes(spark_cluster, one_group, tmp_path):
    """SIGKILL a worker and its executor once its first Python task runs: Spark reruns the
    lost tasks, and the data set holds the same files, byte for byte, as the undisturbed
    local conversion (no duplicate or missing rows)."""
    data, manifest = one_group
    out = str(tmp_path / "converted")
    proc = start("data.convert", "--images", os.path.join(os.path.dirname(data), "images"), "--out", out,
                 "--seed", "7", "--files-per-split", "1", "--master", spark_cluster.url, "--no-progress")
    with worker_lost_midway(spark_cluster, proc):
        ok(completed(proc))
    assert split_files(out) == split_files(data)
    with open(os.path.join(out, "manifest.json")) as f:
        on_cluster = json.load(f)
    assert {k: on_cluster["splits"][k]["rows"] for k in manifest.splits} == \
        {k: s.rows for k, s in manifest.splits.items()}


def test_trainer_runs_as_two_spark_tasks_in_cluster_mode(spark_cluster, one_group, s3_server, tmp_path,
                                                        monkeypatch):
    """From an s3:// data set: the executors never saw the AWS variables; the driver hands them over."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    url = s3_server.upload(one_group[0], "sparkdp-cluster", "one_group")
    out = str(tmp_path / "run")
    ok(run("launch.spark", "--cluster", "--num-processes", "2", "--master", spark_cluster.url, "--",
           "--data", url, "--out", out, *SMALL_TRAIN))
    summary = summary_of(out)
    assert summary["world_size"] == 2 and summary["rank_steps"] == [2, 2]
    assert summary["mlflow_model_uri"]


def test_custom_loop_script_in_cluster_mode(spark_cluster, one_group, tmp_path):
    out = str(tmp_path / "custom")
    result = ok(run("launch.spark", "--cluster", "--num-processes", "2", "--master", spark_cluster.url,
                    "--script", os.path.join(ROOT, "examples", "custom_loop.py"), "--",
                    "--data", one_group[0], "--out", out, "--epochs", "1", "--steps-per-epoch", "2",
                    "--batch-size", "8", "--image-size", "32", "--workers", "0"))
    assert "custom_loop.py: done on 2 process(es)" in result.stdout
    assert os.path.isfile(os.path.join(out, "checkpoints", "last.pt"))


def test_batch_predict_on_the_cluster(spark_cluster, trained_run, tmp_path):
    data, run_dir, _ = trained_run
    folder = str(tmp_path / "images")
    files = image_folder(data, folder)
    out = str(tmp_path / "predictions")
    result = ok(run("launch.batch_predict", "--model", os.path.join(run_dir, "checkpoints", "best.pt"),
                    "--input", folder, "--out", out, "--master", spark_cluster.url, "--batch-size", "4"))
    assert f"{len(files)} images ({len(BROKEN)} unreadable)" in result.stdout
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["path"] for r in rows) == files
    assert {r["path"] for r in rows if r["error"]} == set(BROKEN)


def test_a_worker_lost_during_batch_prediction_loses_no_rows(spark_cluster, trained_run, tmp_path):
    """SIGKILL a worker and its executor once its first Python task runs: Spark reruns the lost
    tasks on the other worker and the output still holds every image exactly once."""
    data, run_dir, _ = trained_run
    folder = str(tmp_path / "images")
    files = image_folder(data, folder, per_class=20)
    out = str(tmp_path / "predictions")
    proc = start("launch.batch_predict", "--model", os.path.join(run_dir, "checkpoints", "best.pt"),
                 "--input", folder, "--out", out, "--master", spark_cluster.url, "--batch-size", "2",
                 "--partitions", "6")
    with worker_lost_midway(spark_cluster, proc):
        result = ok(completed(proc))
    assert f"{len(files)} images ({len(BROKEN)} unreadable)" in result.stdout
    paths = [r["path"] for r in pq.read_table(out, columns=["path"]).to_pylist()]
    assert sorted(paths) == files  # every image, none twice
    shutil.rmtree(folder)
