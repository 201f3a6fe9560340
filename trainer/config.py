"""The training configuration: one typed dataclass, validated on construction."""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields

from data.errors import UserError


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "resnet50"
    weights: str | None = None
    weights_path: str | None = None
    image_size: int = 224
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: train rows // (batch_size * world_size)
    batch_size: int = 64  # per rank
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    workers: int = 2  # loader worker processes per rank
    seed: int = 0
    val_every: int | None = None  # steps; default once per epoch
    ckpt_every: int | None = None  # steps; last.pt is also written every epoch
    resume: str | None = None  # "auto" or a checkpoint path
    stop_after_steps: int | None = None  # end early (writing last.pt) as if preempted; the schedule is unchanged
    experiment: str = "sparkdp"
    log_every: int = 10
    decode: str = "cpu"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    progress: bool = True
    dist_timeout: float = 600.0  # seconds a collective may wait for a missing rank
    stacks_after: float | None = None  # seconds without progress before each rank dumps its stacks


    def __post_init__(self) -> None:
        positive = ["image_size", "epochs", "batch_size", "log_every"]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("steps_per_epoch", "val_every", "ckpt_every", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.lr <= 0:
            raise UserError("--lr must be > 0")
        if self.optimizer not in ("sgd", "adamw"):
            raise UserError(f"--optimizer must be sgd or adamw, not {self.optimizer!r}")
        if self.decode not in ("cpu", "gpu"):
            raise UserError(f"--decode must be cpu or gpu, not {self.decode!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"--precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.workers < 0 or self.warmup_steps < 0:
            raise UserError("--workers and --warmup-steps must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError("--label-smoothing must be in [0, 1)")
        if self.stacks_after is None:
            self.stacks_after = self.dist_timeout / 4
        if not 0 < self.stacks_after < self.dist_timeout:
            raise UserError("--stacks-after must be > 0 and less than --dist-timeout")
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
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m trainer.train",
        description="Train a torchvision classifier with DDP on Parquet splits made by data.convert.")
    p.add_argument("--data", required=True, help="folder (or URL) written by `python -m data.convert`")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, summary.json, MLflow store")
    p.add_argument("--model", default="resnet50", help="any torchvision classification model name")
    p.add_argument("--weights", help="torchvision weights name, e.g. IMAGENET1K_V2 (from the local torch cache)")
    p.add_argument("--weights-path", help="a state_dict file to start from (head is replaced if sizes differ)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, help="default: train rows // (batch size x world size)")
    p.add_argument("--batch-size", type=int, default=64, help="per rank (global = this x world size)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (after warm-up)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, help="validate every N steps (default: each epoch)")
    p.add_argument("--ckpt-every", type=int, help="also write last.pt every N steps")
    p.add_argument("--resume", help="'auto' (RUN_DIR/checkpoints/last.pt if present) or a checkpoint path")
    p.add_argument("--stop-after-steps", type=int,
                   help="stop once N steps in all are done, writing last.pt (LR schedule unchanged): "
                        "a time-boxed slice of a longer run, continued later with --resume auto")
    p.add_argument("--experiment", default="sparkdp", help="MLflow experiment name")
    p.add_argument("--log-every", type=int, default=10, help="steps between MLflow train metrics")
    p.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="decode JPEGs in loader workers (cpu) or batched on the GPU (gpu)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--dist-timeout", type=float, default=600.0,
                   help="seconds a collective waits for a missing rank before failing")
    p.add_argument("--stacks-after", type=float,
                   help="seconds without progress after which every rank writes the Python stacks of its "
                        "threads and loader workers to RUN/stacks/ (default: --dist-timeout / 4)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))
