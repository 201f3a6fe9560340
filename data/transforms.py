"""Decode stored JPEG bytes straight to fixed-size uint8 images, cheaply.

Each CPU-decoded image is cropped to its box, mirrored when flipped (before the resize:
the same pixels as after it, the filter being symmetric) and resized to ``size x size``
with PyTorch's antialiased bilinear uint8 kernel, straight into its batch
(:func:`decode_into`); the GPU path (:mod:`data.gpu_decode`) does the same with batched
matrix products. Decoding uses libjpeg-turbo through torchvision's ``decode_jpeg``
operator; only when the crop is at least twice the output size does Pillow's JPEG draft
mode decode at 1/2, 1/4 or 1/8 scale instead. Measured on one core with 512x384 photos
(``python -m bench`` prints the rates): torchvision decode + torch resize ~1.5x Pillow's
decode + ``resize(box=...)``, ~1.8x torchvision's ``RandomResizedCrop`` + ``ToTensor`` +
``Normalize`` on PIL images.

Random parameters are drawn by :func:`train_params` (box, then flip), separately from
decoding, so the GPU path (:mod:`data.gpu_decode`) draws exactly the same crops and
flips in the loader workers. The optional recipe augmentations (:class:`Augment`:
AutoAugment-style policies, random erasing) run on the decoded uint8 batch, each image
on its own, with torchvision's transforms drawing from a generator keyed by the caller.
Normalisation happens on the batch, on the device (:func:`normalize`), which is
cheaper than per-image float tensors.
"""
from __future__ import annotations

import functools
import io
import math
import struct
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.io  # noqa: F401  (registers torch.ops.image)
from PIL import Image
from torchvision.io import ImageReadMode

# ImageNet statistics, as torchvision's pretrained weights expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# torch.frombuffer warns on read-only bytes; JPEG bytes are only ever read here.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning, module=__name__)
EVAL_RESIZE_RATIO = 224 / 256  # resize to size/ratio, then center-crop size
Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels


_CROP_TRIES = 10  # torchvision's: boxes drawn before falling back to a centre crop


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params, returning a (left, top, right, bottom) box.
    Its uniforms are drawn in one call (numpy's per-number calls cost more than the rest of
    the draw: 8 -> 2 us per image): ten tries of (area, aspect), then the corner."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    u = rng.random(2 * _CROP_TRIES + 2).tolist()
    for i in range(0, 2 * _CROP_TRIES, 2):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[i])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[i + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(u[-2] * (width - w + 1))
            top = int(u[-1] * (height - h + 1))
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


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels: a JPEG's frame
    header read directly (a tenth of the cost of opening it with Pillow), others by Pillow."""
    return _jpeg_size(data) or Image.open(io.BytesIO(data)).size


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, or None when ``data`` is not a
    JPEG whose segments lead to one."""
    if data[:2] != b"\xff\xd8":
        return None
    at, end = 2, len(data) - 9
    while at < end and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        at += 1 if marker == 0xFF else 2 + struct.unpack_from(">H", data, at + 2)[0]  # fill byte, or a segment
    return None


# Start-of-frame markers SOF0-SOF15; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def train_params(width: int, height: int, rng: np.random.Generator) -> tuple[Box, bool]:
    """RandomResizedCrop box and horizontal flip of one training image, drawn in that order."""
    return random_resized_crop_box(width, height, rng), bool(rng.random() < 0.5)


def eval_params(width: int, height: int, size: int) -> tuple[Box, bool]:
    """The center-crop box (whole pixels) of one eval image, never flipped."""
    left, top, right, bottom = center_crop_box(width, height, size)
    return (round(left), round(top), round(right), round(bottom)), False


def _crop(image: torch.Tensor, box: Box) -> torch.Tensor:
    """``box`` of a CHW image as a dense channels_last ``[1, 3, h, w]``: its output is laid out
    HWC, as batches are, and crop plus resize to 224 cost 146 us on a 512x384 photo (81 on a
    256x192 one) against 583 (344) for a contiguous CHW crop resized and placed in the batch
    (0.6 of each side, one core, median of 7)."""
    left, top, right, bottom = box
    return image[:, top:bottom, left:right].unsqueeze(0).contiguous(memory_format=torch.channels_last)


# torchvision.io.decode_jpeg's own operator: its Python wrapper (argument checks, a device made
# from a string, API-usage logging) costs ~9 us a call measured alone: 2-7% of decoding a
# 256-pixel image (385 -> 358 us, paired in one process).
_decode_jpeg = torch.ops.image.decode_jpeg
_RGB = ImageReadMode.RGB.value

# F.interpolate's own kernel for bilinear + antialias, called with an output tensor: the
# resize writes straight into the batch (same pixels, no copy, no argument checks per image).
_resize_into = torch.ops.aten._upsample_bilinear2d_aa.out


def _pixels(data: bytes, width: int, height: int, box: Box, size: int) -> tuple[torch.Tensor, Box]:
    """CHW uint8 pixels of the image and ``box`` in those pixels: libjpeg-turbo at full size,
    or Pillow draft mode (DCT downscaling) when the crop is twice the output or more."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    if min(bw, bh) < 2 * size and data[:2] == b"\xff\xd8":
        # Read in place: the decoder never writes to its input (the warning is filtered above).
        return _decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), _RGB, False), box  # no EXIF rotation
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (math.ceil(width * size / bw), math.ceil(height * size / bh)))
    sx, sy = img.size[0] / width, img.size[1] / height
    rgb = torch.from_numpy(np.array(img.convert("RGB") if img.mode != "RGB" else img)).permute(2, 0, 1)
    left, top = int(box[0] * sx), int(box[1] * sy)
    return rgb, (left, top, max(left + 1, round(box[2] * sx)), max(top + 1, round(box[3] * sy)))


def decode_into(data: bytes, size: int, params: Callable[[int, int], tuple[Box, bool]], out: torch.Tensor) -> None:
    """Decode ``data``, then crop/resize/flip as ``params(width, height)`` says, into ``out``
    (HWC uint8, size x size): the per-image work of every CPU-decoded batch."""
    width, height = image_size(data)
    box, flip = params(width, height)
    pixels, box = _pixels(data, width, height, box, size)
    crop = _crop(pixels, box)
    # Flipped before the resize: the same pixels as after it (the filter is symmetric), written
    # straight into ``out``, a third of the flip's cost (a copy of the crop, not two of the output).
    _resize_into(crop.flip(-1) if flip else crop, [size, size], False, out=out.permute(2, 0, 1).unsqueeze(0))


def decode_crop(data: bytes, size: int, params: Callable[[int, int], tuple[Box, bool]]) -> torch.Tensor:
    """:func:`decode_into` a new image: CHW uint8."""
    out = torch.empty((size, size, 3), dtype=torch.uint8)
    decode_into(data, size, params, out)
    return out.permute(2, 0, 1)


def decode_batch(raw: Sequence[bytes], size: int, params: Callable[[int, int], tuple[Box, bool]],
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a batch into uint8 ``[B, 3, size, size]`` with channels_last strides, written
    into ``out`` (uint8 ``[B, size, size, 3]``, e.g. in shared memory) when given."""
    if out is None:
        out = torch.empty((len(raw), size, size, 3), dtype=torch.uint8)
    for data, image in zip(raw, out.unbind(0), strict=True):  # one call for the views, not one per image
        decode_into(data, size, params, image)
    return out.permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32,
              channels_last: bool = True) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` -> float on ``device``, normalised by MEAN and STD (channels_last
    memory by default): done on the batch, on the device, 4x fewer bytes cross to it."""
    mean, std = _mean_std(torch.device(device), dtype)
    x = images.to(device, non_blocking=True).to(dtype).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD (x 255) on ``device``, made once per device: a tensor made from Python
    values is a copy from pageable memory, which waits for all queued GPU work, so making
    them per batch would stop the CPU from running ahead of the GPU."""
    return tuple(torch.tensor(v, device=device, dtype=dtype).view(1, 3, 1, 1) * 255 for v in (MEAN, STD))


AUTO_AUGMENT = ("none", "ta_wide", "ra", "augmix")


@dataclass(frozen=True)
class Augment:
    """torchvision's recipe augmentations for a uint8 ``[B, 3, H, W]`` batch, each image on
    its own: the ``auto_augment`` policy (``ta_wide``: TrivialAugmentWide, ``ra``:
    RandAugment, ``augmix``: AugMix; bilinear, torchvision's defaults), then RandomErasing
    with probability ``random_erase``, to the ImageNet mean colour (what the reference's
    erasing to 0 after normalisation gives). ``augment(images, key)`` draws from the torch
    generator seeded with ``key`` and leaves the process's own generator as it was, so a
    key always gives the same batch. Plain data: it pickles into loader workers."""

    auto_augment: str = "none"
    random_erase: float = 0.0

    def __post_init__(self) -> None:
        if self.auto_augment not in AUTO_AUGMENT:
            raise ValueError(f"auto_augment must be one of {', '.join(AUTO_AUGMENT)}, not {self.auto_augment!r}")

    @property
    def active(self) -> bool:
        return self.auto_augment != "none" or self.random_erase > 0

    @functools.cached_property
    def transform(self):
        from torchvision.transforms import v2

        bilinear = v2.InterpolationMode.BILINEAR
        policy = {"ta_wide": v2.TrivialAugmentWide, "ra": v2.RandAugment, "augmix": v2.AugMix}.get(self.auto_augment)
        steps = [policy(interpolation=bilinear)] if policy else []
        if self.random_erase:
            steps.append(v2.RandomErasing(p=self.random_erase, value=[round(255 * m) for m in MEAN]))
        return v2.Compose(steps)

    def __call__(self, images: torch.Tensor, key: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            for i in range(len(images)):
                images[i] = self.transform(images[i])
        return images


def decode_eval(data: bytes, size: int) -> np.ndarray:
    """Resize(size / 0.875) + CenterCrop(size); returns HWC uint8."""
    return decode_crop(data, size, lambda w, h: eval_params(w, h, size)).permute(1, 2, 0).numpy()
