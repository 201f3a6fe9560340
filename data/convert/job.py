"""The Spark job behind ``data.convert``: read, decode, split, write, count.

Stages (their wall times go to the manifest's ``stats.stage_seconds``):

* ``decode``: the one pass that decodes: image bytes cross the Python boundary once,
  the results are cached, and the same job brings each file's metadata (status, class,
  key, path, reason, size: no image bytes) to the driver as Arrow;
* ``split``: on the driver, from that metadata: counts, rejected files, and for every
  class the last (key, path) of train and of val; each row is then compared with them
  in SQL (no Spark job);
* ``write``: the three splits at once, each from the cache, shuffled once into
  (key, path) order.
"""
from __future__ import annotations

import contextlib
import csv
import os
import time
from typing import Iterator

import numpy as np

from data.convert import layouts
from data.convert.images import EMPTY_FILE
from data.convert.progress import spark_progress
from data.convert.row_groups import RowGroupPlan, plan_split, read_footers
from data.convert.rows import DECODED_SCHEMA, KEPT, REJECTED, SKIPPED, decode_batches
from data.convert.splits import SPLIT_NAMES, Fractions, renormalise_without_test, split_counts
from data.errors import UserError
from data.manifest import REJECTED_CSV, Manifest, SplitInfo

OUTPUT_COLUMNS = ("image", "label", "path", "width", "height")
EDGE_TYPE = "struct<key:string,relpath:string>"
BOUNDS_SCHEMA = f"class string, part string, label long, train_last {EDGE_TYPE}, val_last {EDGE_TYPE}"

# What the driver collects of every file: never the image bytes (about 100 bytes a file).
META_COLUMNS = ("status", "class", "part", "key", "relpath", "reason", "nbytes", "converted")

Strata = dict[tuple[str, str], tuple[int, int]]  # (class, part) -> (kept images, their bytes)


def run(spark, lay: layouts.Layout, tmp: str, fractions: Fractions, options: dict, progress: bool) -> Manifest:
    """Convert the images of ``lay`` into ``tmp``; return the manifest (not yet saved)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    layout_bc = spark.sparkContext.broadcast(lay)
    fn = decode_batches(layout_bc, _qualified(spark, lay.root), options["seed"], options["quality"],
                        options["max_side"])
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .option("pathGlobFilter", layouts.image_glob()).load(lay.root).select("path", "content"))
    decoded = files.mapInPandas(fn, DECODED_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
    stages: dict[str, float] = {}
    try:
        with _stage(spark, "decode", progress, stages):  # the one pass that decodes; it fills the cache
            meta = decoded.select(*META_COLUMNS).toPandas()
        with _stage(spark, "split", progress, stages):
            bad = meta[meta.status == REJECTED]
            rejected = sorted(list(zip(bad.relpath, bad.reason)) + [(rel, EMPTY_FILE) for rel in lay.empty_files()])
            kept = meta[meta.status == KEPT]
            classes = lay.class_order(list(kept["class"]) + list(bad["class"]) + [rel.split("/")[0] for rel, _ in rejected])
            strata = {(c, p): (len(g), int(g.nbytes.sum())) for (c, p), g in kept.groupby(["class", "part"])}
            _check_found(lay, strata, rejected)
            per_split = split_rows(strata, fractions, classes)
            plans = {name: plan_split(sum(per_class), est_bytes, options["files_per_split"], options["row_group_mb"])
                     for name, (per_class, est_bytes) in per_split.items()}
            assigned = _assign(spark, decoded.where(F.col("status") == KEPT), kept, strata, fractions, classes, plans)
        with _stage(spark, "write", progress, stages):
            _write_splits(assigned, plans, tmp)
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
        decoded.unpersist()
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


def _qualified(spark, path: str) -> str:
    """The root as Spark writes it in ``binaryFile`` paths (e.g. ``file:/a/b``)."""
    hpath = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return str(fs.makeQualified(hpath).toString())


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


def _assign(spark, kept_rows, kept, strata: Strata, fractions: Fractions, classes: list[str],
            plans: dict[str, RowGroupPlan]):
    """``kept_rows`` (the cached kept images) with ``split``, ``label`` and ``file`` (the index of
    the split's file it goes to) columns, and ``path`` = relative path. ``kept`` holds their
    (class, part, key, relpath) on the driver: the split rule and the file ranges (equal row
    counts, in (key, path) order) are worked out there, as a few boundary (key, path) pairs
    that each row is compared with in SQL."""
    from pyspark.sql import functions as F

    ranked = kept.sort_values(["key", "relpath"], ignore_index=True)  # code point order = Spark's UTF-8 order
    rank = ranked.groupby(["class", "part"], sort=False).cumcount().to_numpy()  # within its class, from 0
    cuts = {s: np.cumsum(split_counts(n, stratum_fractions(s[1], fractions))) for s, (n, _) in strata.items()}
    ends = np.array([cuts[s] for s in zip(ranked["class"], ranked.part)]).reshape(-1, 3)
    split = np.where(rank < ends[:, 0], "train", np.where(rank < ends[:, 1], "val", "test"))
    point = F.struct("key", "relpath")
    rows = []
    for (cls, part), group in ranked.assign(split=split).groupby(["class", "part"], sort=False):
        edges = [_edge(group[group.split.isin(names)]) for names in (["train"], ["train", "val"])]
        rows.append((cls, part, classes.index(cls), *edges))
    bounds = spark.createDataFrame(rows, BOUNDS_SCHEMA)
    split_col = (F.when(F.col("train_last").isNotNull() & (point <= F.col("train_last")), "train")
                 .when(F.col("val_last").isNotNull() & (point <= F.col("val_last")), "val").otherwise("test"))
    file_col = F.lit(0)
    for name, plan in plans.items():
        members = ranked[split == name]
        for i in range(1, plan.files):  # file i starts after the last row of file i - 1
            key, rel = members.iloc[i * len(members) // plan.files - 1][["key", "relpath"]]
            after = point > F.struct(F.lit(key).alias("key"), F.lit(rel).alias("relpath"))
            file_col = file_col + F.when((split_col == name) & after, 1).otherwise(0)
    return (kept_rows.join(F.broadcast(bounds), ["class", "part"])
            .select("image", "label", F.col("relpath").alias("path"), "width", "height", "key",
                    split_col.alias("split"), file_col.alias("file")))


def _edge(rows) -> tuple[str, str] | None:
    """The last (key, relpath) of rows in (key, relpath) order, or None if there are none."""
    return (rows.key.iloc[-1], rows.relpath.iloc[-1]) if len(rows) else None


def _write_splits(assigned, plans: dict[str, RowGroupPlan], tmp: str) -> None:
    """Write every split at once (one Spark job each, from its own thread): a small split's
    write is one task, so run alone it would leave the other cores idle."""
    from pyspark import InheritableThread
    from pyspark.sql import functions as F

    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            _write_split(assigned.where(F.col("split") == name), plans[name], os.path.join(tmp, name))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [InheritableThread(target=write, args=(name,), name=f"sparkdp-write-{name}") for name in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _write_split(rows, plan: RowGroupPlan, path: str) -> None:
    """Write one split in (key, path) order: file i holds the i-th of ``plan.files`` ranges
    of equal row counts (the ``file`` column). A one-file split is read from the cache by one
    task, without a shuffle (its bytes written to disk and read back once more)."""
    from pyspark.sql import functions as F

    if plan.files == 1:
        spread = rows.coalesce(1)
    else:  # task i writes file i: hash partitioning sends bucket value i to partition i
        buckets = F.array(*[F.lit(v).cast("long") for v in _identity_buckets(rows.sparkSession, plan.files)])
        spread = rows.repartition(plan.files, F.element_at(buckets, F.col("file") + 1))
    ordered = spread.sortWithinPartitions("key", "path").select(*OUTPUT_COLUMNS)
    (ordered.write.mode("errorifexists").option("compression", "uncompressed")
     .option("parquet.block.size", str(plan.row_group_bytes)).parquet(path))


def _identity_buckets(spark, n: int) -> list[int]:
    """For i in 0..n-1, a long that ``repartition(n, column)`` (Spark's Murmur3 hash with
    seed 42, mod n, which SQL's ``hash`` computes) sends to partition i."""
    from pyspark.sql import functions as F

    found: dict[int, int] = {}
    for r in spark.range(0, 64 * n).select("id", F.expr(f"pmod(hash(id), {n})").alias("p")).collect():
        found.setdefault(r.p, r.id)
    return [found[i] for i in range(n)]


def _write_rejected(path: str, rejected: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(rejected)
