"""A small real data set for learning tests: scikit-learn's bundled handwritten digits.

``load_digits`` ships 1,797 real 8x8 grey-scale scans of the digits 0-9 (UCI optdigits,
no download). :func:`write_digits` saves them as ``ROOT/digit_K/NNNN.jpg`` (upscaled
to 32x32 so JPEG keeps the strokes), an image folder ``data.convert`` reads like any other.
Hard enough to tell a recipe that learns from one that does not: a ResNet-18 started
with a too-large learning rate sits at chance (0.10), a sound one passes 0.90.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

SIDE = 32


def write_digits(root: str) -> str:
    """Write the digits under ``root`` (one folder per class); returns ``root``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(root, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        grey = Image.fromarray((pixels * (255 / 16)).round().astype(np.uint8), "L")
        grey.resize((SIDE, SIDE), Image.BILINEAR).save(os.path.join(folder, f"{i:04d}.jpg"), quality=95)
    return root
