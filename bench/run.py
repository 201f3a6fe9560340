"""A benchmark run: ``python -m bench --images DIR --out-json FILE [options]`` (options: :mod:`bench.options`).

Converts DIR with :mod:`data.convert` when no Parquet is given (and a ``--max-side 256``
copy for ``project_resized``; Spark starts only for these and ``petastorm_converter``), then
measures side by side, in interleaved rounds, with the same augmentation, batch size
and worker count: ``raw_files``, ``petastorm_converter``, ``project``, ``project_resized``,
``decode_ceiling`` (cores x one core's decode+transform rate) and, on CUDA (or when
named), ``project_gpu_decode`` (paths: :mod:`bench.paths`). Writes JSON (images/s, per core,
ratio to ``raw_files``, the goals, conversion speed of ``data.convert`` vs
``make_spark_converter``) and a bar chart PNG next to it, and prints a table. With
``--against REV`` another revision's ``project`` path, measured by that revision's own
benchmark, is one more entry of the rounds (:mod:`bench.against`).
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from typing import Any, Callable, Iterator

import torch

from bench import against as ba
from bench import measure as bm
from bench import paths as bp
from bench.options import RESIZED_SIDE, BenchOptions, parse_args
from bench.report import CONVERT_CEILING, DESCRIPTIONS, GOALS, goal_checks, mark_train_goal, path_table, write_outputs
from data.images import DEFAULT_QUALITY
from data.errors import UserError, cli
from data.manifest import Manifest


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _timed_convert(images: str, out: str, spark, max_side: int | None) -> tuple[str, dict]:
    """Convert with the default split, as a user would; the speed and the job's stage times."""
    from data.convert import convert

    cpu0, t0 = bm.tree_cpu_seconds(), time.perf_counter()
    manifest = convert(images, out, max_side=max_side, spark=spark, progress=False)
    seconds, cpu = time.perf_counter() - t0, bm.tree_cpu_seconds() - cpu0
    n = sum(s.rows for s in manifest.splits.values()) + manifest.rejected
    return out, {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
                 "images_per_cpu_s": round(n / max(cpu, 1e-9), 1), "cpu_seconds": round(cpu, 1),
                 "stage_seconds": manifest.stats.get("stage_seconds", {})}


def _convert_beside_ceiling(opts: BenchOptions, out: str, spark) -> tuple[str, dict, dict]:
    """``data.convert`` timed between two halves of its ceiling (cores x one core running the
    same per-file check on the same files in memory), so both see the same background load.
    Both also count CPU seconds (the conversion's: the driver, Spark's JVM and its Python
    workers): images per CPU second compare them where other jobs share the machine."""
    blobs = bm.read_sample(opts.images)
    check = partial(bm.ceiling_rate, bm.convert_checker(DEFAULT_QUALITY, None), blobs, max(0.5, opts.seconds / 2))
    before = check()
    data, speed = _timed_convert(opts.images, out, spark, None)
    after = check()
    ceiling = {"images_per_s": round((before.images_per_s + after.images_per_s) / 2, 1),
               "images_per_s_one_core": round((before.images_per_s + after.images_per_s) / 2 / bm.cores(), 1),
               "images_per_cpu_s": round((before.images_per_cpu_s + after.images_per_cpu_s) / 2, 1),
               "sample_files": len(blobs), "description": DESCRIPTIONS[CONVERT_CEILING]}
    return data, speed, ceiling


def _manifest_speed(data: str) -> dict:
    """A given data set's conversion speed, as its manifest recorded it (empty if it did not)."""
    m = Manifest.load(data)
    if not m.stats.get("seconds"):
        return {}
    n = sum(s.rows for s in m.splits.values()) + m.rejected
    return {"data.convert": {"images": n, "seconds": m.stats["seconds"], "images_per_s": m.stats["images_per_s"],
                             "from_manifest": True}}


def _to_convert(opts: BenchOptions, wanted: list[str]) -> tuple[bool, bool]:
    """Whether the Parquet data set and its resized copy must be converted here: wanted
    by a path and not given."""
    return (not opts.data and any(p in wanted for p in ("project", "project_gpu_decode")),
            not opts.data_resized and "project_resized" in wanted)


def _data_sets(opts: BenchOptions, spark, work: str, wanted: list[str]) -> tuple[str | None, str | None, dict]:
    """The Parquet data set and its resized copy (converted here unless given or not needed)."""
    conversion, data, resized = {}, opts.data, opts.data_resized
    convert_data, convert_resized = _to_convert(opts, wanted)
    if data:
        conversion.update(_manifest_speed(data))
    elif convert_data:
        _log(f"converting {opts.images} with data.convert, beside its ceiling ...")
        data, conversion["data.convert"], conversion[CONVERT_CEILING] = _convert_beside_ceiling(
            opts, os.path.join(work, "data"), spark)
    if convert_resized:
        _log(f"converting {opts.images} with data.convert --max-side {RESIZED_SIDE} ...")
        resized, conversion[f"data.convert --max-side {RESIZED_SIDE}"] = _timed_convert(
            opts.images, os.path.join(work, f"data_{RESIZED_SIDE}"), spark, RESIZED_SIDE)
    return data, resized, conversion


def _warm_up(spark, images: str) -> None:
    """Start Spark's Python workers, import the conversion's code in them and read the files
    once: one-time costs of a session (~1 s of a 3,000-image conversion on 2 cores, not
    growing with the images), kept out of every rate as its ceiling keeps its imports out."""
    from pyspark.sql import functions as F

    spark.range(0, 64, numPartitions=bm.cores()).mapInPandas(lambda it: it, "id long").count()
    spark.sparkContext.parallelize(range(bm.cores()), bm.cores()).foreach(_import_conversion)
    spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(images).agg(
        F.sum(F.length("content"))).collect()


def _import_conversion(_) -> None:
    import data.convert.rows  # noqa: F401  (decode: PIL, numpy)
    import data.convert.writer  # noqa: F401  (write: pyarrow)


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpu_cores": bm.cores(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run(opts: BenchOptions, spark=None) -> dict:
    """Measure the paths ``a`` asks for; write the outputs and return the result dict."""
    if not os.path.isdir(opts.images):
        raise UserError(f"--images {opts.images} is not a folder")
    revision = _against(opts)
    wanted = list(opts.paths)  # project_gpu_decode is in the default only on CUDA (bench.options.default_paths)
    s = bp.PathSettings(workers=opts.workers, batch_size=opts.batch_size, image_size=opts.image_size,
                    pin_memory=torch.cuda.is_available())
    from data.spark import spark_session

    session_or_none = spark_session(spark) if _needs_spark(opts, wanted) else contextlib.nullcontext(spark)
    with session_or_none as session, _workdir(opts.work) as work, ba.checked_out(revision, work) as tree:
        if session is not None:
            _warm_up(session, opts.images)
        data, resized, conversion = _data_sets(opts, session, work, wanted)
        converter = None
        if "petastorm_converter" in wanted:
            _log("converting with Petastorm's make_spark_converter ...")
            t0 = time.perf_counter()
            converter = bp.make_petastorm_converter(session, opts.images, os.path.join(work, "petastorm_cache"))
            seconds = time.perf_counter() - t0
            conversion["make_spark_converter"] = {"images": len(converter), "seconds": round(seconds, 2),
                                                  "images_per_s": round(len(converter) / seconds, 1)}
        try:
            against = ba.Measurement(revision, tree, opts, _log) if revision else None
            result = _measure(opts, s, _openers(opts, s, wanted, data, resized, converter), data, resized, against)
        finally:
            if converter is not None:
                converter.delete()
    result["conversion"] = conversion
    result["goals"] = goal_checks(result["paths"], conversion, bm.cores(), result["diagnostics"])
    result["settings"] = {**asdict(opts), "data": data, "data_resized": resized}
    print(write_outputs(result, opts.out_json), flush=True)
    return result


def _openers(opts: BenchOptions, s: bp.PathSettings, wanted: list[str], data: str | None, resized: str | None,
             converter) -> dict[str, bm.Opener]:
    every = {"raw_files": lambda: partial(bp.open_raw_files, opts.images, s),
             "petastorm_converter": lambda: partial(bp.open_petastorm_converter, converter, s),
             "project": lambda: partial(bp.open_project, data, s),
             "project_resized": lambda: partial(bp.open_project, resized, s),
             "project_gpu_decode": lambda: partial(bp.open_gpu_decoded, data, s, _device())}
    return {name: make() for name, make in every.items() if name in wanted}


def _against(opts: BenchOptions) -> ba.Revision | None:
    """``--against REV``, checked before anything starts; it compares the project path."""
    if opts.against is None:
        return None
    if "project" not in opts.paths:
        raise UserError("--against compares the project path: name project in --paths")
    return ba.resolve(opts.against)


def _measure(opts: BenchOptions, s: bp.PathSettings, openers: dict[str, bm.Opener], data: str | None,
             resized: str | None, against: ba.Measurement | None = None) -> dict[str, Any]:
    """The paths, the ceilings and ``against`` (another revision's project path), in interleaved rounds."""
    warmup_batches, warmup_s = 2 * max(1, s.workers), min(3.0, max(0.5, opts.seconds / 4))
    measure = {}
    for name, fn in openers.items():
        measure[name] = partial(bm.stream_rate, fn, opts.seconds, warmup_batches, warmup_s)
        if name == "project" and against is not None:  # right after the path it is compared with
            measure[against.revision.path] = against
    ceilings: dict[str, Callable[[float], bm.Rate]] = {}
    if "decode_ceiling" in opts.paths:
        blobs = bm.read_sample(opts.images)
        ceilings["decode_ceiling"] = partial(bm.ceiling_rate, bm.reference_decoder(s.image_size), blobs)
        stored = bm.read_parquet_sample(data) if data else blobs  # the images the project path decodes
        ceilings["decode_ceiling_project"] = partial(bm.ceiling_rate, bm.project_decoder(s.image_size), stored)
        if "project_resized" in openers:
            ceilings["decode_ceiling_resized"] = partial(bm.ceiling_rate, bm.project_decoder(s.image_size),
                                                         bm.read_parquet_sample(resized))
    order = _round_order(measure, ceilings, opts.seconds)
    if "decode_ceiling" in opts.paths and "project_resized" in openers:
        order.append(("decode_all_cores_resized", partial(bm.all_cores_rate, resized, s.image_size, opts.seconds)))
    rates = bm.median_rates(order, opts.rounds, _log)
    paths = path_table({name: rates[name] for name in [*measure, *ceilings, *rates] if name in rates}, bm.cores())
    result: dict[str, Any] = {"machine": _machine(), "paths": paths, "goals": [], "diagnostics": {}}
    if against is not None:
        result["against"] = ba.summary(against.revision, paths)
    if "decode_all_cores_resized" in paths:  # (measured only beside project_resized)
        result["diagnostics"]["project_resized_to_decode_all_cores_resized"] = round(
            paths["project_resized"]["images_per_s"] / paths["decode_all_cores_resized"]["images_per_s"], 3)
    if data:
        _log("timing the Petastorm reader alone ...")
        result["diagnostics"]["petastorm_reader_rows_per_s_one_process"] = round(
            bp.reader_rows_per_s(data, min(opts.seconds, 5.0)), 1)
    if opts.train_step:
        from bench.train_step import train_step_rates

        _log(f"training steps ({opts.model}) fed by each path ...")
        classes = len(bp.class_names(opts.images))
        if "project_gpu_decode" in openers:  # JPEG batches, decoded one batch ahead of the step, as the trainer does
            openers = {**openers, "project_gpu_decode": partial(bp.open_project, data, s, "gpu")}
        result["train_step"] = mark_train_goal(train_step_rates(
            openers, model=opts.model, num_classes=classes, batch_size=s.batch_size, size=s.image_size, device=_device(),
            seconds=opts.seconds, warmup_s=warmup_s, precision=opts.precision, compile_=opts.compile))
    return result


# The path each goal's decode ceiling is measured around, within a round: the goals' own pairs.
CEILING_OF = {name: ref for name, ref, _ in GOALS if ref.startswith("decode_ceiling")}


def _round_order(measure: dict[str, Callable[[], bm.Rate]], ceilings: dict[str, Callable[[float], bm.Rate]],
                 seconds: float) -> list[tuple[str, Callable[[], bm.Rate]]]:
    """One round's measurements in order: a path with a goal against a decode ceiling has that
    ceiling measured in two halves, just before and just after it, as data.convert's is. The
    background load of a shared machine drifts over tens of seconds: a ceiling measured a
    minute away from its path (the other paths between) saw another machine, while two
    measurements side by side agree (bench/README.md has the numbers)."""
    order: list[tuple[str, Callable[[], bm.Rate]]] = []
    for name, fn in measure.items():
        ceiling = CEILING_OF.get(name)
        half = [(ceiling, partial(ceilings[ceiling], seconds / 2))] if ceiling in ceilings else []
        order += half + [(name, fn)] + half
    placed = {name for name, _ in order}
    return order + [(name, partial(fn, seconds)) for name, fn in ceilings.items() if name not in placed]


def _device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _needs_spark(opts: BenchOptions, wanted: list[str]) -> bool:
    """Spark converts what was not given and runs ``petastorm_converter``; with ``--data`` and
    ``--data-resized`` the other paths run where there is no Spark (a GPU node, say)."""
    return any(_to_convert(opts, wanted)) or "petastorm_converter" in wanted


@contextlib.contextmanager
def _workdir(work: str | None) -> Iterator[str]:
    if work:
        os.makedirs(work, exist_ok=True)
        yield work
        return
    tmp = tempfile.mkdtemp(prefix="sparkdp-bench-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@cli
def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))
