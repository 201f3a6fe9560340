"""``convert()``: check the options and the folders, run the Spark job in a staged folder, publish it.

The job itself is :mod:`data.convert.job`; this module owns what surrounds it: the
options, the Spark session and its runtime settings, the atomic publish
(:mod:`data.convert.staging`) and the end-of-run summary.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

from data.convert import job, layouts
from data.convert.images import DEFAULT_QUALITY
from data.convert.splits import DEFAULT_SPLIT, Fractions, parse_split
from data.convert.staging import check_out, staged_folder
from data.errors import UserError, storage_errors
from data.manifest import REJECTED as REJECTED_CSV
from data.manifest import Manifest

DEFAULT_SEED = 13
RUNTIME_CONF = {
    # Images are large rows: small Arrow batches keep the Python workers lean.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # Spark counts 4 MiB per file opened, which packs only ~30 images into a read task and
    # makes per-task overhead cost more than decoding; a photo is not that costly to open.
    "spark.sql.files.openCostInBytes": str(256 * 1024),
    # ~200 images of 50 KB per read task: several tasks per core, for balance.
    "spark.sql.files.maxPartitionBytes": str(64 * 1024 * 1024),
}


def convert(images: str, out: str, *, split: Fractions | str = DEFAULT_SPLIT, seed: int = DEFAULT_SEED,
            layout: str = "auto", quality: int = DEFAULT_QUALITY, max_side: int | None = None,
            overwrite: bool = False, master: str = "local[*]", spark_conf: dict[str, str] | None = None,
            spark=None, files_per_split: int | None = None, row_group_mb: float | None = None,
            progress: bool = True) -> Manifest:
    """Convert the image folder ``images`` into the data set folder ``out``.

    ``spark``: the SparkSession to use (default: the active one, if any); it is left
    running, and ``spark_conf`` (runtime settings only) is applied for the duration and
    restored. Without one, a session is built on ``master`` with ``spark_conf`` and
    stopped at the end.
    ``files_per_split`` forces the number of Parquet files per split; ``row_group_mb``
    forces the row-group size (default: automatic, see :mod:`data.convert.row_groups`).
    Raises UserError for bad options, a missing or empty input, or a non-empty ``out``.
    """
    fractions = parse_split(split)
    _check_options(quality, max_side, files_per_split, row_group_mb)
    lay = layouts.detect(images, layout)
    out = check_out(out, overwrite, lay.root)
    options = {"images": os.path.abspath(images), "layout": lay.name, "root": lay.root,
               "split": list(fractions), "seed": seed, "quality": quality, "max_side": max_side,
               "files_per_split": files_per_split, "row_group_mb": row_group_mb}
    with storage_errors(f"writing {out} failed", "nothing was published"), \
            _session(spark, master, spark_conf) as session, staged_folder(out, overwrite) as tmp:
        started = time.monotonic()
        manifest = job.run(session, lay, tmp, fractions, options, progress)
        seconds = time.monotonic() - started
        processed = sum(s.rows for s in manifest.splits.values()) + manifest.rejected
        manifest.stats.update(seconds=round(seconds, 3), images_per_s=round(processed / max(seconds, 1e-9), 1))
        manifest.save(tmp)
    return manifest


def _check_options(quality: int, max_side: int | None, files_per_split: int | None,
                   row_group_mb: float | None) -> None:
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise UserError(f"--quality must be an integer from 1 to 100, got {quality!r}")
    if max_side is not None and max_side < 1:
        raise UserError(f"--max-side must be at least 1, got {max_side}")
    if files_per_split is not None and files_per_split < 1:
        raise UserError(f"--files-per-split must be at least 1, got {files_per_split}")
    if row_group_mb is not None and not row_group_mb > 0:
        raise UserError(f"--row-group-mb must be positive, got {row_group_mb}")


@contextlib.contextmanager
def _session(spark, master: str, conf: dict[str, str] | None) -> Iterator[Any]:
    """The SparkSession to use, with the conversion's runtime settings applied."""
    from data.spark import get_spark

    settings = {**RUNTIME_CONF, **(conf or {})}
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()  # e.g. a notebook's: use it, leave it running
    if spark is None:
        session = get_spark(master, settings)
        try:
            yield session
        finally:
            session.stop()
        return
    with runtime_conf(spark, settings):
        yield spark


@contextlib.contextmanager
def runtime_conf(spark, conf: dict[str, str]) -> Iterator[None]:
    """Set runtime SQL settings on a running session for the block, then restore them."""
    saved = {k: spark.conf.get(k, None) for k in conf}
    try:
        for key, value in conf.items():
            try:
                spark.conf.set(key, value)
            except Exception as exc:
                raise UserError(f"cannot set {key} on a running Spark session: {str(exc).splitlines()[0]}") from None
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


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
        lines.append("  warning: Spark does not read folders starting with '_': "
                     + ", ".join(manifest.stats["ignored_folders"]))
    return "\n".join(lines)
