"""Score a checkpoint on a split: ``python -m trainer.evaluate --checkpoint FILE --data DIR``.

Loss, top-1, top-5, image count, per-class accuracy (by class name) and a
confusion-matrix PNG; ``--json FILE`` also writes all of it as JSON. Runs as one process
or under ``torchrun --nproc-per-node N -m trainer.evaluate ...``: each rank reads its own
share of the split, every image exactly once across ranks, and the sums are reduced, so
the numbers do not depend on the number of ranks. It scores with the trainer's
:func:`trainer.metrics.evaluate` and loaders; only rank 0 prints and writes files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from functools import partial

import torch

from data.errors import UserError, cli
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting
from data.transforms import normalize
from data.manifest import Manifest
from data.rank_loaders import make_eval_loader, open_split
from trainer import checkpoint as ckpt
from trainer.confusion_plot import write_confusion_png
from trainer.distributed import DistInfo, compute_cleanup, compute_init
from trainer.metrics import ClassificationSums, evaluate
from trainer.model import model_from_checkpoint, to_device
from trainer.precision import PRECISIONS, autocast_context, precision_dtype
from trainer.tracking import checkpoint_run


@dataclass
class EvaluateOptions:
    checkpoint: str = setting(metavar="FILE", help="a .pt file written by trainer.train (best.pt, last.pt)")
    data: str = setting(metavar="DIR|URL", help="data set folder written by `python -m data.convert`")
    split: str = setting("test", metavar="NAME", help="the split to score: train, val or test")
    json: str | None = setting(None, metavar="FILE", help="also write the results to this JSON file")
    confusion: str | None = setting(None, metavar="FILE", doc="beside --json, else beside the checkpoint",
                                    help="confusion-matrix PNG path")
    batch_size: int | None = setting(None, minimum=1, metavar="N", doc="the training batch size", help="per rank")
    workers: int = setting(2, minimum=0, metavar="N", help="loader worker processes per rank")
    image_size: int | None = setting(None, minimum=1, metavar="N", doc="the checkpoint's",
                                     help="resize and centre-crop size")
    precision: str = setting("auto", choices=PRECISIONS,
                             help="auto: bf16 autocast on GPUs that have it, else fp16; fp32 on CPU")
    log_to_run: bool = setting(False, help="also log the metrics (SPLIT_loss, SPLIT_top1, ...), the confusion matrix "
                                           "and the JSON into the MLflow run the checkpoint came from")

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(EvaluateOptions, prog="python -m trainer.evaluate", description=__doc__.split("\n")[0])


def check_classes(state: dict, manifest: Manifest, checkpoint: str, data: str) -> None:
    """Refuse, in one line, a data set whose classes (names or order) are not the checkpoint's."""
    trained = list(ckpt.run_identity(state).classes)
    if trained != manifest.classes:
        def show(names: list[str]) -> str:
            return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{checkpoint} was trained on {len(trained)} classes ({show(trained)}) but {data} has "
                        f"{manifest.num_classes} ({show(manifest.classes)}): evaluate it on a data set with "
                        "the same classes in the same order")


def default_confusion_path(checkpoint: str, split: str, json_path: str | None) -> str:
    if json_path:
        return os.path.splitext(json_path)[0] + ".confusion.png"
    stem = os.path.splitext(checkpoint)[0]
    return f"{stem}_{split}_confusion.png"


def score(checkpoint: str, data: str, split: str, dist: DistInfo, *, batch_size: int | None = None,
          workers: int = 2, image_size: int | None = None, precision: str = "auto") -> tuple[ClassificationSums, dict]:
    """Reduced sums of ``checkpoint`` on ``data``'s ``split`` (a collective: every rank calls it)."""
    state = ckpt.load_checkpoint(checkpoint)
    manifest = Manifest.load(data)
    check_classes(state, manifest, checkpoint, data)
    if manifest.split(split).rows == 0:
        raise UserError(f"split {split!r} of {data} is empty")
    parquet = open_split(data, split, manifest)
    run = ckpt.run_identity(state)
    trained = run.config
    batch_size = batch_size or trained["batch_size"]
    image_size = image_size or trained["image_size"]
    if batch_size < 1 or image_size < 1 or workers < 0:
        raise UserError("--batch-size and --image-size must be >= 1, --workers >= 0")
    cuda = dist.device.type == "cuda"
    model = to_device(model_from_checkpoint(state), dist.device)

    def prepare(images: torch.Tensor, labels: torch.Tensor):
        return normalize(images, dist.device, channels_last=cuda), labels.to(dist.device, non_blocking=True)

    with make_eval_loader(parquet, workers=workers, pin_memory=cuda, rank=dist.rank, world_size=dist.world_size,
                          batch_size=batch_size, image_size=image_size) as batches:
        sums = evaluate(model, batches, dist.device, manifest.num_classes, prepare,
                        partial(autocast_context, dist.device, precision_dtype(precision, dist.device)))
    context = {"checkpoint": os.path.abspath(checkpoint), "data": data if "://" in data else os.path.abspath(data),
               "split": split, "step": state[ckpt.PROGRESS]["step"], "model": run.model_name, "image_size": image_size,
               "world_size": dist.world_size, "classes": manifest.classes}
    return sums, context


def report(sums: ClassificationSums, context: dict, confusion_png: str) -> dict:
    """The results dict: metrics, per-class accuracy by name, the confusion matrix and its PNG."""
    classes = context["classes"]
    per_class_count = sums.confusion.sum(dim=1).tolist()
    return {
        **sums.results(), **{k: v for k, v in context.items() if k != "classes"},
        "per_class_accuracy": dict(zip(classes, sums.per_class_accuracy())),
        "per_class_count": dict(zip(classes, per_class_count)),
        "confusion_matrix": sums.confusion.tolist(),
        "confusion_png": os.path.abspath(confusion_png),
    }


def print_report(res: dict) -> None:
    print(f"{res['split']}: {res['count']} images  loss {res['loss']:.4f}  top-1 {res['top1']:.4f}  "
          f"top-5 {res['top5']:.4f}  ({res['model']} at step {res['step']}, {res['world_size']} rank(s))")
    width = max(len(name) for name in res["per_class_accuracy"])
    print("per-class accuracy:")
    for name, acc in res["per_class_accuracy"].items():
        shown = "   n/a" if acc is None else f"{acc:.4f}"
        print(f"  {name:<{width}}  {shown}  ({res['per_class_count'][name]} images)")
    print(f"confusion matrix: {res['confusion_png']}", flush=True)


def log_to_run(checkpoint: str, res: dict) -> None:
    """Add the results to the checkpoint's MLflow run: ``SPLIT_loss/top1/top5/count`` at the
    checkpoint's step, the confusion-matrix picture and the JSON under ``evaluation/``."""
    tracker = checkpoint_run(checkpoint, ckpt.run_identity(ckpt.load_checkpoint(checkpoint)).mlflow_run_id)
    split = res["split"]
    tracker.log_metrics({f"{split}_{k}": res[k] for k in ("loss", "top1", "top5", "count")}, res["step"])
    tracker.log_dict(res, f"evaluation/{split}.json")
    tracker.client.log_artifact(tracker.run_id, res["confusion_png"], "evaluation")
    print(f"logged to MLflow run {tracker.run_id} ({tracker.tracking_uri})", flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    """Evaluate; returns the results dict on rank 0 (None on other ranks)."""
    opts = EvaluateOptions(**vars(build_parser().parse_args(argv)))
    dist = compute_init()
    try:
        sums, context = score(opts.checkpoint, opts.data, opts.split, dist, batch_size=opts.batch_size,
                              workers=opts.workers, image_size=opts.image_size, precision=opts.precision)
        if not dist.is_main:
            return None
        png = opts.confusion or default_confusion_path(opts.checkpoint, opts.split, opts.json)
        title = f"{context['split']}: {os.path.basename(opts.checkpoint)} on {opts.data}"
        write_confusion_png(sums.confusion, context["classes"], png, title)
        res = report(sums, context, png)
        print_report(res)
        if opts.json:
            os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
            with open(opts.json, "w") as f:
                json.dump(res, f, indent=2)
            print(f"json: {os.path.abspath(opts.json)}", flush=True)
        if opts.log_to_run:
            log_to_run(opts.checkpoint, res)
        return res
    finally:
        compute_cleanup()


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
