"""Score many images on Spark: ``python -m launch.batch_predict --model M --input DIR --out DIR``.

``--model`` is an MLflow model URI (``runs:/<id>/model``, ``models:/NAME/VERSION``, a
local model folder) or a checkpoint file; ``--input`` an image folder (any tree; a first
folder level named like one of the model's classes is taken as the true class) or a
split folder written by ``data.convert`` (``dataset/test``: true classes from its
manifest, and exactly the files it names), on a shared disk or in an S3-compatible
object store (``s3://bucket/images``, ``s3a://bucket/dataset/test``: the driver lists
the keys, the tasks read the objects or row groups with s3fs, with the driver's AWS
variables). The output is Parquet, one row per input image, a bad image included:
``path, label, true_class, prediction, probability, top5_classes, top5_probabilities,
error`` (rows in = rows out, checked), written through a temporary folder and renamed.

How the model reaches the tasks: the driver loads it once (resolving the URI with its
MLflow settings), keeps only the weights, names and size, and broadcasts them; each task
of a ``mapInPandas`` (an iterator of pandas batches per task) builds the model once, on
the GPU Spark assigned it if any, and scores its batches with :mod:`trainer.classify`
(exactly the eval path of ``trainer.evaluate``). Chosen over ``predict_batch_udf``,
which takes numeric tensors (our input is variable-length bytes, read and decoded in the
task, with a per-row error) and over ``mlflow.pyfunc.spark_udf``, which needs the MLflow
store or a shared path on every executor and accepts only MLflow URIs, not checkpoints.
"""
from __future__ import annotations

import functools
import glob
import io
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator

from data.files import join, list_sizes, open_file, read_bytes
from data.image_folder import IMAGE_EXTENSIONS, image_files, visible_images
from data.staging import check_out, staged_folder
from data.errors import UserError, cli
from data.manifest import Manifest
from data.object_store import is_s3, s3_settings
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting
from data.spark import parse_conf, runtime_conf, spark_session

PROG = "python -m launch.batch_predict"
DESCRIPTION = "Classify a folder of images (or a converted split) on Spark with a trained model."
SUMMARY = "_summary.json"  # beside the Parquet files; Spark and pyarrow skip names starting with _
OUTPUT_SCHEMA = ("path string, label long, true_class string, prediction string, probability double, "
                 "top5_classes array<string>, top5_probabilities array<double>, error string")


@dataclass
class PredictOptions:
    model: str = setting(metavar="URI|FILE", help="MLflow model URI (runs:/ID/model, models:/NAME/VERSION, a model "
                                                  "folder) or a checkpoint file written by trainer.train")
    input: str = setting(metavar="DIR|URL", help="image folder, or a split folder written by data.convert "
                                                 "(local, or in S3: s3://bucket/images, s3://bucket/dataset/test)")
    out: str = setting(metavar="DIR", help="Parquet folder to create")
    master: str = setting("local[*]", metavar="URL", help="Spark master; the same command runs on a cluster")
    batch_size: int = setting(64, minimum=1, metavar="N", help="images per batch inside a task")
    partitions: int | None = setting(None, minimum=1, metavar="N", doc="2 x Spark's cores",
                                     help="Spark tasks (each builds the model once)")
    overwrite: bool = setting(False, help="replace an earlier batch-prediction output at --out")
    spark_conf: dict[str, str] = setting(factory=dict, repeat=True, metavar="K=V", doc="",
                                         help="any other Spark setting (repeatable)")

    def __post_init__(self) -> None:
        self.spark_conf = parse_conf(self.spark_conf)  # the command line's ["k=v", ...], or a dict
        check_settings(self)


# --- the model -----------------------------------------------------------------------------

def model_state(model: str) -> dict:
    """The model-only checkpoint dict of a checkpoint file or an MLflow model URI."""
    from trainer import checkpoint as ckpt
    from trainer.classify import model_only

    if os.path.isfile(model):
        return model_only(ckpt.load_checkpoint(model))
    if "://" not in model and ":/" not in model and not os.path.isdir(model):
        raise UserError(f"--model {model}: no such checkpoint file or MLflow model")
    from trainer.mlflow_model import weights_file

    return ckpt.load_checkpoint(weights_file(model))


def task_device():
    """The GPU Spark gave this task, else what the machine has (CPU without CUDA)."""
    import torch
    from pyspark import TaskContext

    from trainer.classify import default_device

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    return torch.device(f"cuda:{gpus.addresses[0]}") if gpus and gpus.addresses else default_device()


def score_batches(batches: Iterator, *, weights, root: str | None, classes: list[str] | None,
                  forward_batch: int, storage: dict[str, str] | None) -> Iterator:
    """The ``mapInPandas`` function: build the model once per task, then score each batch.

    A batch holds ``path`` (and ``image``/``label`` for a converted split); image-folder
    files are read here, a read failure becoming that row's error."""
    import pandas as pd
    import torch

    from trainer.classify import Classifier

    classifier = Classifier(torch.load(io.BytesIO(weights.value), map_location="cpu", weights_only=True),
                            task_device(), forward_batch=forward_batch)
    names = classifier.classes
    for batch in batches:
        read_errors = [None] * len(batch)
        if "image" in batch.columns:
            images = batch["image"].tolist()
            labels = batch["label"].tolist()
            true = [classes[int(k)] if classes and 0 <= int(k) < len(classes) else None for k in labels]
        else:
            images = []
            for i, rel in enumerate(batch["path"]):
                try:
                    images.append(read_bytes(join(root, rel), storage))
                except OSError as exc:
                    images.append(None)
                    read_errors[i] = f"cannot read: {exc.strerror or exc}"
            true = [rel.split("/", 1)[0] if "/" in rel and rel.split("/", 1)[0] in names else None
                    for rel in batch["path"]]
            labels = [names.index(c) if c is not None else None for c in true]
        scored = classifier.predict(images)
        scored["error"] = [r or e for r, e in zip(read_errors, scored["error"])]
        yield pd.DataFrame({"path": batch["path"].tolist(), "label": pd.array(labels, dtype="Int64"),
                            "true_class": true, **{c: scored[c] for c in scored.columns}})


# --- the input ----------------------------------------------------------------------------

def converted_split(source: str) -> tuple[str, str] | None:
    """``(data set, split)`` when ``source`` is a split folder of a data set whose manifest names it."""
    parent, _, split = source.rstrip("/").rpartition("/")
    try:
        return (parent, split) if split in Manifest.load(parent).splits else None
    except UserError:  # no manifest there (or none readable): not a converted split
        return None


def input_frame(spark, source: str, partitions: int, storage: dict[str, str] | None):
    """``(DataFrame, rows, classes of the data set or None)`` for an image folder or a converted split."""
    if is_s3(source) and not list_sizes(source, storage or {}):  # (a refused key, no bucket: one line here)
        raise UserError(f"--input {source}: data folder not found (no objects under it)")
    split = converted_split(source)
    if split is not None:
        return _split_frame(spark, *split, partitions, storage)
    if not is_s3(source) and glob.glob(os.path.join(source, "*.parquet")):  # Parquet written by something else
        frame = spark.read.parquet(source).select("path", "image", "label")
        rows = frame.count()
        if frame.rdd.getNumPartitions() < partitions:
            frame = frame.repartition(min(partitions, max(rows, 1)))
        return frame, rows, None
    # unreadable images included: they become error rows
    paths = visible_images(list_sizes(source, storage or {})) if is_s3(source) else image_files(source)
    if not paths:
        raise UserError(f"--input {source}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    rdd = spark.sparkContext.parallelize([(p,) for p in paths], min(partitions, len(paths)))
    return spark.createDataFrame(rdd, "path string"), len(paths), None


def _split_frame(spark, data: str, name: str, partitions: int, storage: dict[str, str] | None):
    """``input_frame`` for a converted split: one task input per row group of the files its
    manifest names (never other files in its folder)."""
    from data.split_reader import open_split

    manifest = Manifest.load(data)
    split = open_split(data, name, manifest)  # one line naming the URL if it cannot be read
    groups = [(file, i) for file, (_, n) in zip(split.sources, split.files) for i in range(n)]
    tasks = spark.sparkContext.parallelize(groups, max(1, min(partitions, len(groups))))
    read = functools.partial(read_row_groups, storage=storage)
    frame = spark.createDataFrame(tasks, "file string, row_group int").mapInPandas(
        read, "path string, image binary, label long")
    return frame, split.rows, manifest.classes


def read_row_groups(parts: Iterator, *, storage: dict[str, str] | None) -> Iterator:
    """The ``mapInPandas`` function over ``(file URL, row_group)`` of a converted split: each
    row group's ``path, image, label`` rows (at most one row group held)."""
    import pyarrow.parquet as pq

    for part in parts:
        for file, groups in itertools.groupby(zip(part["file"], part["row_group"]), key=lambda fg: fg[0]):
            with open_file(file, "rb", storage) as f:  # the footer read once per file, not per row group
                parquet = pq.ParquetFile(f)
                for _, group in groups:
                    yield parquet.read_row_group(int(group), columns=["path", "image", "label"]).to_pandas()


# --- the job ------------------------------------------------------------------------------

def predict(spark, model: str, input: str, out: str, *, batch_size: int = 64, partitions: int | None = None,
            overwrite: bool = False) -> dict:
    """Score every image of ``input`` with ``model`` on ``spark``; write Parquet to ``out``.
    Returns the summary (images, errors, images/s, accuracy when true classes are known)."""
    import torch

    if not is_s3(input) and not os.path.isdir(input):
        raise UserError(f"--input {input} is not a folder")
    storage = s3_settings(input)
    source = input if is_s3(input) else os.path.abspath(input)
    out = check_out(out, overwrite, input, marker=SUMMARY)
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    partitions = partitions or 2 * spark.sparkContext.defaultParallelism
    started = time.perf_counter()
    frame, rows_in, classes = input_frame(spark, source, partitions, storage)  # a bad input fails before the model loads
    state = model_state(model)
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = spark.sparkContext.broadcast(buf.getvalue())
    try:
        score = functools.partial(score_batches, weights=weights, root=source, classes=classes, forward_batch=batch_size,
                                  storage=storage)
        with staged_folder(out, overwrite, marker=SUMMARY) as tmp, \
                runtime_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_size)}):
            frame.mapInPandas(score, OUTPUT_SCHEMA).write.mode("overwrite").parquet(tmp)
            seconds = time.perf_counter() - started
            summary = _summarize(spark, tmp, rows_in, seconds)
            summary.update(model=model, input=source, out=out)
            with open(os.path.join(tmp, SUMMARY), "w") as f:
                json.dump(summary, f, indent=2)
    finally:
        weights.unpersist()
    return summary


def _summarize(spark, written: str, rows_in: int, seconds: float) -> dict:
    from pyspark.sql import functions as F

    result = spark.read.parquet(written)
    ok = F.col("error").isNull()
    labelled = ok & F.col("true_class").isNotNull()
    row = result.agg(F.count(F.lit(1)).alias("rows"), F.sum((~ok).cast("long")).alias("errors"),
                     F.sum(labelled.cast("long")).alias("labelled"),
                     F.sum((labelled & (F.col("prediction") == F.col("true_class"))).cast("long")).alias("correct")
                     ).first()
    if row["rows"] != rows_in:  # Spark's commit protocol keeps each task's output once
        raise RuntimeError(f"{rows_in} images in but {row['rows']} rows written")
    labelled_n = int(row["labelled"] or 0)
    return {"images": rows_in, "errors": int(row["errors"] or 0), "labelled": labelled_n,
            "accuracy": int(row["correct"] or 0) / labelled_n if labelled_n else None,
            "seconds": round(seconds, 3), "images_per_s": rows_in / seconds if seconds else None}


def format_summary(s: dict) -> str:
    accuracy = f", accuracy {s['accuracy']:.4f} on {s['labelled']} labelled" if s["accuracy"] is not None else ""
    return (f"{s['images']} images ({s['errors']} unreadable) in {s['seconds']:.1f} s: "
            f"{s['images_per_s']:.1f} images/s{accuracy}\npredictions: {s['out']}")


def build_parser():
    return settings_parser(PredictOptions, prog=PROG, description=DESCRIPTION)


@cli
def main(argv: list[str] | None = None) -> dict:
    opts = PredictOptions(**vars(build_parser().parse_args(argv)))
    check_out(opts.out, opts.overwrite, opts.input, marker=SUMMARY)  # before Spark starts
    with spark_session(master=opts.master, conf=opts.spark_conf) as spark:
        summary = predict(spark, opts.model, opts.input, opts.out, batch_size=opts.batch_size,
                          partitions=opts.partitions, overwrite=opts.overwrite)
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
