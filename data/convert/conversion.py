"""``convert()``: check the options, the input and the output, run the Spark job, publish the result.

The job itself is :mod:`data.convert.job`; this module owns what surrounds it: the
options, the input (an image folder, local or in S3, or a DataFrame/table:
:mod:`data.convert.frames`), the Spark session and its runtime settings, the publish
(:mod:`data.staging`: a staged folder renamed, or in S3 the manifest written last)
and the end-of-run summary.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from data.convert import frames, job, layouts
from data.files import join
from data.images import DEFAULT_QUALITY
from data.convert.layouts import LAYOUTS
from data.convert.splits import DEFAULT_SPLIT, Fractions, parse_split
from data.staging import check_out, publish, save_manifest
from data.errors import UserError, storage_errors
from data.manifest import REJECTED_CSV, Manifest
from data.object_store import aws_variables, is_s3
from data.settings import check_settings, setting
from data.spark import parse_conf, spark_session


@dataclass
class ConvertOptions:
    """Every setting of a conversion, declared once (:mod:`data.settings`): ``python -m
    data.convert``'s options, :func:`convert`'s keywords and the README's option table."""

    out: str = setting(metavar="DIR|URL", help="data set folder to create, on disk or in S3 (s3://bucket/prefix)")
    images: str | None = setting(None, metavar="DIR|URL", doc="",
                                 help="image folder (<class>/<image> files) or the Food-101 download, on disk or "
                                      "in S3 (s3://bucket/prefix, s3a:// alike); or give --table")
    table: str | None = setting(None, metavar="NAME|DIR",
                                help="instead of --images: a catalog table, or a Parquet folder Spark reads, "
                                     "with one row per image (columns below)")
    image_column: str | None = setting(None, metavar="COL",
                                       help="with --table: the image bytes (binaryFile's content); without it "
                                            "the image is read from --path-column")
    path_column: str = setting("path", metavar="COL",
                               help="with --table: the image's path or URL (read when there is no --image-column); "
                                    "the row's key unless --id-column")
    label_column: str = setting("label", metavar="COL",
                                help="with --table: the label, class names or integers")
    id_column: str | None = setting(None, metavar="COL",
                                    help="with --table: a unique, stable key per row (split key and stored path) "
                                         "instead of the path")
    class_names: list[str] | None = setting(None, repeat=True, metavar="NAME", doc="0, 1, ...",
                                            help="with --table and integer labels: the class names, in label order")
    layout: str = setting("auto", choices=LAYOUTS,
                          help="input layout: folder, food101, or auto (food101 when its meta files are there)")
    split: str | Fractions = setting(",".join(f"{v:g}" for v in DEFAULT_SPLIT), metavar="T,V,E",
                                     help="train,val,test fractions (non-negative, sum 1)")
    seed: int = setting(13, metavar="N", help="split seed")
    quality: int = setting(DEFAULT_QUALITY, minimum=1, maximum=100, metavar="Q",
                           help="JPEG quality for images that must be re-encoded")
    max_side: int | None = setting(None, minimum=1, metavar="N",
                                   help="shrink images whose longer side exceeds N (aspect kept)")
    overwrite: bool = setting(False, help="replace an existing converted data set at --out")
    master: str = setting("local[*]", metavar="URL", help="Spark master; the same command runs on a cluster")
    spark_conf: dict[str, str] = setting(factory=dict, repeat=True, metavar="K=V", doc="",
                                         help="any other Spark setting (repeatable)")
    files_per_split: int | None = setting(None, minimum=1, metavar="N", doc="auto",
                                          help="force N Parquet files per split")
    row_group_mb: float | None = setting(None, above=0, metavar="M", doc="auto (≤ 8)",
                                         help="force the Parquet row-group size (MiB)")
    progress: bool = setting(True, help="no progress bars (the summary is still printed)")

    def __post_init__(self) -> None:
        check_settings(self)
        if (self.images is None) == (self.table is None):
            raise UserError("give the images with --images DIR|URL or --table NAME|DIR (one of them)")
        parse_split(self.split)
        self.spark_conf = parse_conf(self.spark_conf)  # the command line's ["k=v", ...], or a dict

    @property
    def fractions(self) -> Fractions:
        return parse_split(self.split)


def convert(images, out: str, *, spark=None, **options: Any) -> Manifest:
    """Convert ``images`` (an image folder or URL, or a Spark DataFrame with one row per
    image: ``image_column`` or ``path_column``, ``label_column``, ``id_column``,
    ``class_names`` name its columns) into the data set ``out`` (a folder or an S3 URL).

    ``options``: any other setting of :class:`ConvertOptions` by name (``split``, ``seed``,
    ``layout``, ``quality``, ``max_side``, ``overwrite``, ``master``, ``spark_conf`` as a
    dict, ``files_per_split``, ``row_group_mb``, ``progress``), defaults as on the command line.
    ``spark``: the SparkSession to use (default: the active one, if any); it is left
    running, and ``spark_conf`` (runtime settings only) is applied for the duration and
    restored. Without one, a session is built on ``master`` with ``spark_conf`` and
    stopped at the end. ``files_per_split`` / ``row_group_mb`` force the files and row groups
    (default: automatic, see :mod:`data.convert.row_groups`).
    Raises UserError for bad options, a missing or empty input, or a non-empty ``out``.
    """
    key = "images" if isinstance(images, str) else "table"
    return run(ConvertOptions(out=out, **{key: images}, **options), spark)


def run(opts: ConvertOptions, spark=None) -> Manifest:
    """:func:`convert` with its options already checked."""
    fractions = opts.fractions
    # Handed to every task that reads or writes S3 (a DataFrame's paths may be URLs too), so
    # executors need no environment of their own.
    storage = aws_variables()
    lay = layouts.detect(opts.images, opts.layout, storage) if opts.images is not None else None
    out = check_out(opts.out, opts.overwrite, lay.root if lay else None, storage=storage)
    run_id = uuid.uuid4().hex[:8]
    with storage_errors(f"writing {out} failed", "nothing was published"), \
            spark_session(spark, master=opts.master, conf=opts.spark_conf) as session:
        source = lay or frames.frame_source(session, opts.table, image_column=opts.image_column,
                                            path_column=opts.path_column, label_column=opts.label_column,
                                            id_column=opts.id_column, class_names=opts.class_names)
        options = {"images": opts.images if lay is None or is_s3(opts.images) else os.path.abspath(opts.images),
                   "layout": source.name, "root": source.root, "split": list(fractions), "seed": opts.seed,
                   "quality": opts.quality, "max_side": opts.max_side, "files_per_split": opts.files_per_split,
                   "row_group_mb": opts.row_group_mb}
        with publish(out, opts.overwrite, run_id, storage) as folder:
            started = time.monotonic()
            manifest, rejected = job.run(session, source, folder, run_id, fractions, options, opts.progress, storage)
            seconds = time.monotonic() - started
            processed = sum(s.rows for s in manifest.splits.values()) + manifest.rejected
            manifest.stats.update(seconds=round(seconds, 3), images_per_s=round(processed / max(seconds, 1e-9), 1))
            save_manifest(folder, manifest, storage)  # last of the data set: in S3, the commit
            job.write_rejected(folder, rejected, storage)
    return manifest


def summary(manifest: Manifest, out: str) -> str:
    """The end-of-run report: images per split, rejected, bytes, speed."""
    s = manifest.splits
    total_bytes = sum(v.bytes for v in s.values())
    lines = [
        f"converted {sum(v.rows for v in s.values())} images in {manifest.num_classes} classes to {out}",
        "  " + ", ".join(f"{k} {v.rows} ({v.files} files, {v.row_groups} row groups)" for k, v in s.items()),
        f"  rejected {manifest.rejected}" + (f" (see {join(out, REJECTED_CSV)})" if manifest.rejected else "")
        + f", skipped {manifest.stats.get('skipped', 0)} non-image files, "
          f"re-encoded {manifest.stats.get('reencoded', 0)}",
        f"  wrote {total_bytes / 2**20:.1f} MiB in {manifest.stats.get('seconds', 0):.1f} s "
        f"({manifest.stats.get('images_per_s', 0):.0f} images/s)",
    ]
    if manifest.stats.get("ignored_folders"):
        lines.append("  warning: folders starting with '_' are not read (Spark's rule): "
                     + ", ".join(manifest.stats["ignored_folders"]))
    return "\n".join(lines)
