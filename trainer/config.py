"""The training configuration: one typed dataclass, each setting declared once.

Every field declares its type, default, help and allowed values (:func:`data.settings.setting`);
the command line (:func:`build_parser`) and the checks in ``__post_init__`` derive from
those declarations, and a test holds the README's option table to them.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields

from data.errors import UserError
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting

PROG = "torchrun --nproc-per-node N -m trainer.train"
DESCRIPTION = "Train a torchvision classifier with DDP on Parquet splits made by data.convert."


@dataclass
class TrainConfig:
    data: str = setting(metavar="DIR", help="folder written by `python -m data.convert` (local path or URL)")
    out: str = setting(metavar="DIR", help="run folder: checkpoints/, summary.json, the MLflow store")
    model: str = setting("resnet50", metavar="NAME",
                         help="any torchvision classification model (resnet18, efficientnet_b0, convnext_tiny, "
                              "vit_b_16, ...)")
    weights: str | None = setting(None, metavar="NAME",
                                  help="start from torchvision weights, e.g. IMAGENET1K_V2 (read from the local "
                                       "torch cache only, never downloaded); the head is fresh")
    weights_path: str | None = setting(None, metavar="FILE",
                                       help="start from a state_dict file; the head is fresh if its size differs")
    image_size: int = setting(224, minimum=1, metavar="N", help="training crop / eval crop size")
    epochs: int = setting(10, minimum=1, metavar="N", help="epochs of --steps-per-epoch steps")
    steps_per_epoch: int | None = setting(None, minimum=1, metavar="N", doc="train rows // (batch x ranks)",
                                          help="optimizer steps per epoch, identical on every rank")
    batch_size: int = setting(64, minimum=1, metavar="N",
                              help="per rank; the global batch is this x the number of ranks")
    lr: float = setting(0.1, above=0, metavar="LR", help="peak learning rate (after warm-up)")
    optimizer: str = setting("sgd", choices=("sgd", "adamw"),
                             help="SGD uses Nesterov momentum; no weight decay on biases and norm weights")
    momentum: float = setting(0.9, metavar="M", help="SGD momentum")
    weight_decay: float = setting(1e-4, metavar="W", help="weight decay (not on biases and norm weights)")
    warmup_steps: int = setting(0, minimum=0, metavar="N",
                                help="linear warm-up, then cosine decay to 0 at the last step (the LR changes "
                                     "every step)")
    label_smoothing: float = setting(0.0, minimum=0, below=1, metavar="S", help="cross-entropy label smoothing")
    grad_clip: float | None = setting(None, metavar="NORM", help="clip the global gradient norm to this")
    workers: int = setting(2, minimum=0, metavar="N",
                           help="loader processes per rank (decode and augmentation run there)")
    seed: int = setting(0, metavar="N", help="weights, data order and augmentation")
    val_every: int | None = setting(None, minimum=1, metavar="N", doc="each epoch",
                                    help="validate every N steps instead of at each epoch's end")
    ckpt_every: int | None = setting(None, minimum=1, metavar="N", help="also write last.pt every N steps")
    resume: str | None = setting(None, metavar="auto|FILE",
                                 help="'auto' (RUN_DIR/checkpoints/last.pt if present, else start fresh) or a "
                                      "checkpoint path")
    stop_after_steps: int | None = setting(None, minimum=1, metavar="N",
                                           help="stop once N steps in all are done, writing last.pt (LR schedule "
                                                "unchanged): a time-boxed slice of a longer run, continued later "
                                                "with --resume auto")
    experiment: str = setting("sparkdp", metavar="NAME", help="MLflow experiment name")
    register_model: str | None = setting(None, metavar="NAME",
                                         help="register the run's MLflow model (artifact `model`) as a new "
                                              "version of NAME in the MLflow Model Registry")
    log_every: int = setting(10, minimum=1, metavar="N", help="steps between MLflow train metrics")
    decode: str = setting("cpu", choices=("cpu", "gpu"),
                          help="decode JPEGs in the loader workers (cpu) or batched on the GPU (gpu)")
    precision: str = setting("auto", choices=("auto", "bf16", "fp32"),
                             help="auto: bf16 autocast on CUDA, fp32 on CPU")
    progress: bool = setting(True, help="no tqdm bar (rank 0 is the only one that shows one anyway)")
    dist_timeout: float = setting(600.0, metavar="S",
                                  help="seconds a collective waits for a dead or stuck rank before failing "
                                       "instead of hanging")
    stacks_after: float | None = setting(None, above=0, metavar="S", doc="--dist-timeout / 4",
                                         help="a rank with no progress for S seconds writes the Python stacks of "
                                              "its threads and loader workers to RUN/stacks/ (the run goes on)")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.stacks_after is None:
            self.stacks_after = self.dist_timeout / 4
        if self.stacks_after >= self.dist_timeout:
            raise UserError("--stacks-after must be less than --dist-timeout")
        if self.weights and self.weights_path:
            raise UserError("give --weights or --weights-path, not both")
        if self.weights_path and not os.path.isfile(self.weights_path):
            raise UserError(f"--weights-path {self.weights_path} not found")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(TrainConfig, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))
