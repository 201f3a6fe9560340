"""data.transforms: the header read that sizes each crop, the crop box drawn, and the flip (no subprocess, no Spark)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from data.transforms import decode_batch, image_size, random_resized_crop_box
from tests.sample_images import encode, noise


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"exif": Image.Exif().tobytes(), "dpi": (300, 300)},
                                     {"subsampling": 0, "optimize": True}])
def test_jpeg_size_is_read_from_the_frame_header(options):
    assert image_size(encode(noise(61, 37), "JPEG", **options)) == (61, 37)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_formats_are_sized_by_pillow(fmt):
    assert image_size(encode(noise(30, 20), fmt)) == (30, 20)


@pytest.mark.parametrize("box, size", [((3, 5, 50, 40), 16), ((10, 7, 31, 22), 40), ((0, 0, 64, 48), 33)])
def test_a_flipped_image_is_the_mirror_of_the_unflipped_one(box, size):
    """The flip is applied to the crop, before the resize: the result must be the mirror of
    the unflipped output, shrinking (16), enlarging (40) or at an odd size (33)."""
    jpeg = encode(noise(64, 48), "JPEG")
    plain = decode_batch([jpeg], size, lambda w, h: (box, False))
    flipped = decode_batch([jpeg], size, lambda w, h: (box, True))
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)


@pytest.mark.parametrize("width, height", [(512, 384), (100, 300), (640, 120)])
def test_crop_boxes_are_drawn_as_torchvisions_random_resized_crop_draws_them(width, height):
    """The same distribution as torchvision's RandomResizedCrop.get_params (area 8-100% of
    the image, aspect 3/4-4/3 log-uniform, corner uniform): box statistics of 4,000 draws
    each, within a few standard errors."""
    from torchvision.transforms import RandomResizedCrop

    rng = np.random.default_rng(1)
    ours = np.array([random_resized_crop_box(width, height, rng) for _ in range(4000)], dtype=float)
    theirs = []
    with torch.random.fork_rng(devices=[]):  # leave the other tests' generator as it was
        torch.manual_seed(1)
        for _ in range(4000):
            top, left, h, w = RandomResizedCrop.get_params(torch.empty(1, height, width), (0.08, 1.0), (3 / 4, 4 / 3))
            theirs.append((left, top, left + w, top + h))
    theirs = np.array(theirs, dtype=float)
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    assert (ours[:, 2] > ours[:, 0]).all() and (ours[:, 3] > ours[:, 1]).all()

    def stats(boxes):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        free_x, free_y = np.maximum(width - w, 1), np.maximum(height - h, 1)
        return {"area": w * h / (width * height), "log aspect": np.log(w / h),
                "left": boxes[:, 0] / free_x, "top": boxes[:, 1] / free_y}

    reference = stats(theirs)
    for name, a in stats(ours).items():
        b = reference[name]
        error = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * error + 1e-9, (name, a.mean(), b.mean())
