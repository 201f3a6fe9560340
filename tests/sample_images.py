"""Images for tests: encoded noise in any Pillow format, a PNG that is only a header, a class
image like the synthetic set's, and a folder to score with broken files and non-images."""
from __future__ import annotations

import io
import os
import shutil
import struct
import zlib

import numpy as np
from PIL import Image

from data.synthetic import make_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` 1-bit pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def class_image(k: int, path: str, mode: str = "RGB") -> str:
    make_image(k, 3, 64, 48, np.random.default_rng(100 + k)).convert(mode).save(path)
    return path


BROKEN = {"class_00/empty.jpg": b"", "class_01/not_an_image.png": b"hello, world",
          "class_02/truncated.jpg": None}  # None: the first half of a real JPEG


def image_folder(data: str, folder: str, per_class: int = 6) -> list[str]:
    """A few of the data set's source images per class, a PNG, broken files and non-images."""
    images = os.path.join(os.path.dirname(data), "images")
    kept = []
    for cls in sorted(os.listdir(images)):
        os.makedirs(os.path.join(folder, cls))
        for name in sorted(os.listdir(os.path.join(images, cls)))[:per_class]:
            shutil.copy(os.path.join(images, cls, name), os.path.join(folder, cls, name))
            kept.append(f"{cls}/{name}")
    first = os.path.join(folder, kept[0])
    with Image.open(first) as img:
        img.convert("L").save(os.path.join(folder, "unsorted.png"))  # grayscale PNG, no class folder
    kept.append("unsorted.png")
    with open(first, "rb") as f:
        jpeg = f.read()
    for rel, content in BROKEN.items():
        with open(os.path.join(folder, rel), "wb") as f:
            f.write(jpeg[:len(jpeg) // 2] if content is None else content)
        kept.append(rel)
    for skipped in ("notes.txt", ".hidden.jpg"):
        with open(os.path.join(folder, "class_00", skipped), "wb") as f:
            f.write(jpeg)
    return sorted(kept)
