"""Decode stored JPEG bytes straight to fixed-size uint8 arrays, cheaply.

Both paths crop and resize in one Pillow call (``resize(box=...)``) and use JPEG draft
mode so the decoder itself downsamples by 2/4/8 when the output needs fewer pixels
than the stored image has. Output is HWC uint8; normalisation happens on the batch
(see :func:`data.loader.normalize`), which is cheaper than per-image float tensors.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# ImageNet statistics, as torchvision's pretrained weights expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 224 / 256  # resize to size/ratio, then center-crop size


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params, returning a (left, top, right, bottom) box."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """Box equivalent to Resize(size / 0.875) followed by CenterCrop(size)."""
    side = min(width, height) * EVAL_RESIZE_RATIO
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _crop_resize(img: Image.Image, box, size: int) -> Image.Image:
    """Crop ``box`` (in original pixels) and resize to size x size, using JPEG draft mode."""
    width, height = img.size
    bw, bh = box[2] - box[0], box[3] - box[1]
    img.draft("RGB", (math.ceil(width * size / bw), math.ceil(height * size / bh)))
    sx, sy = img.size[0] / width, img.size[1] / height
    if img.mode != "RGB":
        img = img.convert("RGB")
    scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return img.resize((size, size), Image.BILINEAR, box=scaled)


def decode_train(data: bytes, size: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(size) + horizontal flip; returns HWC uint8."""
    img = Image.open(io.BytesIO(data))
    box = random_resized_crop_box(*img.size, rng)
    out = _crop_resize(img, box, size)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def decode_eval(data: bytes, size: int) -> np.ndarray:
    """Resize(size / 0.875) + CenterCrop(size); returns HWC uint8."""
    img = Image.open(io.BytesIO(data))
    return np.asarray(_crop_resize(img, center_crop_box(*img.size, size), size))
