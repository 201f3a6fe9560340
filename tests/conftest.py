"""Shared fixtures: one local Spark session for the whole test session, tiny converted data sets.

``one_group`` and ``seven_groups`` are made once per test session with the real
``data.convert`` on that Spark session and cached under pytest's session temp folder,
so several test modules can ask for the same one without converting twice (Spark
starts only if a conversion is needed).
"""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Keep torch/OpenMP from oversubscribing the 2-core machine across processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

CLASSES = 3
PER_CLASS = 40       # 3 x 40 images -> 84 train / 24 val / 12 test with the default 0.7/0.2/0.1 split
WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="session")
def spark():
    from data.spark import get_spark

    session = get_spark("local[2]", {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "2g"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A standalone Spark master and two 1-core workers on 127.0.0.1 (:mod:`tests.spark_cluster`),
    for the whole test session; stopped (exactly the processes it started) at the end."""
    from tests.spark_cluster import SparkCluster

    cluster = SparkCluster(str(tmp_path_factory.mktemp("spark_cluster")), workers=2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API server (moto) on 127.0.0.1 with credentials checked, for the whole test
    session (:mod:`tests.s3_server`); stopped (the process it started) at the end."""
    from tests.s3_server import S3Server

    server = S3Server(str(tmp_path_factory.mktemp("s3_server")))
    yield server
    server.stop()


def converted(request: pytest.FixtureRequest, files_per_split: int, seed: int):
    """``(data folder, manifest)`` of the synthetic images converted with these options."""
    from data.manifest import MANIFEST, Manifest

    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    out = os.path.join(base, "converted", f"files{files_per_split}_seed{seed}")
    if not os.path.isfile(os.path.join(out, MANIFEST)):
        from data.convert import convert
        from data.synthetic import generate

        images = os.path.join(base, "converted", "images")
        if not os.path.isdir(images):
            generate(images, classes=CLASSES, per_class=PER_CLASS, width=WIDTH, height=HEIGHT, seed=3,
                     progress=False)
        convert(images, out, files_per_split=files_per_split, seed=seed, spark=request.getfixturevalue("spark"),
                progress=False)
    return out, Manifest.load(out)


TRAIN_SMALL = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--optimizer", "adamw",
               "--lr", "0.002", "--workers", "0", "--epochs", "1", "--steps-per-epoch", "3", "--no-progress"]
REGISTERED_MODEL = "sparkdp-test-model"


@pytest.fixture(scope="session")
def trained_run(request, tmp_path_factory):
    """A short 1-process run on the ``one_group`` data set that registers its MLflow model:
    ``(data folder, run folder, summary)``."""
    from tests.procs import ok, run, summary_of

    data, _ = converted(request, files_per_split=1, seed=7)
    out = str(tmp_path_factory.mktemp("trained_run"))
    ok(run("trainer.train", "--data", data, "--out", out, *TRAIN_SMALL, "--register-model", REGISTERED_MODEL))
    return data, out, summary_of(out)


@pytest.fixture(scope="module")
def one_group(request):
    """Every split in a single Parquet row group: fewer row groups than ranks x workers."""
    data, manifest = converted(request, files_per_split=1, seed=7)
    assert {s.row_groups for s in manifest.splits.values()} == {1}
    return data, manifest


@pytest.fixture(scope="module")
def seven_groups(request):
    """Every split in 7 row groups: shards of unequal size for 2, 3 or 4 ranks. Its split
    seed differs from ``one_group``'s, so the two are different data sets (fingerprints)."""
    data, manifest = converted(request, files_per_split=7, seed=13)
    assert {s.row_groups for s in manifest.splits.values()} == {7}
    return data, manifest
