"""The benchmark's settings, each declared once (:mod:`data.settings`): the command line,
its checks and ``bench/README.md``'s option table derive from :class:`BenchOptions`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.measure import cores
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting
from trainer.precision import PRECISIONS

PROG = "python -m bench"
DESCRIPTION = "Input-pipeline benchmark: how many images per second each way of reading delivers."
RESIZED_SIDE = 256  # --max-side of the project_resized conversion
PATHS = ("raw_files", "petastorm_converter", "project", "project_resized", "decode_ceiling", "project_gpu_decode")


def default_paths() -> list[str]:
    """Every path; ``project_gpu_decode`` only on CUDA (named in ``--paths`` it also runs on CPU,
    decoding on the CPU: a check of the path, not of its speed)."""
    import torch

    return [p for p in PATHS if p != "project_gpu_decode" or torch.cuda.is_available()]


def path_list(text: str) -> list[str]:
    """``--paths``: comma-separated names from PATHS."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PATHS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown path(s) {', '.join(unknown) or '(none)'}; have {', '.join(PATHS)}")
    return names


@dataclass
class BenchOptions:
    images: str = setting(metavar="DIR", help="the <class>/<image> folder to read")
    out_json: str = setting(metavar="FILE", help="results file; the bar chart goes next to it (.png)")
    data: str | None = setting(None, metavar="DIR", doc="converted here",
                               help="the images' data.convert output")
    data_resized: str | None = setting(None, metavar="DIR", doc="converted here",
                                       help=f"the images' data.convert --max-side {RESIZED_SIDE} output")
    workers: int = setting(factory=cores, minimum=0, metavar="N", doc="all cores",
                           help="loader processes (or threads) of every path")
    batch_size: int = setting(32, minimum=1, metavar="N", help="images per batch, every path")
    image_size: int = setting(224, minimum=1, metavar="N", help="RandomResizedCrop output size")
    seconds: float = setting(10.0, above=0, metavar="S", help="measured seconds per path and round")
    rounds: int = setting(3, minimum=1, metavar="N", help="interleaved rounds; the median is reported")
    paths: list[str] = setting(factory=default_paths, parse=path_list, metavar="P,Q,...",
                               doc="all (project_gpu_decode on CUDA only)",
                               help=f"the paths to measure, a subset of {','.join(PATHS)}")
    train_step: bool = setting(False, help="also time real training steps fed by each path, against a "
                                           "synthetic batch kept on the device (on CUDA, marked against the goal)")
    model: str = setting("resnet50", metavar="NAME", help="torchvision model for --train-step")
    precision: str = setting("auto", choices=PRECISIONS,
                             help="--train-step autocast, as the trainer's --precision (fp16 with loss scaling)")
    compile: bool = setting(False, help="--train-step: torch.compile the model; the synthetic rate is then also "
                                        "measured without it (synthetic_eager)")
    work: str | None = setting(None, metavar="DIR", doc="a temporary folder, removed",
                               help="keep the conversions here")
    against: str | None = setting(None, metavar="REV", doc="off",
                                  help="also measure git revision REV's project path with its own benchmark (checked "
                                       "out in a worktree), in the same rounds; prints project's ratio to it")

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(BenchOptions, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> BenchOptions:
    return BenchOptions(**vars(build_parser().parse_args(argv)))
