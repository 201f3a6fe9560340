"""data.transforms: the header read that sizes each crop, and the flip (no subprocess, no Spark)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from data.transforms import decode_batch, image_size
from tests.sample_images import encode, noise


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"exif": Image.Exif().tobytes(), "dpi": (300, 300)},
                                     {"subsampling": 0, "optimize": True}])
def test_jpeg_size_is_read_from_the_frame_header(options):
    assert image_size(encode(noise(61, 37), "JPEG", **options)) == (61, 37)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_formats_are_sized_by_pillow(fmt):
    assert image_size(encode(noise(30, 20), fmt)) == (30, 20)


def test_a_flipped_image_is_the_mirror_of_the_unflipped_one():
    jpeg = encode(noise(64, 48), "JPEG")
    box = (3, 5, 50, 40)
    plain = decode_batch([jpeg], 16, lambda w, h: (box, False))
    flipped = decode_batch([jpeg], 16, lambda w, h: (box, True))
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)
