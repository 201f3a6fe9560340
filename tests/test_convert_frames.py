"""data.convert from a Spark DataFrame or table: real Spark (the session's local[2]), real Parquet.

The DataFrame route must keep every promise of the folder route: the same checks,
rejected.csv, splits by a stable key, the same files; and its labels need not be folder names.
"""
from __future__ import annotations

import csv
import os

import pytest

from data.convert import convert
from data.errors import UserError
from data.manifest import Manifest
from data.synthetic import generate
from tests.conftest import TRAIN_SMALL
from tests.procs import ok, run, summary_of
from tests.converted_sets import read_split

SEED = 5


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """2 classes of 12 small JPEGs, and one broken file."""
    root = str(tmp_path_factory.mktemp("frames"))
    generate(root, classes=2, per_class=12, width=32, height=24, seed=2, progress=False)
    with open(os.path.join(root, "class_01", "broken.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    return root


def jpegs(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".jpg"))


def rejected(out: str) -> list[list[str]]:
    with open(os.path.join(out, "rejected.csv"), newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_binary_file_frame_gives_the_folder_routes_rows_and_splits(spark, images, tmp_path):
    """The write-up's own DataFrame: binaryFile plus a label taken from the folder name."""
    from pyspark.sql import functions as F

    frame = (spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").option("recursiveFileLookup", "true")
             .load(images).withColumn("label", F.element_at(F.split("path", "/"), -2)))
    from_frame = convert(frame, str(tmp_path / "frame"), spark=spark, image_column="content", seed=SEED,
                         progress=False)
    from_folder = convert(images, str(tmp_path / "folder"), spark=spark, seed=SEED, progress=False)
    assert from_frame.classes == from_folder.classes == ["class_00", "class_01"]
    assert from_frame.fingerprint == from_folder.fingerprint
    for split in from_folder.splits:
        assert read_split(str(tmp_path / "frame"), split) == read_split(str(tmp_path / "folder"), split)
    assert rejected(str(tmp_path / "frame")) == rejected(str(tmp_path / "folder"))
    assert [r[0] for r in rejected(str(tmp_path / "frame"))] == ["path", "class_01/broken.jpg"]
    assert from_frame.options["layout"] == "table" and from_frame.options["root"] == "DataFrame"


def test_a_path_frame_with_its_own_labels_converts_and_trains(spark, images, tmp_path):
    """Labels that are not folder names (even/odd image number), read from paths by the tasks."""
    rows = [(path, "odd" if int(os.path.basename(path)[4:9]) % 2 else "even")
            for path in jpegs(images) if "broken" not in path]
    frame = spark.createDataFrame(rows + [(os.path.join(images, "missing.jpg"), "odd")], "path string, label string")
    out = str(tmp_path / "parity")
    manifest = convert(frame, out, spark=spark, seed=SEED, progress=False)
    assert manifest.classes == ["even", "odd"] and manifest.rejected == 1
    assert rejected(out)[1][0] == "missing.jpg" and "cannot read" in rejected(out)[1][1]
    stored = read_split(out, "train")
    assert all(manifest.classes[label] == ("odd" if int(p.split("/")[-1][4:9]) % 2 else "even")
               for p, label in zip(stored["path"], stored["label"]))
    run_dir = str(tmp_path / "run")
    ok(run("trainer.train", "--data", out, "--out", run_dir, *TRAIN_SMALL))
    assert summary_of(run_dir)["steps"] == 3


def test_integer_labels_take_the_given_names_and_the_table_cli(spark, images, tmp_path):
    from data.convert import main

    rows = [(f"id-{i}", i % 3, path) for i, path in enumerate(jpegs(images)) if "broken" not in path]
    table = str(tmp_path / "table")
    spark.createDataFrame(rows, "key string, cls int, file string").write.parquet(table)
    out = str(tmp_path / "named")
    main(["--table", table, "--out", out, "--path-column", "file", "--label-column", "cls", "--id-column", "key",
          "--class-names", "a", "b", "--no-progress"])
    manifest = Manifest.load(out)
    assert manifest.classes == ["a", "b"] and manifest.rejected == sum(1 for r in rows if r[1] == 2)
    assert {r[0] for r in rejected(out)[1:]} == {r[0] for r in rows if r[1] == 2}
    assert set(read_split(out, "train")["path"]) <= {r[0] for r in rows}  # the id is the stored path
    with pytest.raises(UserError, match="has no column"):
        convert(spark.read.parquet(table), str(tmp_path / "x"), spark=spark, label_column="nope")
    with pytest.raises(UserError, match="one of them"):
        convert(None, str(tmp_path / "x"), spark=spark)
