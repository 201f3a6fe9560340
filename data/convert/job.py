"""The Spark job behind ``data.convert``: decode, split, write, count.

Stages (their wall times go to the manifest's ``stats.stage_seconds``):

* ``decode``: for a folder, the driver lists the files
  (:meth:`~data.convert.layouts.Layout.listing`) and one Spark job over their paths, a few
  large tasks per core (:func:`decode_tasks`), reads and fully decodes them (no Spark file
  source, no Arrow, no SQL: a task's cost is its decoding); a DataFrame is decoded where
  Spark holds its rows (:mod:`data.convert.frames`). Only metadata (status, class, path,
  reason, size, pixel size, where to read it again: no image bytes, about 100 bytes an
  image) comes to the driver;
* ``split``: on the driver, from that metadata: split keys, counts, rejected images,
  every kept image's split and the split's files (equal row-count ranges in (key, path)
  order);
* ``write``: one Spark job, one task per core, each writing its share of the output
  files (:func:`balance`), reading their images again and writing with pyarrow
  (:mod:`data.convert.writer`): no image byte goes through the JVM or the driver.

Files are written under ``folder`` (a staged local folder, or the S3 prefix itself),
named for the conversion (:func:`~data.convert.writer.file_name`); the manifest returned
names them, and nothing is read from ``folder`` except through it.

A Python task costs Spark about 0.1-0.2 s of a core whatever it does (94 empty tasks
took 6.7 s on 2 cores here), so both jobs use few, large tasks.
"""
from __future__ import annotations

import contextlib
import csv
import io
import time
from typing import Iterator

import numpy as np
import pandas as pd

from data.convert import frames, layouts
from data.files import join, open_file, remove_tree
from data.image_folder import IMAGE_EXTENSIONS
from data.images import EMPTY_FILE
from data.convert.progress import spark_progress
from data.convert.row_groups import RowGroupPlan, plan_split, read_footers
from data.convert.rows import DECODED_COLUMNS, KEPT, REJECTED, SKIPPED, decoded_files
from data.convert.splits import SPLIT_NAMES, Fractions, renormalise_without_test, split_counts, split_key
from data.convert.writer import OUTPUT_COLUMNS, FileTask, file_name, write_file
from data.errors import UserError
from data.manifest import REJECTED_CSV, Manifest, SplitInfo

__all__ = ["OUTPUT_COLUMNS", "run"]
FILES_PER_TASK = 2000  # at most, in a decode task: several tasks per core on big inputs
TASKS_PER_CORE = 2  # at least, while there are files: balance across cores
STASH_DIR = "_converted-{run}"  # under the output: JPEGs between decode and write (Spark skips "_" names)

Strata = dict[tuple[str, str], tuple[int, int]]  # (class, part) -> (kept images, their bytes)
Source = layouts.Layout | frames.FrameSource


def run(spark, source: Source, folder: str, run_id: str, fractions: Fractions, options: dict, progress: bool,
        storage: dict[str, str] | None) -> tuple[Manifest, list[tuple[str, str]]]:
    """Convert ``source`` (an image folder's layout or a DataFrame) into data files under
    ``folder``; return the manifest (not yet saved) and the rejected ``(path, reason)``."""
    sc = spark.sparkContext
    stash = join(folder, STASH_DIR.format(run=run_id))
    stages: dict[str, float] = {}
    quality, max_side = options["quality"], options["max_side"]
    if isinstance(source, frames.FrameSource):
        decoded = frames.decoded_frame(spark, source, TASKS_PER_CORE * sc.defaultParallelism, quality, max_side,
                                       stash, storage)
    else:
        decoded = decoded_files(spark, source, lambda n: decode_tasks(n, sc.defaultParallelism), quality,
                                max_side, stash, storage)
    try:
        with _stage(spark, "decode", progress, stages), decoded as (found, empty):  # the one pass that decodes
            meta = pd.DataFrame(found.collect(), columns=DECODED_COLUMNS)
        with _stage(spark, "split", progress, stages):
            meta, rejected = _keyed(meta, source, options["seed"], empty)
            kept = meta[meta.status == KEPT]
            classes = source.class_order(list(kept["class"]) + [c for c in meta[meta.status == REJECTED]["class"]
                                                                 if c is not None]
                                         + [rel.split("/")[0] for rel in empty])
            strata = {(c, p): (len(g), int(g.nbytes.sum())) for (c, p), g in kept.groupby(["class", "part"])}
            _check_found(source, strata, rejected)
            per_split = split_rows(strata, fractions, classes)
            plans = {name: plan_split(sum(per_class), est_bytes, options["files_per_split"], options["row_group_mb"])
                     for name, (per_class, est_bytes) in per_split.items()}
            tasks = _file_tasks(kept, strata, fractions, classes, plans, folder, run_id, storage)
        with _stage(spark, "write", progress, stages):
            shares = balance(tasks, sc.defaultParallelism)
            sc.parallelize(shares, len(shares)).map(lambda share: [write_file(t) for t in share]).collect()
    finally:
        remove_tree(stash, storage)
    splits = {}
    for name, (per_class, _) in per_split.items():
        paths = [f"{name}/{file_name(i, run_id)}" for i in range(plans[name].files)]
        splits[name] = SplitInfo(rows=sum(per_class), per_class=per_class, paths=paths,
                                 **read_footers([join(folder, p) for p in paths], sum(per_class), storage))
    return Manifest(classes=classes, splits=splits, rejected=len(rejected), options=options, stats={
        "skipped": int((meta.status == SKIPPED).sum()),
        "reencoded": int(kept.converted.sum()),
        "ignored_folders": source.spark_ignored_folders(),
        "stage_seconds": stages}), rejected


def _keyed(meta: pd.DataFrame, source: Source, seed: int, empty: list[str]):
    """``meta`` with relative paths (a DataFrame's keys, made unique) and split keys; and the
    sorted rejected ``(path, reason)``, zero-byte files ``empty`` included."""
    if isinstance(source, frames.FrameSource):
        if source.relative:
            meta["relpath"] = frames.relative_keys(list(meta.relpath))
        twice = meta.relpath.duplicated(keep=False) & (meta.status == KEPT)
        meta.loc[twice, ["status", "reason"]] = [REJECTED, frames.DUPLICATE_KEY]
    meta["key"] = [split_key(seed, rel) for rel in meta.relpath]
    bad = meta[meta.status == REJECTED]
    return meta, sorted(list(zip(bad.relpath, bad.reason)) + [(rel, EMPTY_FILE) for rel in empty])


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


def _check_found(source: Source, strata: Strata, rejected: list[tuple[str, str]]) -> None:
    if strata:
        return
    if rejected:
        examples = "; ".join(f"{p}: {r}" for p, r in rejected[:3])
        where = f"rows of {source.root}" if isinstance(source, frames.FrameSource) else f"image files under {source.root}"
        raise UserError(f"none of the {len(rejected)} {where} could be read ({examples})")
    if isinstance(source, frames.FrameSource):
        raise UserError(f"{source.root} has no rows")
    exts = " ".join(IMAGE_EXTENSIONS)
    raise UserError(f"no images found under {source.root} (looked for {exts} files inside class folders)")


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
                folder: str, run_id: str, storage: dict[str, str] | None) -> list[FileTask]:
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
        rows = [(rel, labels[cls], int(w), int(h), int(nb), src) for rel, cls, w, h, nb, src in zip(
            members.relpath, members["class"], members.width, members.height, members.nbytes, members.source)]
        for i in range(plan.files):
            part = rows[i * len(rows) // plan.files:(i + 1) * len(rows) // plan.files]
            tasks.append(FileTask(join(folder, f"{name}/{file_name(i, run_id)}"), plan.row_group_bytes, part,
                                  storage))
    return tasks


def write_rejected(folder: str, rejected: list[tuple[str, str]], storage: dict[str, str] | None) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "reason"])
    writer.writerows(rejected)
    with open_file(join(folder, REJECTED_CSV), "wb", storage) as f:
        f.write(text.getvalue().encode("utf-8"))
