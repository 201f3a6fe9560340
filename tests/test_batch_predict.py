"""Batch prediction on Spark (``launch.batch_predict``) on the shared local[2] session: one row
per input image, broken files included; the same scores as ``trainer.predict``; converted
splits with true classes; the output folder is never silently replaced.
"""
from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq
import pytest

from data.errors import UserError
from launch import batch_predict
from trainer.predict import predict as predict_files
from tests.sample_images import BROKEN, image_folder

def read_rows(out: str) -> dict[str, dict]:
    rows = pq.read_table(out).to_pylist()
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows)  # each image once
    return by_path


def test_image_folder_with_broken_files_gives_one_row_per_file(spark, trained_run, tmp_path):
    data, run_dir, summary = trained_run
    checkpoint = os.path.join(run_dir, "checkpoints", "best.pt")
    folder = str(tmp_path / "images")
    files = image_folder(data, folder)
    out = str(tmp_path / "predictions")

    result = batch_predict.predict(spark, checkpoint, folder, out, batch_size=4)
    rows = read_rows(out)
    assert sorted(rows) == files and result["images"] == len(files)
    assert result["errors"] == len(BROKEN)
    for rel in BROKEN:
        assert rows[rel]["error"] and rows[rel]["prediction"] is None
    good = [rel for rel in files if rel not in BROKEN]
    expected = predict_files(checkpoint, [os.path.join(folder, rel) for rel in good])
    for rel in good:
        row, ranked = rows[rel], expected[os.path.join(folder, rel)]
        assert row["error"] is None
        assert row["top5_classes"] == [name for name, _ in ranked]
        assert row["top5_probabilities"] == pytest.approx([p for _, p in ranked], abs=1e-5)
        if "/" in rel:
            assert row["true_class"] == rel.split("/")[0] and row["label"] == int(rel[len("class_"):][:2])
        else:
            assert row["true_class"] is None and row["label"] is None
    labelled = [rows[r] for r in good if "/" in r]
    assert result["labelled"] == len(labelled)
    assert result["accuracy"] == pytest.approx(sum(r["prediction"] == r["true_class"] for r in labelled)
                                               / len(labelled))
    assert result["images_per_s"] > 0
    assert os.path.isfile(os.path.join(out, batch_predict.SUMMARY))
    assert not glob.glob(str(tmp_path / "predictions.tmp-*"))

    with pytest.raises(UserError, match="not empty: pass --overwrite"):
        batch_predict.predict(spark, checkpoint, folder, out)
    again = batch_predict.predict(spark, checkpoint, folder, out, overwrite=True)
    assert again["images"] == len(files)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not predictions")
    with pytest.raises(UserError, match="is not an output of this kind"):
        batch_predict.predict(spark, checkpoint, folder, str(other), overwrite=True)


def test_converted_split_by_mlflow_uri_knows_the_true_classes(spark, trained_run, tmp_path, monkeypatch):
    data, _, summary = trained_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["mlflow_tracking_uri"])
    test_split = os.path.join(data, "test")
    result = batch_predict.predict(spark, summary["mlflow_model_uri"], test_split, str(tmp_path / "out"))
    rows = read_rows(str(tmp_path / "out"))
    source = pq.read_table(test_split, columns=["path", "label"]).to_pylist()
    assert sorted(rows) == sorted(r["path"] for r in source) and result["errors"] == 0
    assert all(rows[r["path"]]["label"] == r["label"] for r in source)
    assert result["labelled"] == len(source) and result["accuracy"] is not None


def test_unknown_model_is_one_plain_error(spark, tmp_path):
    os.makedirs(tmp_path / "images")
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")  # the input is checked first: it must be usable
    with pytest.raises(UserError, match="no such checkpoint file or MLflow model"):
        batch_predict.predict(spark, str(tmp_path / "nope.pt"), str(tmp_path / "images"), str(tmp_path / "out"))
