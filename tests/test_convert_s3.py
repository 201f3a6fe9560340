"""data.convert from and to a real S3 API server (moto, credentials checked: :mod:`tests.s3_server`).

Spark's Python workers here were started before the test set the AWS variables, like
executors that never saw the driver's environment: they reach S3 only with what the
conversion hands them.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from data.convert import convert
from data.errors import cli
from data.manifest import Manifest
from data.split_reader import open_split
from data.synthetic import generate
from tests.conftest import TRAIN_SMALL
from tests.procs import completed, ok, run, start, summary_of
from tests.converted_sets import read_split

BUCKET = "sparkdp-convert"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("s3_images"))
    generate(root, classes=2, per_class=16, width=32, height=24, seed=4, progress=False)
    return root


@pytest.fixture(scope="module")
def s3_images(s3_server, images) -> str:
    return s3_server.upload(images, BUCKET, "in/images")


@pytest.fixture
def aws(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server.env


def keys(s3_server, prefix: str) -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


def test_folder_in_s3_to_data_set_in_s3_trains_evaluates_and_predicts(spark, s3_server, s3_images, images, aws,
                                                                      tmp_path):
    from launch import batch_predict
    from trainer.evaluate import main as evaluate_main

    url = f"s3a://{BUCKET}/out/ds"
    manifest = convert(s3_images.replace("s3://", "s3a://"), url, spark=spark, seed=3, progress=False)
    local = convert(images, str(tmp_path / "local"), spark=spark, seed=3, progress=False)
    assert manifest.fingerprint == local.fingerprint
    for split in manifest.splits:
        assert open_split(url, split).dataset().to_table().to_pydict() == read_split(str(tmp_path / "local"), split)
    assert keys(s3_server, "out/ds") == sorted(["manifest.json", "rejected.csv",
                                                *(p for s in manifest.splits.values() for p in s.paths)])
    run_dir = str(tmp_path / "run")
    # One loader worker per rank: the workers read S3 too.
    ok(run("trainer.train", "--data", url, "--out", run_dir, *TRAIN_SMALL, "--workers", "1", nproc=2))
    summary = summary_of(run_dir)
    assert summary["world_size"] == 2 and summary["rank_steps"] == [3, 3]
    checkpoint = os.path.join(run_dir, "checkpoints", "last.pt")
    res = evaluate_main(["--checkpoint", checkpoint, "--data", url, "--workers", "0",
                         "--json", str(tmp_path / "e.json")])
    assert res["count"] == manifest.splits["test"].rows  # (the default split)
    predicted = batch_predict.predict(spark, checkpoint, s3_images.replace("s3://", "s3a://"),
                                      str(tmp_path / "predictions"), batch_size=4)
    assert predicted["images"] == 32 and predicted["errors"] == 0 and predicted["labelled"] == 32


def test_a_killed_conversion_leaves_the_data_set_and_a_rerun_replaces_it(spark, s3_server, s3_images, aws,
                                                                         tmp_path):
    """SIGKILL the driver once its first data file is in S3: readers still see the previous
    data set, unchanged; a rerun publishes a complete one and removes what no manifest names."""
    url = f"s3://{BUCKET}/out/killed"
    before = convert(s3_images, url, spark=spark, seed=1, progress=False)
    old_files = keys(s3_server, "out/killed")
    proc = start("data.convert", "--images", s3_images, "--out", url, "--seed", "2", "--overwrite",
                 "--files-per-split", "8", "--no-progress")
    try:
        while not set(f for f in keys(s3_server, "out/killed") if f.endswith(".parquet")) - set(old_files):
            assert proc.poll() is None, completed(proc).stderr[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert Manifest.load(url).to_dict() == before.to_dict(), "the killed run published nothing"
    assert set(keys(s3_server, "out/killed")) > set(old_files), "it left files that no manifest names"
    assert open_split(url, "train").rows == before.splits["train"].rows
    ok(run("data.convert", "--images", s3_images, "--out", url, "--seed", "2", "--overwrite", "--no-progress"))
    after = Manifest.load(url)
    assert after.options["seed"] == 2 and after.fingerprint != before.fingerprint
    assert keys(s3_server, "out/killed") == sorted(["manifest.json", "rejected.csv",
                                                    *(p for s in after.splits.values() for p in s.paths)])
    assert open_split(url, "val").rows == after.splits["val"].rows


@pytest.mark.parametrize("case", ["wrong credentials", "missing bucket", "missing prefix", "empty folder",
                                  "out bucket missing"])
def test_object_store_errors_are_one_line_naming_the_url_and_write_nothing(case, s3_server, s3_images, aws,
                                                                          monkeypatch, capsys):
    from data.convert import main

    s3 = s3_server.client()
    s3.put_object(Bucket=BUCKET, Key="in/empty/notes.txt", Body=b"no images")
    images, out = {"wrong credentials": (s3_images, None), "missing bucket": (f"s3://{BUCKET}-nope/x", None),
                   "missing prefix": (f"{s3_images}-nope", None), "empty folder": (f"s3://{BUCKET}/in/empty", None),
                   "out bucket missing": (s3_images, f"s3://{BUCKET}-nope/out")}[case]
    out = out or f"s3://{BUCKET}/out/{case.replace(' ', '-')}"
    if case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SystemExit) as exc:
        cli(main)(["--images", images, "--out", out, "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    url = out if case == "out bucket missing" else images
    assert exc.value.code == 2 and len(lines) == 1 and url in lines[0], lines
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.env["AWS_SECRET_ACCESS_KEY"])
    assert not keys(s3_server, f"out/{case.replace(' ', '-')}")
