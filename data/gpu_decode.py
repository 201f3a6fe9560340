"""``--decode gpu``: loader workers ship JPEG bytes, the training process decodes on the device.

A CPU core decodes a few hundred 512 px JPEGs per second, a GPU (nvJPEG) thousands, so
with ``decode="gpu"`` the workers of :class:`data.loader.ParquetImages` only read the
Parquet rows, parse each JPEG header for its size and draw the crop box and flip with
the same keyed RNG as the CPU path (:func:`data.transforms.train_params`). They yield a
:class:`JpegBatch`; :func:`decode_on_device` decodes it with one batched
``torchvision.io.decode_jpeg(..., device=device)`` call and crops/resizes each image the
way the CPU path does (bilinear, antialiased; in float on the device). Everything but the
decode call's device runs, and is tested, on CPU: with ``device="cpu"`` the result is
within one grey level of the CPU path's batch wherever that path decodes at full size
(crops smaller than twice the output; larger ones it decodes in Pillow's draft mode).
On CUDA (tested on an H200) nvJPEG's pixels differ from libjpeg-turbo's by 3-4 grey
levels on average. Decoding runs inside the training step, in series with it: on the
H200, ResNet-50 trained at 0.59x its synthetic-input rate this way (bench/README.md).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from data.transforms import Box, image_size


class JpegBatch(NamedTuple):
    """A batch of undecoded JPEGs with their crop parameters (tensors, so workers can
    send it through shared memory and the DataLoader can pin it)."""
    data: torch.Tensor     # uint8 [total bytes]: the JPEG files back to back
    offsets: torch.Tensor  # int64 [B + 1]: file i is data[offsets[i]:offsets[i + 1]]
    boxes: torch.Tensor    # int64 [B, 4]: crop (left, top, right, bottom) in stored pixels
    flips: torch.Tensor    # bool [B]: mirror left-right after resizing


def jpeg_batch(raw: Sequence[bytes], params: Callable[[int, int], tuple[Box, bool]]) -> JpegBatch:
    """Pack one batch's JPEG bytes with the ``params(width, height)`` of each, in order."""
    chosen = [params(*image_size(x)) for x in raw]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in raw], out=offsets[1:])
    data = np.frombuffer(b"".join(raw), dtype=np.uint8).copy()  # writable, as torch wants
    return JpegBatch(torch.from_numpy(data), torch.from_numpy(offsets),
                     torch.tensor([box for box, _ in chosen], dtype=torch.int64).view(-1, 4),
                     torch.tensor([flip for _, flip in chosen], dtype=torch.bool))


def decode_on_device(batch: JpegBatch, size: int, device: torch.device | str) -> torch.Tensor:
    """Decode and crop a :class:`JpegBatch` on ``device``: uint8 ``[B, 3, size, size]``,
    channels_last, as the CPU path yields (then :func:`data.loader.normalize` it).

    Three kernels per image (crop to float, resize, copy into the batch), then the flips
    and the rounding once for the whole batch: a few hundred launches for B = 256.
    """
    offsets = batch.offsets.tolist()
    files = [batch.data[a:b] for a, b in zip(offsets, offsets[1:])]
    images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)  # nvJPEG, batched, on CUDA
    out = torch.empty((len(files), 3, size, size), dtype=torch.float32, device=device,
                      memory_format=torch.channels_last)
    for i, (image, (left, top, right, bottom)) in enumerate(zip(images, batch.boxes.tolist())):
        crop = image[None, :, top:bottom, left:right].to(torch.float32, memory_format=torch.channels_last)
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    flips = batch.flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
    out = torch.where(flips, out.flip(-1), out).round_().clamp_(0, 255)
    return out.to(torch.uint8).contiguous(memory_format=torch.channels_last)
