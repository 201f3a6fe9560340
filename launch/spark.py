"""Start the trainer from Spark with TorchDistributor, the successor of HorovodRunner.

From a notebook (the SparkSession already running)::

    from launch.spark import run
    summary = run(["--data", "s3://bucket/food101", "--out", "/dbfs/runs/r1"], num_processes=8)

From a shell::

    python -m launch.spark --num-processes 2 -- --data demo/data --out demo/run --epochs 1

Any training function or script too, HorovodRunner-style (``run(fn, *args, **kwargs)``;
``python -m launch.spark --script examples/custom_loop.py -- ARGS``): every rank calls it
under the same conveniences (rank 0's return value back, a UserError as one line, the GPU
checks).

``local_mode=True`` (default) starts ``num_processes`` training processes on the driver;
``local_mode=False`` (``--cluster``) runs one process per Spark task on the executors,
one GPU each when ``spark.task.resource.gpu.amount`` is 1. Either way every process
calls :func:`trainer.train.main` with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set by the
``torchrun`` that TorchDistributor starts, and rank 0's summary comes back here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from data.errors import RunFailure, UserError, cli
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting
from data.spark import parse_conf, spark_session

if TYPE_CHECKING:
    from trainer.config import TrainConfig

# A rank that hits a UserError returns {USER_ERROR: message}. TorchDistributor only
# carries return values back: its torchrun wrapper exits 0 whatever the ranks did.
USER_ERROR = "sparkdp_user_error"


def on_rank(fn: Callable, hide_gpus: bool, args: tuple, kwargs: dict) -> Any:
    """What every TorchDistributor process runs: ``fn(*args, **kwargs)``, user errors returned.

    TorchDistributor's local mode has all processes pickle their return value to one
    file, so the last to finish wins. Only rank 0's value counts, so the other
    processes of a node leave without writing (``SystemExit(0)``: a clean exit for
    torchrun). In cluster mode each Spark task has its own file (LOCAL_RANK is 0).
    """
    if hide_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        value = fn(*args, **kwargs)
    except UserError as exc:
        print(f"[rank {os.environ.get('RANK', '0')}] error: {exc}", file=sys.stderr, flush=True)
        return {USER_ERROR: str(exc)}
    if int(os.environ.get("RANK", "0")) != 0 and int(os.environ.get("LOCAL_RANK", "0")) != 0:
        sys.stdout.flush()
        raise SystemExit(0)
    return value


def train(cfg: "TrainConfig") -> dict | None:
    """The built-in trainer on one rank: rank 0's summary, None elsewhere."""
    from trainer.train import main

    return main(cfg)


def run_script(path: str, argv: list[str]) -> None:
    """A training script on one rank, as ``python path ARGS`` would run it; a failing exit
    status is a UserError naming the script (its own messages are on stderr above)."""
    saved = sys.argv
    sys.argv = [path, *argv]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise UserError(f"{os.path.basename(path)} exited with status {exc.code}") from None
    finally:
        sys.argv = saved


def trainer_config(trainer_args: list[str]) -> "TrainConfig":
    """Parse the trainer's arguments on the driver, so a typo fails before any process starts.

    Local ``--data``/``--out`` paths become absolute: executors do not share the
    driver's working directory.
    """
    from trainer.config import parse_args

    try:
        cfg = parse_args(list(trainer_args))
    except SystemExit as exc:  # argparse has printed the usage and the reason (or --help)
        if not exc.code:
            raise
        raise UserError(f"trainer arguments rejected: {' '.join(trainer_args)}") from None
    if "://" not in cfg.data:
        cfg.data = os.path.abspath(cfg.data)
    cfg.out = os.path.abspath(cfg.out)
    return cfg


def gpu_conf_key(local_mode: bool) -> str:
    """The Spark setting TorchDistributor reads for GPUs in this mode."""
    return "spark.driver.resource.gpu.amount" if local_mode else "spark.task.resource.gpu.amount"


def spark_gpus(spark, local_mode: bool) -> bool:
    """Whether the Spark conf gives this mode GPUs (what TorchDistributor's use_gpu needs)."""
    try:
        amount = float(spark.conf.get(gpu_conf_key(local_mode), "0"))
    except ValueError:
        return False
    if not local_mode or amount < 1:
        return amount >= 1
    try:
        return "gpu" in spark.sparkContext.resources
    except Exception:  # Spark Connect has no SparkContext
        return False


def check_driver_gpus(num_processes: int) -> None:
    """Local mode with GPUs Spark does not know about: the ranks will share them, so
    refuse more ranks than GPUs (NCCL cannot put two ranks on one device)."""
    import torch

    gpus = torch.cuda.device_count()
    if 0 < gpus < num_processes:
        raise UserError(f"{num_processes} processes but the driver has {gpus} GPU(s): use at most {gpus}, "
                        "or use_gpu=False (--no-gpu) to train on CPU")


def run(target: list[str] | Callable | str, *args, num_processes: int = 1, local_mode: bool = True,
        use_gpu: bool | None = None, spark=None, **kwargs) -> Any:
    """Train through TorchDistributor; returns rank 0's return value.

    ``target``: the trainer's arguments (a list: rank 0's summary dict comes back), a
    function (every rank calls ``target(*args, **kwargs)``, e.g. a loop on the public API;
    define it in the notebook or in a module installed on the executors), or the path of
    a ``.py`` script (every rank runs it with ``args`` as its command line; None comes back).

    ``use_gpu``: None picks GPUs when the Spark conf declares them (local mode:
    ``spark.driver.resource.gpu.amount``, cluster: ``spark.task.resource.gpu.amount``);
    in local mode a driver whose GPUs Spark does not know about still trains on them.
    True insists (one clear error if Spark has none), False trains on CPU.
    ``spark``: the session to use (default: the active one, else a new ``local[*]``,
    stopped at the end).
    """
    if num_processes < 1:
        raise UserError("num_processes must be >= 1")
    if isinstance(target, (list, tuple)):
        fn, args, kwargs = train, (trainer_config(list(target)),), {}
    elif isinstance(target, str):
        if not os.path.isfile(target):
            raise UserError(f"script not found: {target}")
        fn, args, kwargs = run_script, (os.path.abspath(target), [str(a) for a in args]), {}
    elif callable(target):
        fn = target
    else:
        raise UserError(f"run() takes trainer arguments, a function or a script path, not {type(target).__name__}")
    with spark_session(spark) as session:
        try:
            value = _distribute(session, num_processes, local_mode, use_gpu, fn, args, kwargs)
        except Exception as exc:
            lost = lost_rank(exc)
            if lost is None:
                raise
            out = args[0].out if isinstance(target, (list, tuple)) else None
            raise RunFailure(f"training stopped: Spark lost rank {lost[0]} ({lost[1]}); {resume_hint(out)}") from None
    if isinstance(target, (list, tuple)) and not isinstance(value, dict):
        raise RuntimeError(f"TorchDistributor returned {value!r} instead of rank 0's summary")
    return value


# How Spark reports a barrier task (one per rank, task index = rank) that died with its
# executor: the driver's Py4J error holds the task and the reason.
LOST_TASK = re.compile(r"barrier task ResultTask\(\d+, (\d+)\)|Lost task (\d+)\.\d+ in stage")
LOST_REASON = re.compile(r"(ExecutorLostFailure[^\n]*|Executor lost[^\n]*|Worker lost[^\n]*)")


def lost_rank(exc: BaseException) -> tuple[int, str] | None:
    """``(rank, Spark's reason)`` when ``exc`` says a rank's Spark task was lost, else None."""
    text = str(exc)
    task, reason = LOST_TASK.search(text), LOST_REASON.search(text)
    if task is None or "SparkException" not in text and "Py4J" not in type(exc).__name__:
        return None
    return int(task.group(1) or task.group(2)), (reason.group(1) if reason else "its Spark task failed")[:200]


def resume_hint(run_dir: str | None) -> str:
    """What to rerun after a lost rank: the checkpoint ``--resume auto`` will continue from."""
    if run_dir is None:
        return "rerun it"
    from trainer import checkpoint as ckpt

    try:
        path, state, _ = ckpt.load_resume(run_dir, "auto")
    except UserError:
        path = None
    if path is None:
        return f"no checkpoint in {ckpt.checkpoint_dir(run_dir)} yet: rerun the same command"
    return f"rerun the same command with --resume auto to continue from {path} (step {state[ckpt.PROGRESS]['step']})"


def _distribute(spark, num_processes: int, local_mode: bool, use_gpu: bool | None, fn: Callable, args: tuple,
                kwargs: dict) -> Any:
    from pyspark.ml.torch.distributor import TorchDistributor

    has_gpus = spark_gpus(spark, local_mode)
    if use_gpu and not has_gpus:
        raise UserError(f"use_gpu=True but Spark has no GPUs for this mode: set {gpu_conf_key(local_mode)} "
                        "(and a GPU discovery script), or leave use_gpu unset / pass --no-gpu")
    if local_mode and use_gpu is None and not has_gpus:
        check_driver_gpus(num_processes)
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode,
                                   use_gpu=has_gpus if use_gpu is None else use_gpu)
    value = distributor.run(on_rank, fn, use_gpu is False, args, kwargs)
    if isinstance(value, dict) and USER_ERROR in value:
        raise UserError(value[USER_ERROR])
    return value


@dataclass
class SparkLaunchOptions:
    num_processes: int = setting(1, minimum=1, metavar="N", help="training processes (ranks)")
    script: str | None = setting(None, metavar="FILE.py", help="run this training script on every rank instead of "
                                                               "trainer.train; the arguments after `--` are its own")
    cluster: bool = setting(False, help="one process per Spark task on the executors (default: all on the driver)")
    use_gpu: bool = setting(False, help="require GPUs from the Spark conf")
    no_gpu: bool = setting(False, help="train on CPU (default: GPUs when the Spark conf asks for them)")
    master: str | None = setting(None, metavar="URL", doc="local[N], N = --num-processes", help="Spark master URL")
    spark_conf: dict[str, str] = setting(factory=dict, repeat=True, metavar="KEY=VALUE", doc="",
                                         help="Spark setting (repeatable)")

    def __post_init__(self) -> None:
        self.spark_conf = parse_conf(self.spark_conf)  # the command line's ["k=v", ...], or a dict
        check_settings(self)
        if self.use_gpu and self.no_gpu:
            raise UserError("--use-gpu and --no-gpu contradict each other: give one")

    @property
    def gpu(self) -> bool | None:
        """True: require GPUs; False: CPU; None: as the Spark conf says."""
        return True if self.use_gpu else False if self.no_gpu else None


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(SparkLaunchOptions, prog="python -m launch.spark", allow_abbrev=False,
                           description="Run trainer.train through Spark's TorchDistributor. Everything after `--` "
                                       "goes to the trainer (see python -m trainer.train --help).")


def main(argv: list[str] | None = None) -> Any:
    """CLI: start Spark, run :func:`run`, print the summary as JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        parsed, trainer_args = build_parser().parse_args(argv[:cut]), argv[cut + 1:]
    else:
        parsed, trainer_args = build_parser().parse_known_args(argv)
    opts = SparkLaunchOptions(**vars(parsed))
    if opts.script:
        if not os.path.isfile(opts.script):
            raise UserError(f"script not found: {opts.script}")
        target, rest = opts.script, trainer_args
    else:
        if not trainer_args:
            raise UserError("no trainer arguments: add `-- --data DATA --out RUN_DIR ...`")
        trainer_config(trainer_args)  # fail on a typo before starting Spark
        target, rest = trainer_args, []
    master = opts.master or f"local[{max(opts.num_processes, 1)}]"
    with spark_session(master=master, conf=opts.spark_conf) as spark:
        value = run(target, *rest, num_processes=opts.num_processes, local_mode=not opts.cluster,
                    use_gpu=opts.gpu, spark=spark)
    if value is not None:
        print(json.dumps(value, indent=2, default=str))
    else:
        print(f"{opts.script}: done on {opts.num_processes} process(es)")
    return value


if __name__ == "__main__":
    cli(main)()
