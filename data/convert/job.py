"""The Spark job behind ``data.convert``: read, decode, split, write, count.

Image bytes cross the Python boundary once (decode, cached) and are shuffled once
(per split, into key order). Split membership is computed from small per-class
boundaries: a window over (class, key, path) only finds, for every class, the last
(key, path) of train and of val; each row is then compared with them in SQL.
"""
from __future__ import annotations

import csv
import os

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
    try:
        with spark_progress(spark, "decode", progress):
            stats = decoded.groupBy("status", "class", "part").agg(
                F.count("*").alias("n"), F.sum("nbytes").alias("bytes"),
                F.sum(F.col("converted").cast("long")).alias("converted")).collect()
        rejected = sorted([(r.relpath, r.reason) for r in
                           decoded.where(F.col("status") == REJECTED).select("relpath", "reason").collect()]
                          + [(rel, EMPTY_FILE) for rel in lay.empty_files()])
        classes = lay.class_order([r["class"] for r in stats if r.status in (KEPT, REJECTED)]
                                  + [rel.split("/")[0] for rel, _ in rejected])
        strata = {(r["class"], r.part): (r.n, r.bytes) for r in stats if r.status == KEPT}
        _check_found(lay, strata, rejected)
        kept = decoded.where(F.col("status") == KEPT)
        with spark_progress(spark, "split", progress):
            assigned = _assign(spark, kept, strata, fractions, classes)
        splits = {}
        for name, (per_class, est_bytes) in split_rows(strata, fractions, classes).items():
            plan = plan_split(sum(per_class), est_bytes, options["files_per_split"], options["row_group_mb"])
            with spark_progress(spark, f"write {name}", progress):
                _write_split(assigned.where(F.col("split") == name), plan, os.path.join(tmp, name))
            splits[name] = SplitInfo(rows=sum(per_class), per_class=per_class,
                                     **read_footers(os.path.join(tmp, name), sum(per_class)))
        _write_rejected(os.path.join(tmp, REJECTED_CSV), rejected)
        return Manifest(classes=classes, splits=splits, rejected=len(rejected), options=options, stats={
            "skipped": sum(r.n for r in stats if r.status == SKIPPED),
            "reencoded": sum(r.converted or 0 for r in stats if r.status == KEPT),
            "ignored_folders": lay.spark_ignored_folders()})
    finally:
        decoded.unpersist()
        layout_bc.destroy()


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


def _assign(spark, kept, strata: Strata, fractions: Fractions, classes: list[str]):
    """Kept rows with ``split`` and ``label`` columns (and ``path`` = relative path)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ends = {s: split_counts(n, stratum_fractions(s[1], fractions)) for s, (n, _) in strata.items()}
    ranks = {s: (t, t + v) for s, (t, v, _) in ends.items()}
    wanted = [(c, p, r) for (c, p), rs in ranks.items() for r in set(rs) if r > 0]
    edge: dict[tuple[str, str, int], tuple[str, str]] = {}
    if wanted:
        w = Window.partitionBy("class", "part").orderBy("key", "relpath")
        ranked = kept.select("class", "part", "key", "relpath").withColumn("rn", F.row_number().over(w))
        wanted_df = spark.createDataFrame(wanted, "class string, part string, rn int")
        for r in ranked.join(F.broadcast(wanted_df), ["class", "part", "rn"]).collect():
            edge[(r["class"], r.part, r.rn)] = (r.key, r.relpath)
    bounds = spark.createDataFrame(
        [(c, p, classes.index(c), edge.get((c, p, t)), edge.get((c, p, tv))) for (c, p), (t, tv) in ranks.items()],
        BOUNDS_SCHEMA)
    point = F.struct("key", "relpath")
    split = (F.when(F.col("train_last").isNotNull() & (point <= F.col("train_last")), "train")
             .when(F.col("val_last").isNotNull() & (point <= F.col("val_last")), "val").otherwise("test"))
    return (kept.join(F.broadcast(bounds), ["class", "part"])
            .select("image", "label", F.col("relpath").alias("path"), "width", "height", "key",
                    split.alias("split")))


def _write_split(rows, plan: RowGroupPlan, path: str) -> None:
    """Write one split in (key, path) order: file i holds the i-th range of keys."""
    spread = rows.repartition(1) if plan.files == 1 else rows.repartitionByRange(plan.files, "key", "path")
    ordered = spread.sortWithinPartitions("key", "path").select(*OUTPUT_COLUMNS)
    (ordered.write.mode("errorifexists").option("compression", "uncompressed")
     .option("parquet.block.size", str(plan.row_group_bytes)).parquet(path))


def _write_rejected(path: str, rejected: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(rejected)
