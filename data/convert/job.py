"""The Spark job behind ``data.convert``: decode, split, write, count.

Stages (their wall times go to the manifest's ``stats.stage_seconds``):

* ``decode``: the driver lists the files (:meth:`~data.convert.layouts.Layout.listing`);
  one Spark job over their paths, a few large tasks per core
  (:func:`decode_tasks`): each Python task reads its files from disk and fully decodes
  them; only their metadata (status, class, key, path, reason, size, pixel size: no image
  bytes, about 100 bytes a file) comes to the driver. No Spark file source, no Arrow, no
  SQL: a task's cost is its decoding;
* ``split``: on the driver, from that metadata: counts, rejected files, every kept
  image's split and the split's files (equal row-count ranges in (key, path) order);
* ``write``: one Spark job, one task per core, each writing its share of the output
  files (:func:`balance`), reading their images from disk and writing with pyarrow
  (:mod:`data.convert.writer`): no image byte goes through the JVM or the driver.

A Python task costs Spark about 0.1-0.2 s of a core whatever it does (94 empty tasks
took 6.7 s on 2 cores here), so both jobs use few, large tasks.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import time
from typing import Iterator

import numpy as np
import pandas as pd

from data.convert import layouts
from data.convert.images import EMPTY_FILE
from data.convert.progress import spark_progress
from data.convert.row_groups import RowGroupPlan, plan_split, read_footers
from data.convert.rows import DECODED_COLUMNS, KEPT, REJECTED, SKIPPED, decode_partition
from data.convert.splits import SPLIT_NAMES, Fractions, renormalise_without_test, split_counts
from data.convert.writer import OUTPUT_COLUMNS, FileTask, file_name, write_file
from data.errors import UserError
from data.manifest import REJECTED_CSV, Manifest, SplitInfo

__all__ = ["OUTPUT_COLUMNS", "run"]
FILES_PER_TASK = 2000  # at most, in a decode task: several tasks per core on big inputs
TASKS_PER_CORE = 2  # at least, while there are files: balance across cores
CONVERTED_DIR = "_converted"  # in the staging folder: re-encoded JPEGs, between decode and write

Strata = dict[tuple[str, str], tuple[int, int]]  # (class, part) -> (kept images, their bytes)


def run(spark, lay: layouts.Layout, tmp: str, fractions: Fractions, options: dict, progress: bool) -> Manifest:
    """Convert the images of ``lay`` into ``tmp``; return the manifest (not yet saved)."""
    layout_bc = spark.sparkContext.broadcast(lay)
    converted_dir = os.path.join(tmp, CONVERTED_DIR)
    os.mkdir(converted_dir)
    decode = decode_partition(layout_bc, options["seed"], options["quality"], options["max_side"], converted_dir)
    files, empty = lay.listing()
    sc = spark.sparkContext
    stages: dict[str, float] = {}
    try:
        with _stage(spark, "decode", progress, stages):  # the one pass that decodes
            found = sc.parallelize(files, decode_tasks(len(files), sc.defaultParallelism))
            meta = pd.DataFrame(found.mapPartitions(decode).collect(), columns=DECODED_COLUMNS)
        with _stage(spark, "split", progress, stages):
            bad = meta[meta.status == REJECTED]
            rejected = sorted(list(zip(bad.relpath, bad.reason)) + [(rel, EMPTY_FILE) for rel in empty])
            kept = meta[meta.status == KEPT]
            classes = lay.class_order(list(kept["class"]) + [rel.split("/")[0] for rel, _ in rejected])
            strata = {(c, p): (len(g), int(g.nbytes.sum())) for (c, p), g in kept.groupby(["class", "part"])}
            _check_found(lay, strata, rejected)
            per_split = split_rows(strata, fractions, classes)
            plans = {name: plan_split(sum(per_class), est_bytes, options["files_per_split"], options["row_group_mb"])
                     for name, (per_class, est_bytes) in per_split.items()}
            tasks = _file_tasks(kept, strata, fractions, classes, plans, lay.root, tmp, converted_dir)
        with _stage(spark, "write", progress, stages):
            shares = balance(tasks, sc.defaultParallelism)
            sc.parallelize(shares, len(shares)).map(lambda share: [write_file(t) for t in share]).collect()
        shutil.rmtree(converted_dir)
        splits = {name: SplitInfo(rows=sum(per_class), per_class=per_class,
                                  **read_footers(os.path.join(tmp, name), sum(per_class)))
                  for name, (per_class, _) in per_split.items()}
        _write_rejected(os.path.join(tmp, REJECTED_CSV), rejected)
        return Manifest(classes=classes, splits=splits, rejected=len(rejected), options=options, stats={
            "skipped": int((meta.status == SKIPPED).sum()),
            "reencoded": int(kept.converted.sum()),
            "ignored_folders": lay.spark_ignored_folders(),
            "stage_seconds": stages})
    finally:
        layout_bc.destroy()


@contextlib.contextmanager
def _stage(spark, name: str, progress: bool, seconds: dict[str, float]) -> Iterator[None]:
    """A stage of the job: its own progress bar, its wall time added to ``seconds[name]``."""
    started = time.monotonic()
    try:
        with spark_progress(spark, name, progress):
            yield
    finally:
        seconds[name] = round(seconds.get(name, 0.0) + time.monotonic() - started, 3)


def decode_tasks(files: int, cores: int) -> int:
    """Decode tasks for ``files`` files on ``cores`` cores: few and large (on 2 cores,
    3,000 images decoded at ~310 images/s in 94 tasks and ~1,000/s in 8), but at least
    TASKS_PER_CORE per core for balance."""
    return max(1, min(files, max(TASKS_PER_CORE * cores, -(-files // FILES_PER_TASK))))


def balance(tasks: list[FileTask], shares: int) -> list[list[FileTask]]:
    """``tasks`` in at most ``shares`` groups of about equal image bytes (largest first,
    each to the lightest group), each group in output order."""
    weight = [sum(r[4] for r in t.rows) for t in tasks]
    groups: list[list[int]] = [[] for _ in range(max(1, min(shares, len(tasks))))]
    load = [0] * len(groups)
    for k in sorted(range(len(tasks)), key=lambda k: -weight[k]):
        i = load.index(min(load))
        groups[i].append(k)
        load[i] += weight[k]
    return [[tasks[k] for k in sorted(g)] for g in groups if g]


def _check_found(lay: layouts.Layout, strata: Strata, rejected: list[tuple[str, str]]) -> None:
    if strata:
        return
    if rejected:
        examples = "; ".join(f"{p}: {r}" for p, r in rejected[:3])
        raise UserError(f"none of the {len(rejected)} image files under {lay.root} could be read ({examples})")
    exts = " ".join(layouts.IMAGE_EXTENSIONS)
    raise UserError(f"no images found under {lay.root} (looked for {exts} files inside class folders)")


def stratum_fractions(part: str, fractions: Fractions) -> Fractions:
    """Food-101: the official test list stays test, val is carved out of official train."""
    if part == "test":
        return 0.0, 0.0, 1.0
    if part == "train":
        return renormalise_without_test(fractions)
    return fractions


def split_rows(strata: Strata, fractions: Fractions, classes: list[str]) -> dict[str, tuple[list[int], int]]:
    """Per split: rows per label (by the split rule) and estimated bytes."""
    labels = {c: i for i, c in enumerate(classes)}
    per_class = {name: [0] * len(classes) for name in SPLIT_NAMES}
    est = dict.fromkeys(SPLIT_NAMES, 0.0)
    for (cls, part), (n, nbytes) in strata.items():
        for name, count in zip(SPLIT_NAMES, split_counts(n, stratum_fractions(part, fractions))):
            per_class[name][labels[cls]] += count
            est[name] += nbytes * count / n
    return {name: (per_class[name], int(est[name])) for name in SPLIT_NAMES}


def _file_tasks(kept, strata: Strata, fractions: Fractions, classes: list[str], plans: dict[str, RowGroupPlan],
                root: str, tmp: str, converted_dir: str) -> list[FileTask]:
    """The output files, each with its rows' metadata in stored order. Within a class, rows
    in (key, path) order go to train, val, test by the split rule; a split's rows, in
    (key, path) order, are cut into ``plan.files`` equal-count ranges, file i the i-th."""
    ranked = kept.sort_values(["key", "relpath"], ignore_index=True)  # code point order
    rank = ranked.groupby(["class", "part"], sort=False).cumcount().to_numpy()  # within its class, from 0
    cuts = {s: np.cumsum(split_counts(n, stratum_fractions(s[1], fractions))) for s, (n, _) in strata.items()}
    ends = np.array([cuts[s] for s in zip(ranked["class"], ranked.part)]).reshape(-1, 3)
    split = np.where(rank < ends[:, 0], "train", np.where(rank < ends[:, 1], "val", "test"))
    labels = {c: i for i, c in enumerate(classes)}
    tasks = []
    for name, plan in plans.items():
        members = ranked[split == name]
        rows = [(rel, labels[cls], int(w), int(h), int(nb), bool(cv)) for rel, cls, w, h, nb, cv in zip(
            members.relpath, members["class"], members.width, members.height, members.nbytes, members.converted)]
        for i in range(plan.files):
            part = rows[i * len(rows) // plan.files:(i + 1) * len(rows) // plan.files]
            tasks.append(FileTask(os.path.join(tmp, name, file_name(i)), plan.row_group_bytes, root,
                                  converted_dir, part))
    return tasks


def _write_rejected(path: str, rejected: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(rejected)
