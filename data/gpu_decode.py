"""``--decode gpu``: loader workers ship JPEG bytes, the training process decodes on the device.

A CPU core decodes a few hundred 512 px JPEGs per second, a GPU (nvJPEG) thousands, so
with ``decode="gpu"`` the workers of :class:`data.loader.ParquetImages` only read the
Parquet rows, parse each JPEG header for its size and draw the crop box and flip with
the same keyed RNG as the CPU path (:func:`data.transforms.train_params`). They yield a
:class:`JpegBatch`; :func:`decode_on_device` decodes it with one batched
``torchvision.io.decode_jpeg(..., device=device)`` call and crops/resizes each image with
the CPU path's own :func:`data.transforms.crop_resize`. Everything but the decode call's
device runs, and is tested, on CPU: with ``device="cpu"`` the result equals the CPU
path's batch exactly wherever that path decodes at full size (crops smaller than twice
the output; larger ones it decodes in Pillow's draft mode, at reduced scale).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from data.transforms import Box, crop_resize, image_size


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
    channels_last, as the CPU path yields (then :func:`data.loader.normalize` it)."""
    offsets = batch.offsets.tolist()
    files = [batch.data[a:b] for a, b in zip(offsets, offsets[1:])]
    images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)  # nvJPEG, batched, on CUDA
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8, device=device,
                      memory_format=torch.channels_last)
    for i, (image, box, flip) in enumerate(zip(images, batch.boxes.tolist(), batch.flips.tolist())):
        out[i] = crop_resize(image, tuple(box), flip, size)
    return out
