"""data.images: what is kept byte-for-byte, what is converted, what is rejected (no Spark)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data.images import BadImage, to_rgb_jpeg, try_rgb_jpeg
from tests.sample_images import encode, noise, png_header_only


def decoded(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


def test_rgb_jpeg_within_limit_is_kept_byte_for_byte():
    data = encode(noise(64, 48), "JPEG", quality=80)
    out = to_rgb_jpeg(data, max_side=64)
    assert out.jpeg == data and (out.width, out.height) == (64, 48) and not out.converted


def test_exif_rotated_jpeg_is_turned_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = to_rgb_jpeg(encode(noise(64, 48), "JPEG", exif=exif.tobytes()))
    assert out.converted and (out.width, out.height) == (48, 64)
    assert decoded(out.jpeg).size == (48, 64)
    assert decoded(out.jpeg).getexif().get(0x0112) is None


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"),
                                      ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"), ("1", "PNG")])
def test_other_formats_and_modes_become_rgb_jpeg(mode, fmt):
    img = noise(40, 30).convert(mode) if mode not in ("RGBA",) else noise(40, 30, "RGBA")
    out = to_rgb_jpeg(encode(img, fmt), quality=85)
    assert out.converted and (out.width, out.height) == (40, 30)
    assert decoded(out.jpeg).size == (40, 30)


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 10, 10))  # left half fully transparent black
    px = decoded(to_rgb_jpeg(encode(img, "PNG")).jpeg).convert("RGB")
    assert min(px.getpixel((2, 5))) > 240  # white, not black
    assert px.getpixel((17, 5))[0] > 200 and px.getpixel((17, 5))[1] < 60  # still red


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    out = to_rgb_jpeg(encode(Image.fromarray(arr), "PNG"))
    grey = np.asarray(decoded(out.jpeg))
    assert 110 < grey.mean() < 145


def test_max_side_shrinks_keeping_aspect():
    out = to_rgb_jpeg(encode(noise(1000, 10), "PNG"), max_side=100)
    assert (out.width, out.height) == (100, 1)
    big = to_rgb_jpeg(encode(noise(2000, 1500), "JPEG"), max_side=100)  # decoded at reduced scale
    assert big.converted and (big.width, big.height) == (100, 75)
    assert decoded(big.jpeg).size == (100, 75)
    small = encode(noise(64, 48), "JPEG")
    assert to_rgb_jpeg(small, max_side=64).jpeg == small
    assert (to_rgb_jpeg(small, max_side=32).width, to_rgb_jpeg(small, max_side=32).height) == (32, 24)


def test_one_pixel_image_is_kept():
    out = to_rgb_jpeg(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert (out.width, out.height) == (1, 1)


@pytest.mark.parametrize("size", [(12000, 12000), (20000, 20000)])  # Pillow warns / errors
def test_decompression_bombs_are_rejected(size):
    reason = try_rgb_jpeg(png_header_only(*size))
    assert isinstance(reason, str) and "decompression bomb" in reason


def test_broken_files_get_a_short_reason():
    jpeg = encode(noise(64, 48), "JPEG")
    cases = {
        b"": "empty file",
        b"hello, not an image\n": "not an image",
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4: "corrupt PNG file",
        jpeg[: len(jpeg) // 2]: "truncated",
        jpeg[:-2]: "truncated",
    }
    for data, expected in cases.items():
        reason = try_rgb_jpeg(data)
        assert isinstance(reason, str) and expected in reason and "\n" not in reason and len(reason) <= 200
    with pytest.raises(BadImage):
        to_rgb_jpeg(b"")
