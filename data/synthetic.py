"""A generated, learnable image-folder data set for the demo and tests.

``python -m data.synthetic --out DIR --classes K --per-class N`` writes
``DIR/class_XX/img_XXXXX.jpg``: photo-sized JPEGs (default 512x384, tens of KB) whose
class is visible at any resolution (a class colour and stripe angle) under per-image
noise, jitter and brightness changes, so a small CNN learns it in a few hundred steps.
"""
from __future__ import annotations

import argparse
import colorsys
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.errors import cli
from data.settings import build_parser as settings_parser
from data.progress import progress_bar
from data.settings import check_settings, setting


def class_style(k: int, num_classes: int) -> tuple[np.ndarray, float]:
    """Colour (RGB floats 0..255) and stripe angle (radians) that identify class ``k``."""
    hue = k / max(num_classes, 1)
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9)) * 255.0
    angle = math.pi * ((k * 0.618034) % 1.0)
    return rgb, angle


def make_image(k: int, num_classes: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    rgb, angle = class_style(k, num_classes)
    angle += rng.normal(0, 0.08)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(0.08, 0.14) * min(width, height)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period) + phase)
    shade = 0.55 + 0.35 * stripes[..., None]
    img = rgb[None, None, :] * shade * rng.uniform(0.7, 1.15)
    img += rng.normal(0, 18, size=img.shape)  # sensor-like noise: realistic JPEG sizes
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def generate(out: str, classes: int = 4, per_class: int = 50, width: int = 512, height: int = 384,
             seed: int = 0, quality: int = 90, progress: bool = True) -> list[str]:
    """Write the data set under ``out`` and return the class folder names."""
    names = [f"class_{k:02d}" for k in range(classes)]
    rng = np.random.default_rng(seed)
    total = classes * per_class
    with progress_bar(total=total, desc="synthetic", unit="img", disable=not progress) as bar:
        for k, name in enumerate(names):
            os.makedirs(os.path.join(out, name), exist_ok=True)
            for i in range(per_class):
                img = make_image(k, classes, width, height, rng)
                img.save(os.path.join(out, name, f"img_{i:05d}.jpg"), quality=quality)
                bar.update()
    return names


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


@dataclass
class SyntheticOptions:
    out: str = setting(metavar="DIR", help="folder to write <class>/<image>.jpg into")
    classes: int = setting(4, minimum=2, metavar="N", help="classes (folders)")
    per_class: int = setting(50, minimum=1, metavar="N", help="images per class")
    size: tuple = setting((512, 384), parse=_size, metavar="WxH", doc="512x384", help="image width x height")
    seed: int = setting(0, metavar="N", help="the images drawn")
    progress: bool = setting(True, help="no progress bar")

    def __post_init__(self) -> None:
        check_settings(self)


@cli
def main(argv: list[str] | None = None) -> None:
    parser = settings_parser(SyntheticOptions, prog="python -m data.synthetic", description=__doc__.split("\n")[0])
    a = SyntheticOptions(**vars(parser.parse_args(argv)))
    generate(a.out, a.classes, a.per_class, *a.size, seed=a.seed, progress=a.progress)
    print(f"wrote {a.classes * a.per_class} images in {a.classes} classes to {a.out}")


if __name__ == "__main__":
    main()
