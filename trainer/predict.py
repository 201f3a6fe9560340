"""Classify image files with a checkpoint: ``python -m trainer.predict --checkpoint FILE IMAGE...``.

The class names come from the checkpoint. Each file goes through the same steps as
training data (:mod:`trainer.classify`: made an upright RGB JPEG exactly as
``data.convert`` stores it, then resize and centre crop to the trained size).
Prints the top-k classes with softmax probabilities per image.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

from data.images import BadImage
from data.errors import UserError, cli
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting
from trainer.classify import FORWARD_BATCH, Classifier, prepare_image


@dataclass
class PredictFilesOptions:
    checkpoint: str = setting(metavar="FILE", help="a .pt file written by trainer.train (best.pt, last.pt)")
    images: list[str] = setting(positional=True, repeat=True, metavar="IMAGE",
                                help="image files (JPEG, PNG, WebP, ...)")
    top_k: int = setting(5, minimum=1, metavar="K", help="classes to show per image")
    image_size: int | None = setting(None, minimum=1, metavar="N", doc="the checkpoint's",
                                     help="resize and centre-crop size")

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(PredictFilesOptions, prog="python -m trainer.predict", description=__doc__.split("\n")[0])


def load_image(path: str, size: int) -> np.ndarray:
    """One file as the eval transform's HWC uint8 array; a plain UserError if unusable."""
    try:
        with open(path, "rb") as f:
            return prepare_image(f.read(), size)
    except (OSError, BadImage) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"cannot read image {path}: {reason}") from None


def predict(checkpoint: str, images: list[str], top_k: int = 5,
            image_size: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """``{image path: [(class name, probability), ...]}``, best first, ``top_k`` long."""
    if top_k < 1:
        raise UserError("--top-k must be >= 1")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:  # before loading the model: say it at once
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"image not found: {missing[0]}{more}")
    classifier = Classifier.from_file(checkpoint, image_size=image_size)
    out: dict[str, list[tuple[str, float]]] = {}
    for start in range(0, len(images), FORWARD_BATCH):  # a forward batch of images in memory at a time
        paths = images[start:start + FORWARD_BATCH]
        out.update(zip(paths, classifier.top_k([load_image(p, classifier.image_size) for p in paths], top_k)))
    return out


def main(argv: list[str] | None = None) -> dict[str, list[tuple[str, float]]]:
    """Print and return the top-k predictions for every image given."""
    opts = PredictFilesOptions(**vars(build_parser().parse_args(argv)))
    results = predict(opts.checkpoint, opts.images, opts.top_k, opts.image_size)
    for path, ranked in results.items():
        print(path)
        width = max(len(name) for name, _ in ranked)
        for name, prob in ranked:
            print(f"  {name:<{width}}  {prob:.4f}")
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
