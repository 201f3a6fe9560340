"""Decode and check one image file, and make it an upright RGB JPEG (byte-for-byte when it is one).

Used by the Spark conversion (inside Python workers) and by anything else that needs
the same rule; it imports no Spark. The rule:

* every file is fully decoded (``load()``), so truncated and corrupt files are caught;
* an RGB JPEG with no EXIF rotation (orientation 1 or none) and within ``max_side`` is
  kept byte-for-byte;
* anything else Pillow can read (PNG, GIF, WebP, BMP, TIFF, grayscale, CMYK, palette,
  alpha, EXIF-rotated, 16-bit, too large) is rotated upright, made RGB (transparency
  composited on white), shrunk so that ``max(width, height) <= max_side`` (aspect
  kept, Lanczos) and re-encoded as JPEG at ``quality``;
* a file that cannot be used gets a short reason (``to_rgb_jpeg`` raises
  :class:`BadImage`, ``try_rgb_jpeg`` returns the reason).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_QUALITY = 90
EXIF_ORIENTATION = 0x0112
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
MAX_REASON_CHARS = 200
EMPTY_FILE = "empty file"
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
              (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"))


class BadImage(ValueError):
    """The bytes are not a usable image; ``str(exc)`` is a short reason."""


@dataclass(frozen=True)
class RgbJpeg:
    """An RGB JPEG ready to store, with its pixel size; ``converted`` is False for a
    file kept byte-for-byte."""

    jpeg: bytes
    width: int
    height: int
    converted: bool


def to_rgb_jpeg(data: bytes, quality: int = DEFAULT_QUALITY, max_side: int | None = None) -> RgbJpeg:
    """Decode ``data`` fully and return it as an RGB JPEG; raise BadImage if unusable."""
    if not data:
        raise BadImage(EMPTY_FILE)
    img = _open_and_load(data, max_side)
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        orientation = 1
    if (img.format == "JPEG" and img.mode == "RGB" and orientation in (1, None)
            and (max_side is None or max(img.size) <= max_side)):
        return RgbJpeg(bytes(data), img.width, img.height, converted=False)
    try:
        rgb = _shrink(_to_rgb(_upright(img)), max_side)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=quality)
    except Exception as exc:
        raise BadImage(_short(f"cannot convert {img.mode} {img.format} image: {exc}")) from None
    return RgbJpeg(buf.getvalue(), rgb.width, rgb.height, converted=True)


def try_rgb_jpeg(data: bytes, quality: int = DEFAULT_QUALITY,
                  max_side: int | None = None) -> RgbJpeg | str:
    """Like :func:`to_rgb_jpeg`, but return the reason string instead of raising."""
    try:
        return to_rgb_jpeg(data, quality, max_side)
    except BadImage as exc:
        return str(exc)


def _open_and_load(data: bytes, max_side: int | None) -> Image.Image:
    """Open and fully decode; Pillow's decompression-bomb warning counts as an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_side and img.format == "JPEG" and max(img.size) >= 4 * max_side:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: still reads every byte.
                scale = 2 * max_side / max(img.size)
                img.draft("RGB", (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
            img.load()
            return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"decompression bomb: more than {Image.MAX_IMAGE_PIXELS} pixels") from None
    except UnidentifiedImageError:
        kind = _sniff(data)
        raise BadImage(f"corrupt {kind} file" if kind else "not an image (unrecognised format)") from None
    except Exception as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise BadImage("truncated image") from None
        raise BadImage(_short(f"corrupt image: {type(exc).__name__}: {text}")) from None


def _sniff(data: bytes) -> str | None:
    """The image format a file's first bytes announce, if any."""
    for magic, kind in SIGNATURES:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a no-op when there is none)."""
    return ImageOps.exif_transpose(img) or img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to 8-bit L (Pillow would clip at 255)."""
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 255:
        scaled = arr
    elif lo >= 0 and hi <= 65535:
        scaled = arr / 257.0
    else:
        scaled = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    """Resize so that the longer side is at most ``max_side`` (aspect kept)."""
    if not max_side or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."
