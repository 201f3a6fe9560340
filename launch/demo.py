"""``make demo``: synthetic images -> Spark conversion -> 2-process DDP training on CPU -> test scores.

``python -m launch.demo --out demo`` runs, and prints, the same commands a user would:

1. ``python -m data.synthetic``: 4 classes x 60 photo-sized (512x384) JPEGs, ``OUT/images``;
2. ``python -m data.convert`` on local Spark: Parquet splits + manifest, ``OUT/data``;
3. ``torchrun --nproc-per-node 2 -m trainer.train``: ResNet-18 at 64 px with gloo on CPU,
   ``OUT/run`` (checkpoints, summary.json, the MLflow store);
4. ``python -m trainer.evaluate`` of ``best.pt`` on the test split.

Images and the converted data set are kept and reused by a second demo; the run folder
is made afresh each time. A few minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from data.errors import UserError, cli
from data.manifest import MANIFEST
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting
from trainer import checkpoint as ckpt

# Size and speed only: the demo trains with the optimisation defaults a user gets.
TRAIN_OPTIONS = ["--model", "resnet18", "--image-size", "64", "--batch-size", "16", "--workers", "1", "--no-progress"]


@dataclass
class DemoOptions:
    out: str = setting("demo", metavar="DIR", help="demo folder (images/, data/, run/)")
    classes: int = setting(4, minimum=2, metavar="N", help="synthetic classes")
    per_class: int = setting(60, minimum=10, metavar="N", help="synthetic images per class")
    nproc: int = setting(2, minimum=1, metavar="N", help="training processes (ranks)")
    epochs: int = setting(4, minimum=1, metavar="N", help="training epochs")
    steps_per_epoch: int = setting(15, minimum=1, metavar="N", help="optimizer steps per epoch")

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(DemoOptions, prog="python -m launch.demo", description=__doc__.split("\n")[0])


def step(title: str, cmd: list[str], env: dict[str, str]) -> None:
    """Print a command as a user would type it, run it, stop the demo if it fails."""
    shown = ["python" if c == sys.executable else c for c in cmd]
    print(f"\n== {title}\n$ {shlex.join(shown)}", flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise UserError(f"demo step failed ({title}, exit {result.returncode}); the output above says why")


def run_demo(out: str, classes: int = 4, per_class: int = 60, nproc: int = 2, epochs: int = 4,
             steps_per_epoch: int = 15) -> dict:
    """Run the four steps into ``out``; returns paths and the test results."""
    started = time.monotonic()
    images, data, run = (os.path.join(out, name) for name in ("images", "data", "run"))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("MLFLOW_TRACKING_URI", None)  # keep the demo's MLflow store inside its run folder
    py = [sys.executable, "-m"]
    if not os.path.isdir(images):
        step("synthetic images", [*py, "data.synthetic", "--out", images, "--classes", str(classes),
                                  "--per-class", str(per_class), "--no-progress"], env)
    if not os.path.isfile(os.path.join(data, MANIFEST)):
        step("convert with Spark", [*py, "data.convert", "--images", images, "--out", data, "--master", "local[2]",
                                    "--overwrite", "--no-progress"], env)
    else:
        print(f"\n== reusing the converted data set in {data}")
    if os.path.isdir(run):
        shutil.rmtree(run)
    step(f"train: {nproc} processes, DDP with gloo on CPU",
         [*py, "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "trainer.train",
          "--data", data, "--out", run, "--epochs", str(epochs), "--steps-per-epoch", str(steps_per_epoch),
          *TRAIN_OPTIONS], env)
    best = os.path.join(run, "checkpoints", ckpt.BEST)
    metrics = os.path.join(run, "test_metrics.json")
    step("evaluate the best checkpoint on the test split",
         [*py, "trainer.evaluate", "--checkpoint", best, "--data", data, "--split", "test", "--json", metrics,
          "--workers", "1"], env)
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    with open(metrics) as f:
        test = json.load(f)
    return {"seconds": time.monotonic() - started, "summary": summary, "test": test, "best": best,
            "summary_path": os.path.join(run, "summary.json"), "metrics_path": metrics, "images": images}


def print_where(res: dict) -> None:
    s, t = res["summary"], res["test"]
    uri = s["mlflow_tracking_uri"]
    example = os.path.join(res["images"], sorted(os.listdir(res["images"]))[0])
    example = os.path.join(example, sorted(os.listdir(example))[0])
    print(f"""
== demo finished in {res['seconds'] / 60:.1f} min
  test split:  top-1 {t['top1']:.3f}, top-5 {t['top5']:.3f} on {t['count']} images \
(chance {1 / len(t['per_class_accuracy']):.3f}); loss {t['loss']:.4f}
  checkpoint:  {res['best']}  (best val top-1 {s['best_val_top1']:.3f}; last.pt beside it)
  summary:     {res['summary_path']}  ({s['steps']} steps on {s['world_size']} ranks, \
{s['train_images_per_s']:.0f} images/s, {100 * s['data_wait_fraction']:.0f}% waiting for data)
  test scores: {res['metrics_path']}
  confusion:   {t['confusion_png']}
  MLflow run:  {s['mlflow_run_id']} (experiment 'sparkdp') in {uri}
  browse it:   mlflow ui --backend-store-uri {uri}
  predict:     python -m trainer.predict --checkpoint {res['best']} {example}""", flush=True)


@cli
def main(argv: list[str] | None = None) -> dict:
    opts = DemoOptions(**vars(build_parser().parse_args(argv)))
    res = run_demo(os.path.abspath(opts.out), opts.classes, opts.per_class, opts.nproc, opts.epochs, opts.steps_per_epoch)
    print_where(res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
