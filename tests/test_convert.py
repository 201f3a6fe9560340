"""data.convert end to end: real Spark (local[2]), real Parquet, real Petastorm."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data.convert import convert
from data.convert import job
from data.convert.job import OUTPUT_COLUMNS
from data.convert.splits import assign, split_counts, split_key
from data.errors import UserError
from data.manifest import Manifest
from data.synthetic import generate
from tests.converted_sets import parquet_files, read_split
from tests.procs import ROOT
from tests.sample_images import encode, noise, png_header_only

SPLIT = (0.7, 0.2, 0.1)
SEED = 13


def file_bytes(out: str, split: str) -> list[bytes]:
    """The Parquet files of a split, byte for byte, in name order."""
    return [open(f, "rb").read() for f in parquet_files(os.path.join(out, split))]


def open_jpeg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """3 classes with 10, 7 and 5 small JPEGs (uneven, to exercise the rounding rule)."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    names = generate(root, classes=3, per_class=10, width=64, height=48, seed=1, progress=False)
    for name, keep in zip(names, (10, 7, 5)):
        for i in range(keep, 10):
            os.remove(os.path.join(root, name, f"img_{i:05d}.jpg"))
    return root


@pytest.fixture(scope="module")
def converted(spark, images, tmp_path_factory) -> tuple[str, Manifest]:
    out = os.path.join(str(tmp_path_factory.mktemp("converted")), "ds")
    return out, convert(images, out, spark=spark, split=SPLIT, seed=SEED, progress=False)


def test_counts_and_labels_match_manifest(converted, images):
    out, manifest = converted
    assert Manifest.load(out).to_dict() == manifest.to_dict()
    assert manifest.classes == ["class_00", "class_01", "class_02"] and manifest.rejected == 0
    seen = []
    for split, info in manifest.splits.items():
        rows = read_split(out, split)
        assert len(rows["path"]) == info.rows
        assert [rows["label"].count(k) for k in range(3)] == info.per_class
        for label, path in zip(rows["label"], rows["path"]):
            assert manifest.classes[label] == path.split("/")[0]
        keys = [(split_key(SEED, p), p) for p in rows["path"]]
        assert keys == sorted(keys), "rows are stored in (key, path) order"
        for data, path, w, h in zip(rows["image"], rows["path"], rows["width"], rows["height"]):
            assert data == open(os.path.join(images, path), "rb").read()  # RGB JPEGs kept as they are
            assert open_jpeg(data).size == (w, h) == (64, 48)
        seen += rows["path"]
        assert info.files == len(parquet_files(os.path.join(out, split))) == 1
        assert info.row_groups == 1 and info.bytes > 0
    assert sorted(seen) == sorted(os.path.relpath(os.path.join(d, f), images).replace(os.sep, "/")
                                  for d, _, fs in os.walk(images) for f in fs)
    schema = pq.read_schema(parquet_files(os.path.join(out, "train"))[0])
    assert [(f.name, str(f.type)) for f in schema] == [
        ("image", "binary"), ("label", "int64"), ("path", "string"), ("width", "int32"), ("height", "int32")]
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp-" in f or ".old-" in f]


def test_splits_are_stratified_by_the_rounding_rule(converted):
    out, manifest = converted
    assert [manifest.splits[s].per_class for s in ("train", "val", "test")] == [[7, 5, 4], [2, 1, 1], [1, 1, 0]]
    stored = {s: read_split(out, s) for s in manifest.splits}
    for label, cls in enumerate(manifest.classes):
        members = {s: sorted(p for p, lab in zip(r["path"], r["label"]) if lab == label) for s, r in stored.items()}
        everything = [p for s in members.values() for p in s]
        expected = assign(everything, SPLIT, SEED)
        assert members == {s: sorted(v) for s, v in expected.items()}
        assert tuple(len(members[s]) for s in ("train", "val", "test")) == split_counts(len(everything), SPLIT)


def test_decode_tasks_are_few_and_large():
    assert job.decode_tasks(3000, 2) == 4  # 2 per core
    assert job.decode_tasks(101_000, 2) == 51  # at most 2,000 files a task
    assert job.decode_tasks(3, 16) == 3 and job.decode_tasks(0, 2) == 1


def test_same_splits_on_rerun_with_other_partitioning_and_overwrite(spark, converted, images, tmp_path,
                                                                     monkeypatch):
    out, manifest = converted
    small = {"spark.sql.shuffle.partitions": "3"}
    again = str(tmp_path / "again")
    everything = convert(images, again, spark=spark, split=(1, 0, 0), seed=SEED + 1, progress=False,
                         files_per_split=3)
    assert (everything.splits["train"].rows, everything.splits["val"].rows) == (22, 0)
    files = [pq.read_table(f, columns=["path"]).column("path").to_pylist()
             for f in parquet_files(os.path.join(again, "train"))]
    assert [len(f) for f in files] == [7, 7, 8], "file i holds the i-th of 3 equal ranges"
    keys = [(split_key(SEED + 1, p), p) for f in files for p in f]
    assert keys == sorted(keys)
    assert (everything.splits["val"].files, everything.splits["val"].row_groups) == (1, 0)  # schema only
    assert spark.read.parquet(os.path.join(again, "val")).columns == list(OUTPUT_COLUMNS)
    other_seed = read_split(again, "train")["path"]
    with pytest.raises(UserError, match="not empty"):
        convert(images, again, spark=spark, split=SPLIT, seed=SEED, progress=False)
    monkeypatch.setattr(job, "FILES_PER_TASK", 2)  # 11 decode tasks instead of 4
    second = convert(images, again, spark=spark, split=SPLIT, seed=SEED, progress=False,
                     overwrite=True, spark_conf=small)
    assert spark.conf.get("spark.sql.shuffle.partitions") != "3", "runtime settings restored"
    assert second.fingerprint == manifest.fingerprint
    for split in manifest.splits:
        assert read_split(again, split) == read_split(out, split)
        assert file_bytes(again, split) == file_bytes(out, split), "the same input and seed give byte-identical files"
    assert other_seed != sorted(read_split(out, "train")["path"] + read_split(out, "val")["path"]
                                + read_split(out, "test")["path"], key=lambda p: split_key(SEED, p)), "the seed matters"
    assert sorted(os.listdir(tmp_path)) == ["again"]


def test_refuses_bad_output_and_leaves_nothing_on_failure(spark, tmp_path):
    broken = tmp_path / "broken" / "cls"
    broken.mkdir(parents=True)
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="none of the 2 image files"):
        convert(str(tmp_path / "broken"), str(tmp_path / "out"), spark=spark, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["broken"], "no out, no temp folder"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        convert(str(tmp_path / "broken"), str(busy), spark=spark)
    with pytest.raises(UserError, match="not a converted data set"):
        convert(str(tmp_path / "broken"), str(busy), spark=spark, overwrite=True)
    with pytest.raises(UserError, match="must not contain each other"):
        convert(str(tmp_path / "broken"), str(broken / "out"), spark=spark)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images found"):
        convert(str(tmp_path / "empty"), str(tmp_path / "out"), spark=spark, progress=False)
    for bad in ({"split": "0.5,0.6,0.1"}, {"split": "0.7,0.3"}, {"split": (0.5, -0.1, 0.6)}, {"quality": 0},
                {"max_side": 0}, {"files_per_split": 0}, {"layout": "food101"}, {"layout": "coco"}):
        with pytest.raises(UserError):
            convert(str(tmp_path / "broken"), str(tmp_path / "out"), spark=spark, **bad)
    assert (busy / "keep.txt").read_text() == "mine"


def _odd_tree(root: str) -> dict[str, str]:
    """Unusual and broken files; returns {relative path: expected outcome}."""
    jpeg = encode(noise(64, 48), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "crème brûlée/a b.jpg": (jpeg, "keep"),
        "crème brûlée/deeper/nested dir/UPPER.JPG": (encode(noise(64, 48, seed=2), "JPEG"), "keep"),
        "crème brûlée/rotated.jpeg": (encode(noise(64, 48, seed=3), "JPEG", exif=exif.tobytes()), "rotated"),
        "crème brûlée/cmyk.jpg": (encode(noise(40, 30).convert("CMYK"), "JPEG"), "convert"),
        "crème brûlée/gray.jpg": (encode(noise(40, 30, "L"), "JPEG"), "convert"),
        "plain/rgba.png": (encode(noise(40, 30, "RGBA"), "PNG"), "convert"),
        "plain/palette.gif": (encode(noise(40, 30).convert("P"), "GIF"), "convert"),
        "plain/photo.webp": (encode(noise(40, 30), "WEBP"), "convert"),
        "plain/one.png": (encode(Image.new("RGB", (1, 1)), "PNG"), "convert"),
        "plain/wide.png": (encode(noise(1000, 10), "PNG"), "wide"),
        "plain/old.Bmp": (encode(noise(40, 30), "BMP"), "convert"),
        "plain/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "plain/zero.jpg": (b"", "empty file"),
        "plain/text.jpg": (b"just some text\n", "not an image"),
        "plain/garbage.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "corrupt"),
        "plain/bomb.png": (png_header_only(20000, 20000), "decompression bomb"),
        "plain/.hidden.jpg": (jpeg, "skip"),
        "plain/.DS_Store": (b"\0\0\0\1Bud1", "skip"),
        "plain/notes.txt": (b"notes", "skip"),
        ".cache/x.jpg": (jpeg, "skip"),
        "crème brûlée/.thumbs/x.jpg": (jpeg, "skip"),
        "loose.jpg": (jpeg, "skip"),  # not inside a class folder
        "_other/x.jpg": (jpeg, "skip"),  # Spark never lists names starting with '_'
    }
    for rel, (data, _) in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return {rel: outcome for rel, (_, outcome) in files.items()}


def test_unusual_and_broken_files(spark, tmp_path):
    src = str(tmp_path / "in put")  # a space in the root path too
    expected = _odd_tree(src)
    out = str(tmp_path / "out")
    manifest = convert(src, out, spark=spark, split=(0.5, 0.25, 0.25), max_side=100, progress=False)
    assert manifest.classes == ["crème brûlée", "plain"]
    # 5 and 6 kept images at 0.5/0.25/0.25: halves round up (2.5 -> 3, 1.5 -> 2)
    assert [manifest.splits[s].per_class for s in ("train", "val", "test")] == [[3, 3], [1, 2], [1, 1]]
    stored = {}
    for split in manifest.splits:
        rows = read_split(out, split)
        for i, path in enumerate(rows["path"]):
            stored[path] = {c: rows[c][i] for c in rows}
    kept = {p for p, o in expected.items() if o in ("keep", "rotated", "convert", "wide")}
    assert set(stored) == kept
    for path, row in stored.items():
        img = open_jpeg(row["image"])
        assert img.size == (row["width"], row["height"])
        assert manifest.classes[row["label"]] == path.split("/")[0]
        original = open(os.path.join(src, path), "rb").read()
        assert (row["image"] == original) == (expected[path] == "keep"), path
    assert (stored["crème brûlée/rotated.jpeg"]["width"], stored["crème brûlée/rotated.jpeg"]["height"]) == (48, 64)
    assert (stored["plain/wide.png"]["width"], stored["plain/wide.png"]["height"]) == (100, 1)
    with open(os.path.join(out, "rejected.csv"), newline="", encoding="utf-8") as f:
        rejected = list(csv.reader(f))
    assert rejected[0] == ["path", "reason"]
    reasons = dict(rejected[1:])
    assert set(reasons) == {p for p, o in expected.items() if o not in ("skip", "keep", "rotated", "convert", "wide")}
    for path, reason in reasons.items():
        assert expected[path] in reason, (path, reason)
    assert manifest.rejected == len(reasons) == 5
    assert manifest.stats["skipped"] == 1  # loose.jpg; Spark itself never lists hidden names or .txt
    assert manifest.stats["ignored_folders"] == ["_other"]


def _food101(root: str) -> dict[str, dict[str, list[str]]]:
    """A tiny fake Food-101 download under ``root/food-101``; returns official lists."""
    food = os.path.join(root, "food-101")
    classes = ["waffles", "apple_pie"]  # not sorted: classes.txt order must win
    official = {c: {"train": [f"{c}/{100 + i}" for i in range(9)], "test": [f"{c}/{200 + i}" for i in range(3)]}
                for c in classes}
    os.makedirs(os.path.join(food, "meta"))
    with open(os.path.join(food, "meta", "classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    for part in ("train", "test"):
        with open(os.path.join(food, "meta", f"{part}.txt"), "w") as f:
            f.write("\n".join(e for c in classes for e in official[c][part]) + "\n")
    for k, c in enumerate(classes):
        os.makedirs(os.path.join(food, "images", c))
        for i, entry in enumerate(official[c]["train"] + official[c]["test"] + [f"{c}/999"]):  # 999: unlisted
            noise(32, 24, seed=100 * k + i).save(os.path.join(food, "images", entry + ".jpg"))
    return official


def test_food101_layout_uses_official_splits(spark, tmp_path):
    official = _food101(str(tmp_path))
    out = str(tmp_path / "out")
    manifest = convert(str(tmp_path), out, spark=spark, split=SPLIT, progress=False)  # parent of food-101
    assert manifest.options["layout"] == "food101" and manifest.classes == ["waffles", "apple_pie"]
    rows = {s: read_split(out, s) for s in manifest.splits}
    for label, cls in enumerate(manifest.classes):
        paths = {s: sorted(p[: -len(".jpg")] for p, lab in zip(r["path"], r["label"]) if lab == label)
                 for s, r in rows.items()}
        assert paths["test"] == sorted(official[cls]["test"])
        assert sorted(paths["train"] + paths["val"]) == sorted(official[cls]["train"])
        assert len(paths["val"]) == 2  # round(9 * 0.2 / 0.9) = 2
    assert manifest.stats["skipped"] == 2
    again = convert(os.path.join(str(tmp_path), "food-101"), str(tmp_path / "again"), spark=spark,
                    layout="food101", files_per_split=7, progress=False)
    assert again.fingerprint == manifest.fingerprint
    assert again.splits["train"].files == again.splits["train"].row_groups == 7  # 14 rows: 2 per file
    assert again.splits["val"].files == again.splits["val"].row_groups == 4  # fewer rows than files
    assert read_split(str(tmp_path / "again"), "train") == rows["train"]


def test_petastorm_batch_reader_reads_a_split(converted):
    from petastorm import make_batch_reader

    out, manifest = converted
    count = 0
    with make_batch_reader("file://" + os.path.join(out, "train"), num_epochs=1, workers_count=1,
                           shuffle_row_groups=False) as reader:
        for batch in reader:
            for data, label in zip(batch.image, batch.label):
                assert open_jpeg(data).size == (64, 48) and 0 <= label < manifest.num_classes
            count += len(batch.label)
    assert count == manifest.splits["train"].rows


def test_petastorm_spark_converter_feeds_torch(spark, converted, tmp_path):
    from petastorm import TransformSpec
    from petastorm.spark import make_spark_converter

    out, manifest = converted
    spark.conf.set("petastorm.spark.converter.parentCacheDirUrl", "file://" + str(tmp_path))

    def to_arrays(pdf):
        pdf["image"] = [np.asarray(open_jpeg(b)).transpose(2, 0, 1).copy() for b in pdf["image"]]
        return pdf[["image", "label"]]

    spec = TransformSpec(to_arrays, edit_fields=[("image", np.uint8, (3, 48, 64), False)],
                         selected_fields=["image", "label"])
    converter = make_spark_converter(spark.read.parquet(os.path.join(out, "train")))
    try:
        labels = []
        with converter.make_torch_dataloader(batch_size=4, num_epochs=1, transform_spec=spec,
                                             workers_count=1) as loader:
            for batch in loader:
                assert tuple(batch["image"].shape[1:]) == (3, 48, 64)
                labels += batch["label"].tolist()
        assert sorted(labels) == sorted(read_split(out, "train")["label"])
    finally:
        converter.delete()


@pytest.mark.parametrize("args,message", [
    (["--images", "/no/such/folder", "--out", "/tmp/x"], "--images folder not found"),
    (["--images", ROOT, "--out", "/tmp/x", "--split", "0.5,0.5"], "--split"),
    (["--images", ROOT, "--out", "/tmp/x", "--bogus"], "unrecognized arguments"),
])
def test_cli_user_errors_are_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "data.convert", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_cli_converts_with_the_active_session(spark, images, tmp_path, capsys):
    from data.convert import main

    out = str(tmp_path / "cli out")
    before = spark.conf.get("spark.sql.shuffle.partitions")
    main(["--images", images, "--out", out, "--no-progress", "--files-per-split", "2",
          "--spark-conf", "spark.sql.shuffle.partitions=3", "spark.sql.adaptive.enabled=false"])
    printed = capsys.readouterr().out
    assert "train 16 (2 files, 2 row groups)" in printed and "images/s" in printed
    assert spark.conf.get("spark.sql.shuffle.partitions") == before, "the session is left as it was"
    manifest = Manifest.load(out)
    assert manifest.splits["train"].files == 2 and manifest.options["files_per_split"] == 2


def test_file_writer_cuts_row_groups_by_size_and_refuses_changed_files(tmp_path):
    """A row group ends with the image that brings it to ``row_group_bytes``; a re-encoded
    image comes from where the decode pass stashed it; a file that changed since its check stops the write."""
    from data.convert.writer import FileTask, write_file

    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    rows = []
    for i in range(5):
        (root / "a" / f"{i}.jpg").write_bytes(bytes([i]) * 100)
        rows.append((f"a/{i}.jpg", 0, 8, 6, 100, str(root / "a" / f"{i}.jpg")))
    (tmp_path / "stashed.jpg").write_bytes(b"x" * 100)
    rows[0] = ("a/0.jpg", 0, 8, 6, 100, str(tmp_path / "stashed.jpg"))
    out = str(tmp_path / "train" / "part-00000.parquet")
    assert write_file(FileTask(out, 250, rows)) == 5
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [3, 2]
    table = pq.read_table(out)
    assert table.column_names == list(OUTPUT_COLUMNS)
    assert table.column("image").to_pylist()[:2] == [b"x" * 100, b"\x01" * 100]
    (root / "a" / "3.jpg").write_bytes(b"changed")
    with pytest.raises(RuntimeError, match="a/3.jpg changed"):
        write_file(FileTask(out, 250, rows))


def test_write_shares_balance_image_bytes_and_keep_output_order():
    from data.convert.writer import FileTask

    def task(name: str, sizes: list[int]) -> FileTask:
        return FileTask(name, 1, [(f"{name}/{i}", 0, 1, 1, n, f"root/{name}/{i}") for i, n in enumerate(sizes)])

    tasks = [task("train0", [50, 50]), task("train1", [50, 50]), task("val", [60]), task("test", [30])]
    shares = job.balance(tasks, 2)
    assert sorted(t.path for s in shares for t in s) == sorted(t.path for t in tasks)
    loads = [sum(r[4] for t in s for r in t.rows) for s in shares]
    assert sorted(loads) == [130, 160]  # train0 | train1, then val to one and test to the other
    assert all([tasks.index(t) for t in s] == sorted(tasks.index(t) for t in s) for s in shares)
    assert [[t.path for t in s] for s in job.balance(tasks[:1], 8)] == [["train0"]]


def test_the_local_driver_jvm_runs_lean(spark):
    """data.spark.LOCAL_JVM_OPTIONS reach the driver JVM that the test session started."""
    from data.spark import LOCAL_JVM_OPTIONS

    args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert set(LOCAL_JVM_OPTIONS.split()) <= set(args)
