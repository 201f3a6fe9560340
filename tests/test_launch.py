"""The launchers: TorchDistributor (launch.spark), torchrun on two "nodes" (launch/torchrun.sh),
and the data URLs they hand the trainer. Real Spark local mode, real torchrun, gloo on CPU.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.errors import UserError
from data.manifest import Manifest, SplitInfo
from data.synthetic import make_image
from launch import spark as launch_spark
from tests.procs import ROOT

TORCHRUN_SH = os.path.join(ROOT, "launch", "torchrun.sh")
CLASSES = 3
TRAIN_ROWS, VAL_ROWS = 96, 30
BATCH = 8
# 2 ranks x batch 8 over 96 rows: 6 steps per epoch.
TRAIN_ARGS = ["--model", "resnet18", "--image-size", "32", "--batch-size", str(BATCH), "--epochs", "1",
              "--workers", "0", "--no-progress", "--dist-timeout", "120"]


def _write_split(folder: str, rows: int, files: int, rng: np.random.Generator) -> SplitInfo:
    os.makedirs(folder)
    labels = [i % CLASSES for i in range(rows)]
    images = []
    for k in labels:
        buf = io.BytesIO()
        make_image(k, CLASSES, 64, 48, rng).save(buf, "JPEG")
        images.append(buf.getvalue())
    per_file = -(-rows // files)
    for f in range(files):
        part = slice(f * per_file, (f + 1) * per_file)
        table = pa.table({"image": pa.array(images[part], pa.binary()), "label": pa.array(labels[part], pa.int64()),
                          "path": [f"class_{k}/{os.path.basename(folder)}_{i}.jpg"
                                   for i, k in enumerate(labels)][part]})
        pq.write_table(table, os.path.join(folder, f"part-{f}.parquet"), row_group_size=8)
    return SplitInfo(rows=rows, per_class=[labels.count(k) for k in range(CLASSES)],
                     paths=[f"{os.path.basename(folder)}/part-{f}.parquet" for f in range(files)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A data set as data.convert writes it (Parquet splits + manifest), written with pyarrow directly."""
    out = str(tmp_path_factory.mktemp("launch_data"))
    rng = np.random.default_rng(0)
    splits = {"train": _write_split(os.path.join(out, "train"), TRAIN_ROWS, 3, rng),
              "val": _write_split(os.path.join(out, "val"), VAL_ROWS, 2, rng)}
    Manifest(classes=[f"class_{k}" for k in range(CLASSES)], splits=splits, options={"seed": 1}).save(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_job_of_two(summary: dict) -> None:
    assert summary["world_size"] == 2
    assert summary["steps"] == summary["steps_per_epoch"] == TRAIN_ROWS // (BATCH * 2)
    assert summary["val_count"] == VAL_ROWS  # every val image once across the two ranks
    assert os.path.isfile(os.path.join(summary["run_dir"], "checkpoints", "last.pt"))


# --- TorchDistributor -------------------------------------------------------------------

def test_torch_distributor_local_mode_trains_two_ranks(spark, dataset, tmp_path):
    """The shared local[2] session suffices: local mode starts its ranks on the driver."""
    run_dir = str(tmp_path / "run")
    summary = launch_spark.run(["--data", dataset, "--out", run_dir, *TRAIN_ARGS], num_processes=2)
    _assert_one_job_of_two(summary)
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f) == summary  # rank 0's own summary, not another rank's None
    assert summary["mlflow_run_id"]


def test_torch_distributor_user_error_is_one_line(spark, tmp_path):
    with pytest.raises(UserError, match=r"^data folder not found: .*nowhere$"):
        launch_spark.run(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *TRAIN_ARGS],
                         num_processes=2)


def test_use_gpu_without_spark_gpus_is_a_user_error(spark, dataset, tmp_path):
    with pytest.raises(UserError, match="spark.driver.resource.gpu.amount"):
        launch_spark.run(["--data", dataset, "--out", str(tmp_path / "run")], num_processes=1, use_gpu=True)
    with pytest.raises(UserError, match="spark.task.resource.gpu.amount"):
        launch_spark.run(["--data", dataset, "--out", str(tmp_path / "run")], local_mode=False, use_gpu=True)


def test_cli_rejects_bad_trainer_args_before_starting_spark(tmp_path):
    with pytest.raises(UserError, match="no trainer arguments"):
        launch_spark.main(["--num-processes", "2"])
    with pytest.raises(UserError, match="trainer arguments rejected"):
        launch_spark.main(["--num-processes", "2", "--", "--data", str(tmp_path)])  # no --out


def test_trainer_config_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = launch_spark.trainer_config(["--data", "d", "--out", "r"])
    assert (cfg.data, cfg.out) == (str(tmp_path / "d"), str(tmp_path / "r"))
    assert launch_spark.trainer_config(["--data", "s3a://b/d", "--out", "r"]).data == "s3a://b/d"


# --- torchrun ---------------------------------------------------------------------------

def _run_sh(env: dict, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", TORCHRUN_SH, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_torchrun_sh_builds_single_and_multi_node_commands():
    single = _run_sh({"DRY_RUN": "1", "NPROC": "3"}, "--data", "d", "--out", "r").stdout
    assert "--nproc-per-node 3 --max-restarts 2 --standalone" in single
    assert single.rstrip().endswith("-m trainer.train --data d --out r --resume auto")
    static = _run_sh({"DRY_RUN": "1", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0", "MAX_RESTARTS": "0"},
                     "--data", "d", "--resume", "best.pt").stdout
    assert "--max-restarts 0 --nnodes 2 --node-rank 1 --master-addr node0 --master-port 29500" in static
    assert "--resume auto" not in static
    missing = _run_sh({"DRY_RUN": "1", "NNODES": "2"}, "--data", "d")
    assert missing.returncode == 2 and "NODE_RANK" in missing.stderr


def test_two_torchrun_nodes_with_c10d_rendezvous_make_one_job(dataset, tmp_path):
    """Two launches of launch/torchrun.sh (one rank each) on 127.0.0.1 train as one world of 2."""
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "NNODES": "2", "NPROC": "1", "RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}",
           "RDZV_ID": "test-two-nodes"}
    cmd = ["bash", TORCHRUN_SH, "--data", "file://" + dataset, "--out", run_dir, *TRAIN_ARGS]
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(outputs)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    _assert_one_job_of_two(summary)
    assert sum(out.count("training resnet18 on 96 images") for out in outputs) == 1  # one rank 0


# --- data URLs --------------------------------------------------------------------------

def test_manifest_and_split_read_from_file_url(dataset):
    from data.loader import open_split
    from data.manifest import arrow_url

    url = "file://" + dataset
    assert Manifest.load(url).to_dict() == Manifest.load(dataset).to_dict()
    parquet = open_split(url, "train")
    assert (parquet.rows, parquet.row_groups) == (TRAIN_ROWS, TRAIN_ROWS // 8)
    assert arrow_url("s3a://bucket/x") == "s3://bucket/x" and arrow_url("hdfs://nn/x") == "hdfs://nn/x"


def test_missing_data_url_is_one_plain_line(tmp_path):
    with pytest.raises(UserError, match=r"^data folder not found: file://.*/nowhere$"):
        Manifest.load("file://" + str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"manifest.json not found: is file://"):
        Manifest.load("file://" + str(tmp_path))


# --- custom loops through TorchDistributor ------------------------------------------------

def _ranks_meet(scale: int, *, tag: str) -> dict:
    """A training function as a notebook would define it: joins the group, all-reduces."""
    import torch

    from trainer import all_reduce_sum, compute_cleanup, compute_init

    dist = compute_init()
    try:
        if tag == "fail":
            raise UserError("no data here")
        total = all_reduce_sum(torch.tensor([float(dist.rank)], dtype=torch.float64))
        return {"world_size": dist.world_size, "rank_sum": int(total[0]), "scale": scale, "tag": tag}
    finally:
        compute_cleanup()


@pytest.fixture
def by_value():
    """Functions of this module travel by value, as a notebook's do (the ranks cannot import it)."""
    import sys

    from pyspark import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def test_a_function_runs_on_every_rank_and_rank_0_returns(spark, by_value):
    value = launch_spark.run(_ranks_meet, 3, num_processes=2, tag="x")
    assert value == {"world_size": 2, "rank_sum": 1, "scale": 3, "tag": "x"}
    with pytest.raises(UserError, match="^no data here$"):
        launch_spark.run(_ranks_meet, 3, num_processes=2, tag="fail")


def test_a_custom_loop_script_runs_in_local_mode(spark, dataset, tmp_path, capsys):
    out = str(tmp_path / "custom")
    script = os.path.join(ROOT, "examples", "custom_loop.py")
    launch_spark.main(["--num-processes", "2", "--script", script, "--", "--data", dataset, "--out", out,
                       "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--image-size", "32",
                       "--workers", "0"])
    assert "custom_loop.py: done on 2 process(es)" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "checkpoints", "last.pt"))
    with pytest.raises(UserError, match="custom_loop.py exited with status 2"):  # argparse: --data missing
        launch_spark.run(script, "--out", out, num_processes=1)
