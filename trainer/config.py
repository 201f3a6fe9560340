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
from data.loader import DECODE_MODES
from data.transforms import AUTO_AUGMENT
from trainer.precision import PRECISIONS
from trainer.schedule import BASE_LR

PROG = "torchrun --nproc-per-node N -m trainer.train"
DESCRIPTION = "Train a torchvision classifier with DDP on Parquet splits made by data.convert."


@dataclass
class TrainConfig:
    data: str = setting(metavar="DIR", help="folder written by `python -m data.convert` (local path or URL)")
    out: str = setting(metavar="DIR", help="run folder: checkpoints/, summary.json, the MLflow store")
    model: str = setting("resnet50", metavar="NAME",
                         help="any torchvision classification model (resnet18, efficientnet_b0, convnext_tiny, "
                              "vit_b_16, ...)")
    weights: str | None = setting(None, trajectory=True, metavar="NAME",
                                  help="start from torchvision weights: a name such as IMAGENET1K_V2 or DEFAULT, "
                                       "downloaded into the torch cache (TORCH_HOME/hub/checkpoints) when missing, "
                                       "once per machine; the head is fresh")
    weights_path: str | None = setting(None, trajectory=True, metavar="FILE",
                                       help="start from a state_dict file; the head is fresh if its size differs")
    backbone_lr_factor: float = setting(1.0, trajectory=True, above=0, maximum=1, metavar="F",
                                        help="with --weights/--weights-path: the pretrained layers train at F x "
                                             "the LR, the fresh head at the LR (fine-tuning: 0.1)")
    freeze_backbone_epochs: int = setting(0, trajectory=True, minimum=0, metavar="N",
                                          help="with --weights/--weights-path: train only the fresh head for the "
                                               "first N epochs (BatchNorm statistics still adapt)")
    image_size: int = setting(224, trajectory=True, minimum=1, metavar="N", help="training crop / eval crop size")
    epochs: int = setting(10, trajectory=True, minimum=1, metavar="N", help="epochs of --steps-per-epoch steps")
    steps_per_epoch: int | None = setting(None, trajectory=True, minimum=1, metavar="N",
                                          doc="train rows // global batch",
                                          help="optimizer steps per epoch, identical on every rank")
    batch_size: int = setting(64, minimum=1, metavar="N",
                              help="per rank and micro-batch; the global batch is this x --grad-accum x ranks")
    global_batch_size: int | None = setting(None, minimum=1, metavar="N", doc="--batch-size x --grad-accum x ranks",
                                            help="images per optimizer step over all ranks, instead of --batch-size: "
                                                 "a rank's micro-batch is N / (ranks x --grad-accum)")
    grad_accum: int | None = setting(None, minimum=1, metavar="K",
                                     doc="1; resuming with --global-batch-size on another world size: what keeps "
                                         "the checkpoint's micro-batch",
                                     help="micro-batches per optimizer step on each rank (gradients accumulated)")
    streams: int | None = setting(None, minimum=1, metavar="C",
                                  doc="the checkpoint's; else ranks x workers, as far as the global batch allows",
                                  help="canonical train streams: the global sample order depends on these and the "
                                       "global batch, not on the world size; a run resumes exactly on any world "
                                       "size that divides C")
    lr: float | None = setting(None, trajectory=True, above=0, metavar="LR",
                               doc="--base-lr x sqrt(global batch / 256) (adamw), x global batch / 256 (sgd)",
                               help="peak learning rate (after warm-up), exactly; default: the optimizer's batch "
                                    "scaling rule")
    base_lr: float | None = setting(None, trajectory=True, above=0, metavar="LR", doc="0.004 (adamw), 0.1 (sgd)",
                                    help="learning rate per 256 images of global batch, when --lr is not given")
    optimizer: str = setting("adamw", trajectory=True, choices=tuple(BASE_LR),
                             help="AdamW; or SGD with Nesterov momentum (the large-batch ResNet recipe); no weight "
                                  "decay on biases and norm weights")
    momentum: float = setting(0.9, trajectory=True, metavar="M", help="SGD momentum")
    weight_decay: float = setting(1e-4, trajectory=True, metavar="W",
                                  help="weight decay (not on biases and norm weights)")
    warmup_epochs: float = setting(1.0, trajectory=True, minimum=0, metavar="E",
                                   help="linear warm-up over the first E epochs (at most half the run), then "
                                        "cosine decay to 0 at the last step; the LR changes every step")
    warmup_steps: int | None = setting(None, trajectory=True, minimum=0, metavar="N",
                                       help="warm-up steps, exactly, instead of --warmup-epochs")
    label_smoothing: float = setting(0.0, trajectory=True, minimum=0, below=1, metavar="S",
                                     help="cross-entropy label smoothing")
    auto_augment: str = setting("none", trajectory=True, choices=AUTO_AUGMENT,
                                help="per-image policy after the crop and flip: TrivialAugmentWide, RandAugment, "
                                     "AugMix")
    random_erase: float = setting(0.0, trajectory=True, minimum=0, maximum=1, metavar="P",
                                  help="erase a random rectangle (to the mean colour) with probability P")
    mixup_alpha: float = setting(0.0, trajectory=True, minimum=0, metavar="A",
                                 help="MixUp with Beta(A, A) mixing weights (0: off)")
    cutmix_alpha: float = setting(0.0, trajectory=True, minimum=0, metavar="A",
                                  help="CutMix with Beta(A, A) (0: off); with --mixup-alpha, one of the two per "
                                       "batch")
    model_ema: bool = setting(False, trajectory=True,
                              help="keep an exponential moving average of the weights; validation, best.pt, "
                                   "evaluate and predict use it")
    model_ema_decay: float = setting(0.999, trajectory=True, minimum=0, below=1, metavar="D",
                                     help="EMA decay per step, ramped up as min(D, (1+n)/(10+n)) over the first "
                                          "n steps")
    grad_clip: float | None = setting(None, trajectory=True, metavar="NORM",
                                      help="clip the global gradient norm to this")
    workers: int = setting(2, minimum=0, metavar="N",
                           help="loader processes per rank (decode and augmentation run there)")
    seed: int = setting(0, trajectory=True, metavar="N", help="weights, data order and augmentation")
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
    decode: str = setting("cpu", trajectory=True, choices=DECODE_MODES,
                          help="decode JPEGs in the loader workers (cpu) or batched on the GPU (gpu)")
    precision: str = setting("auto", trajectory=True, choices=PRECISIONS,
                             help="auto: bf16 autocast on GPUs that have it, fp16 with loss scaling on older ones "
                                  "(T4, V100), fp32 on CPU; fp16 on CPU is refused")
    compile: bool = setting(False, trajectory=True,
                            help="torch.compile the model (the first steps are slow while it compiles)")
    progress: bool = setting(True, help="no tqdm bar (rank 0 is the only one that shows one anyway)")
    dist_timeout: float = setting(600.0, metavar="S",
                                  help="seconds a collective waits for a dead or stuck rank before failing "
                                       "instead of hanging")
    stacks_after: float | None = setting(None, above=0, metavar="S", doc="--dist-timeout / 4",
                                         help="a rank with no progress for S seconds writes the Python stacks of "
                                              "its threads and loader workers to RUN/stacks/; if it was waiting on "
                                              "a loader worker all that time, it ends that worker and stops with "
                                              "one line, else the run goes on")

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
        if not (self.weights or self.weights_path) and (self.freeze_backbone_epochs or self.backbone_lr_factor != 1):
            raise UserError("--freeze-backbone-epochs and --backbone-lr-factor need pretrained weights "
                            "(--weights or --weights-path)")
        if self.freeze_backbone_epochs >= self.epochs:
            raise UserError(f"--freeze-backbone-epochs {self.freeze_backbone_epochs} leaves no epoch to train the "
                            f"backbone in (--epochs {self.epochs})")
        if self.decode == "gpu" and (self.auto_augment != "none" or self.random_erase):
            raise UserError("--auto-augment and --random-erase run in the loader workers: use --decode cpu")

    def batches(self, world_size: int, resumed_micro_batch: int | None = None) -> tuple[int, int, int]:
        """``(global batch, micro-batch per rank, micro-batches per step)`` on ``world_size`` ranks.

        Without ``--grad-accum``, a run resumed with ``--global-batch-size`` keeps the
        checkpoint's micro-batch (``resumed_micro_batch``) where the world size allows, so
        a world-size change alters neither the global batch nor BatchNorm's batches and
        the run goes on exactly (up to float rounding)."""
        accum = self.grad_accum or 1
        if self.global_batch_size is None:
            return self.batch_size * accum * world_size, self.batch_size, accum
        if self.grad_accum is None and resumed_micro_batch and \
                self.global_batch_size % (world_size * resumed_micro_batch) == 0:
            accum = self.global_batch_size // (world_size * resumed_micro_batch)
        if self.global_batch_size % (world_size * accum):
            raise UserError(f"--global-batch-size {self.global_batch_size} is not a multiple of {world_size} ranks x "
                            f"--grad-accum {accum}")
        return self.global_batch_size, self.global_batch_size // (world_size * accum), accum

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
