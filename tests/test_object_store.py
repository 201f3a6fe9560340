"""Training, evaluation and the benchmark read a converted data set from a real S3 API server.

The server (moto, :mod:`tests.s3_server`) runs on 127.0.0.1 and checks credentials; the
data set is uploaded with boto3. Processes find it through the standard AWS variables
only (key, secret, region, ``AWS_ENDPOINT_URL``), as they would find MinIO or AWS.
"""
from __future__ import annotations

import os

import pytest

from data.errors import cli
from tests.conftest import TRAIN_SMALL
from tests.procs import ok, run, summary_of

BUCKET = "sparkdp-test"


@pytest.fixture(scope="module")
def s3_data(s3_server, seven_groups):
    """``(s3 URL, manifest)`` of the seven-row-group set, uploaded once."""
    return s3_server.upload(seven_groups[0], BUCKET, "sets/seven_groups"), seven_groups[1]


@pytest.fixture
def aws(s3_server, monkeypatch):
    """This process's (and its children's) AWS variables point at the server."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server.env


def test_two_ranks_train_and_evaluate_from_s3(s3_data, aws, tmp_path):
    from trainer.evaluate import main as evaluate_main

    url, manifest = s3_data
    out = str(tmp_path / "run")
    # One loader worker per rank: the workers (from each rank's fork server) read S3 too.
    args = [*TRAIN_SMALL, "--workers", "1", "--steps-per-epoch", "2"]
    ok(run("trainer.train", "--data", url, "--out", out, *args, nproc=2))
    summary = summary_of(out)
    assert summary["rank_steps"] == [2, 2] and summary["val_count"] == manifest.splits["val"].rows
    # The last checkpoint scored again from S3, in Spark's s3a:// spelling: validation's numbers.
    res = evaluate_main(["--checkpoint", os.path.join(out, "checkpoints", "last.pt"), "--split", "val",
                         "--data", url.replace("s3://", "s3a://"), "--workers", "1", "--json", str(tmp_path / "e.json")])
    assert res["count"] == summary["val_count"] and res["data"].startswith("s3a://")
    assert res["top1"] == summary["val_top1"] and res["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)


@pytest.mark.parametrize("case", ["wrong credentials", "missing bucket", "missing prefix"])
def test_object_store_errors_are_one_line_naming_the_url(case, s3_data, aws, tmp_path, monkeypatch, capsys):
    from trainer.train import main as train_main

    url = {"wrong credentials": s3_data[0], "missing bucket": f"s3://{BUCKET}-nope/sets/seven_groups",
           "missing prefix": f"{s3_data[0]}-nope"}[case]
    if case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    from launch.batch_predict import main as predict_main

    expected = {"wrong credentials": "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                "missing bucket": f"no bucket '{BUCKET}-nope'", "missing prefix": "data folder not found"}[case]
    for command, args in ((train_main, ["--data", url, "--out", str(tmp_path / "run"), *TRAIN_SMALL]),
                          (predict_main, ["--model", "unused.pt", "--input", f"{url}/val", "--out", str(tmp_path / "p")])):
        with pytest.raises(SystemExit) as exc:
            cli(command)(args)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(lines) == 1 and url in lines[0], lines
        assert expected in lines[0], lines


def test_bench_reads_from_s3(s3_data, aws, tmp_path):
    from bench.run import parse_args, run as bench_run

    res = bench_run(parse_args(["--images", str(tmp_path), "--data", s3_data[0], "--paths", "project",
                                "--out-json", str(tmp_path / "out.json"), "--seconds", "0.3", "--rounds", "1",
                                "--batch-size", "4", "--image-size", "16", "--workers", "1"]))
    assert res["paths"]["project"]["images_per_s"] > 0


def test_batch_prediction_reads_a_split_from_s3_as_from_disk(s3_data, seven_groups, aws, spark, trained_run,
                                                              tmp_path):
    """The S3 split's rows scored on Spark equal the same split's from the local folder."""
    import pyarrow.parquet as pq

    from launch import batch_predict

    checkpoint = os.path.join(trained_run[1], "checkpoints", "best.pt")
    url, manifest = s3_data
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    batch_predict.predict(spark, checkpoint, os.path.join(seven_groups[0], "val"), local, batch_size=4)
    result = batch_predict.predict(spark, checkpoint, url.replace("s3://", "s3a://") + "/val", remote, batch_size=4)
    assert result["images"] == manifest.splits["val"].rows and result["errors"] == 0
    assert result["input"].startswith("s3a://") and result["labelled"] == result["images"]
    rows = {name: sorted(pq.read_table(d).to_pylist(), key=lambda r: r["path"]) for name, d in
            (("local", local), ("remote", remote))}
    assert [(r["path"], r["true_class"], r["prediction"], r["top5_classes"]) for r in rows["remote"]] == \
        [(r["path"], r["true_class"], r["prediction"], r["top5_classes"]) for r in rows["local"]]
    for a, b in zip(rows["remote"], rows["local"]):
        assert a["top5_probabilities"] == pytest.approx(b["top5_probabilities"], abs=1e-6)
