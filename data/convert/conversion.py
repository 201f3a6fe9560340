"""``convert()``: check the options and the folders, run the Spark job in a staged folder, publish it.

The job itself is :mod:`data.convert.job`; this module owns what surrounds it: the
options, the Spark session and its runtime settings, the atomic publish
(:mod:`data.convert.staging`) and the end-of-run summary.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from data.convert import job, layouts
from data.convert.images import DEFAULT_QUALITY
from data.convert.layouts import LAYOUTS
from data.convert.splits import DEFAULT_SPLIT, Fractions, parse_split
from data.convert.staging import check_out, staged_folder
from data.errors import storage_errors
from data.manifest import REJECTED_CSV, Manifest
from data.settings import check_settings, setting
from data.spark import parse_conf, spark_session


@dataclass
class ConvertOptions:
    """Every setting of a conversion, declared once (:mod:`data.settings`): ``python -m
    data.convert``'s options, :func:`convert`'s keywords and the README's option table."""

    images: str = setting(metavar="DIR", help="image folder (<class>/<image> files) or the Food-101 download")
    out: str = setting(metavar="DIR", help="data set folder to create")
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
        parse_split(self.split)
        if not isinstance(self.spark_conf, dict):  # the command line's ["k=v", ...]
            self.spark_conf = parse_conf(self.spark_conf)

    @property
    def fractions(self) -> Fractions:
        return parse_split(self.split)


def convert(images: str, out: str, *, spark=None, **options: Any) -> Manifest:
    """Convert the image folder ``images`` into the data set folder ``out``.

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
    return run(ConvertOptions(images=images, out=out, **options), spark)


def run(opts: ConvertOptions, spark=None) -> Manifest:
    """:func:`convert` with its options already checked."""
    fractions = opts.fractions
    lay = layouts.detect(opts.images, opts.layout)
    out = check_out(opts.out, opts.overwrite, lay.root)
    options = {"images": os.path.abspath(opts.images), "layout": lay.name, "root": lay.root,
               "split": list(fractions), "seed": opts.seed, "quality": opts.quality, "max_side": opts.max_side,
               "files_per_split": opts.files_per_split, "row_group_mb": opts.row_group_mb}
    with storage_errors(f"writing {out} failed", "nothing was published"), \
            spark_session(spark, master=opts.master, conf=opts.spark_conf) as session, \
            staged_folder(out, opts.overwrite) as tmp:
        started = time.monotonic()
        manifest = job.run(session, lay, tmp, fractions, options, opts.progress)
        seconds = time.monotonic() - started
        processed = sum(s.rows for s in manifest.splits.values()) + manifest.rejected
        manifest.stats.update(seconds=round(seconds, 3), images_per_s=round(processed / max(seconds, 1e-9), 1))
        manifest.save(tmp)
    return manifest


def summary(manifest: Manifest, out: str) -> str:
    """The end-of-run report: images per split, rejected, bytes, speed."""
    s = manifest.splits
    total_bytes = sum(v.bytes for v in s.values())
    lines = [
        f"converted {sum(v.rows for v in s.values())} images in {manifest.num_classes} classes to {out}",
        "  " + ", ".join(f"{k} {v.rows} ({v.files} files, {v.row_groups} row groups)" for k, v in s.items()),
        f"  rejected {manifest.rejected}" + (f" (see {os.path.join(out, REJECTED_CSV)})" if manifest.rejected else "")
        + f", skipped {manifest.stats.get('skipped', 0)} non-image files, "
          f"re-encoded {manifest.stats.get('reencoded', 0)}",
        f"  wrote {total_bytes / 2**20:.1f} MiB in {manifest.stats.get('seconds', 0):.1f} s "
        f"({manifest.stats.get('images_per_s', 0):.0f} images/s)",
    ]
    if manifest.stats.get("ignored_folders"):
        lines.append("  warning: folders starting with '_' are not read (Spark's rule): "
                     + ", ".join(manifest.stats["ignored_folders"]))
    return "\n".join(lines)
