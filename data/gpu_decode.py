"""``--decode gpu``: loader workers ship JPEG bytes, the training process decodes on the device.

A CPU core decodes a few hundred 512 px JPEGs per second, a GPU (nvJPEG) thousands, so
with ``decode="gpu"`` the workers of :class:`data.loader.ParquetImages` only read the
Parquet rows, parse each JPEG header for its size and draw the crop box and flip with
the same keyed RNG as the CPU path (:func:`data.transforms.train_params`). They yield a
:class:`JpegBatch`; :func:`decode_on_device` decodes it with one batched
``torchvision.io.decode_jpeg(..., device=device)`` call (on A100/H100/H200 torchvision
hands baseline JPEGs to the GPU's hardware JPEG engine) and crops, resizes and flips the
whole batch at once: PyTorch's antialiased bilinear resize written as two batched
matrix products per image size, ``rows @ image @ columns``, whose weight matrices
(:func:`resize_weights`) hold each image's crop and flip. Everything but the decode
call's device runs, and is tested, on CPU: with ``device="cpu"`` the result is within
one grey level of the CPU path's batch wherever that path decodes at full size (crops
smaller than twice the output; larger ones it decodes in Pillow's draft mode). On CUDA
(tested on an H200) nvJPEG's pixels differ from libjpeg-turbo's by 3-4 grey levels on
average. :mod:`data.gpu_prefetch` runs this one batch ahead, beside the training step.

``torchvision.io`` image decoding is deprecated in favour of TorchCodec, whose
``torchcodec.decoders.decode_jpeg(list, mode="RGB", device="cuda")`` (0.16 and later, for
torch 2.11 and later) makes the same batched nvJPEG call, on the caller's stream. The GPU
machine these paths are measured on has torchvision (0.26) and no TorchCodec, so the one
path is torchvision's; the call above is the only line to change. Neither decodes
straight into a crop (nvJPEG can, per image, but neither exposes it).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from data.transforms import Box, image_size, normalize


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


def resize_weights(start: torch.Tensor, stop: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """float32 ``[n, size, length]``: row ``i`` of matrix ``k`` weighs positions ``0..length-1``
    for output pixel ``i`` when ``[start[k], stop[k])`` is resized to ``size`` pixels the way
    ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` does: a triangle
    filter widened by the downscale factor, normalised per output pixel, zero outside the crop."""
    start = start.to(torch.float32).view(-1, 1, 1)
    span = stop.to(torch.float32).view(-1, 1, 1) - start
    scale = span / size
    support = scale.clamp(min=1.0)  # the filter's half-width in input pixels (1 when upscaling)
    centre = scale * (torch.arange(size, dtype=torch.float32, device=start.device).view(1, -1, 1) + 0.5)
    pos = torch.arange(length, dtype=torch.float32, device=start.device).view(1, 1, -1) - start
    weights = (1 - ((pos + 0.5 - centre) / support).abs()).clamp_(min=0) * ((pos >= 0) & (pos < span))
    return weights / weights.sum(-1, keepdim=True)


def _on(device: torch.device, t: torch.Tensor) -> torch.Tensor:
    """``t`` on ``device`` without waiting for the device (a pageable copy would)."""
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def crop_resize_batch(images: Sequence[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor, size: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Crop ``boxes``, resize to ``size x size`` (antialiased bilinear) and mirror where
    ``flips`` says, for CHW uint8 ``images`` of any sizes on one device: float ``[B, 3,
    size, size]`` in ``dtype``. One pair of batched matrix products per distinct image
    size, whatever the batch size."""
    device = images[0].device
    boxes, flips = _on(device, boxes), _on(device, flips)
    rows = resize_weights(boxes[:, 1], boxes[:, 3], max(image.shape[1] for image in images), size).to(dtype)
    columns = resize_weights(boxes[:, 0], boxes[:, 2], max(image.shape[2] for image in images), size)
    columns = torch.where(flips.view(-1, 1, 1), columns.flip(1), columns).to(dtype)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[1:]), []).append(i)
    if len(groups) == 1:
        (h, w), = groups
        return _resize_group(images, rows[:, :, :h], columns[:, :, :w], dtype)
    out = torch.empty((len(images), 3, size, size), dtype=dtype, device=device)
    for (h, w), members in groups.items():
        index = _on(device, torch.tensor(members))
        out.index_copy_(0, index, _resize_group([images[i] for i in members], rows.index_select(0, index)[:, :, :h],
                                                columns.index_select(0, index)[:, :, :w], dtype))
    return out


def _resize_group(images: Sequence[torch.Tensor], rows: torch.Tensor, columns: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    """``rows @ image @ columns^T`` for same-sized images: ``[g, 3, size, size]``."""
    x = torch.stack(list(images)).to(dtype)  # [g, 3, h, w]
    return torch.matmul(rows.unsqueeze(1), torch.matmul(x, columns.transpose(1, 2).unsqueeze(1)))


def decode_on_device(batch: JpegBatch, size: int, device: torch.device | str) -> torch.Tensor:
    """Decode and crop a :class:`JpegBatch` on ``device``: uint8 ``[B, 3, size, size]``,
    channels_last, as the CPU path yields (then :func:`data.transforms.normalize` it).

    On CUDA the resize runs in float16 on the tensor cores (pixels are whole numbers
    below 2048, exact in float16; the weights' rounding moves a result by well under one
    grey level), and the current stream is synchronised first: torchvision decodes on
    a stream of its own into memory taken from the current stream's cache, which work
    still queued on the current stream may be reading (TorchCodec's nvJPEG code says the
    hardware engine does not wait for the stream either).
    """
    device = torch.device(device)
    offsets = batch.offsets.tolist()
    files = [batch.data[a:b] for a, b in zip(offsets, offsets[1:])]
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)  # nvJPEG, batched, on CUDA
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    out = crop_resize_batch(images, batch.boxes, batch.flips, size, dtype)
    return out.round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)


def model_input(images: torch.Tensor | JpegBatch, size: int, device: torch.device,
                channels_last: bool = True) -> torch.Tensor:
    """A loader batch as the model takes it: normalised float on ``device``; a
    :class:`JpegBatch` (``decode="gpu"``) is decoded there first."""
    if isinstance(images, JpegBatch):
        images = decode_on_device(images, size, device)
    return normalize(images, device, channels_last=channels_last)
