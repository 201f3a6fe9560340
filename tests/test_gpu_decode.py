"""The ``--decode gpu`` path: JPEG batches from the loader decode to the batches the CPU
path yields (same crops, flips, labels, order; pixels within one grey level on CPU), the
batched crop-resize is PyTorch's antialiased resize, the decode-ahead prefetcher yields
the plain path's batches in the same order (resumed epochs too), and the CPU decoder's
draft-mode shortcut for large crops agrees with a full decode.

Everywhere the decode runs with ``device="cpu"``; on a CUDA machine the same test runs
with nvJPEG on the GPU too, which rounds differently from libjpeg-turbo (its own bound).
The data sets are written with pyarrow, not Spark, so this file also runs on a GPU
machine without Spark (``tests/gpu/run.sh``).
"""
from __future__ import annotations

import io
import itertools
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from data.errors import UserError
from data.gpu_decode import JpegBatch, crop_resize_batch, decode_on_device, jpeg_batch
from data.gpu_prefetch import make_device_prefetcher
from data.gpu_decode import model_input
from data.loader import make_loader, open_split
from data.rank_loaders import make_train_loader
from data.synthetic import make_image
from data.transforms import decode_crop, train_params
from tests.parquet_sets import small_jpeg, write_data_set

SIZE = 32  # crops of the 40x30 test images are < 2 x SIZE: the CPU path decodes at full size
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# (device, max |difference|, mean |difference|) against the CPU path's uint8 batch
# nvJPEG decodes differently from libjpeg-turbo (chroma upsampling, IDCT). Measured on an
# H200 (torchvision 0.26) with the noisy 40x30 test images: whole images differ by up to
# 32 levels at single pixels and 4.1 to 7.8 on average; resized crops by up to 53 and 3.1
# to 4.3. A wrong crop, flip or order differs by tens on average.
DEVICES = [("cpu", 1, 0.5), pytest.param("cuda", 64, 6.0, marks=CUDA)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("gpu_decode"))
    return data, write_data_set(data, row_groups=3, rows_per_group=10, val_rows=15)


@pytest.mark.parametrize("device,max_diff,mean_diff", DEVICES)
@pytest.mark.parametrize("split,train,skip", [("train", True, 0), ("train", True, 3), ("val", False, 0)])
def test_gpu_mode_batches_decode_to_the_cpu_batches(dataset, split, train, skip, device, max_diff, mean_diff):
    data, manifest = dataset
    parquet = open_split(data, split, manifest)
    kw = dict(workers=2, rank=0, world_size=1, batch_size=5, image_size=SIZE, train=train, seed=4, epoch=1,
              skip_batches=skip)
    with make_loader(parquet, **kw) as cpu, make_loader(parquet, decode="gpu", **kw) as gpu:
        pairs = list(itertools.islice(zip(cpu, gpu), 6))
    assert pairs
    for (images, labels), (jpegs, gpu_labels) in pairs:
        assert isinstance(jpegs, JpegBatch) and torch.equal(labels, gpu_labels)
        decoded = decode_on_device(jpegs, SIZE, device)
        assert decoded.device.type == device and decoded.dtype == torch.uint8
        assert decoded.is_contiguous(memory_format=torch.channels_last)
        diff = (decoded.cpu().float() - images.float()).abs()
        print(f"{device}: max |diff| {diff.max():.0f}, mean {diff.mean():.3f}")
        assert diff.max() <= max_diff and diff.mean() < mean_diff  # CPU: float vs uint8 resize rounding
    flipped = sum(int(jpegs.flips.sum()) for (_, _), (jpegs, _) in pairs)
    assert flipped > 0 if train else flipped == 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_batched_crop_resize_is_pytorchs_antialiased_resize_of_each_crop(device):
    # Images of three sizes in one batch; crops that shrink, enlarge and keep the size.
    gen = torch.Generator().manual_seed(0)
    shapes = [(30, 40), (90, 40), (30, 40), (48, 64), (30, 40)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen).to(device) for h, w in shapes]
    boxes = torch.tensor([[0, 0, 40, 30], [5, 10, 25, 80], [30, 20, 33, 24], [1, 2, 64, 48], [7, 3, 29, 25]])
    flips = torch.tensor([False, True, True, False, True])
    for size in (7, 16, 32):
        want = []
        for image, (left, top, right, bottom), flip in zip(images, boxes.tolist(), flips.tolist()):
            y = F.interpolate(image[None, :, top:bottom, left:right].float(), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
            want.append(y.flip(-1) if flip else y)
        want = torch.stack(want)
        assert (crop_resize_batch(images, boxes, flips, size) - want).abs().max() < 1e-3
        # float16, as on CUDA: the weights' rounding moves results by a fraction of a grey level
        assert (crop_resize_batch(images, boxes, flips, size, torch.float16).float() - want).abs().max() < 0.5


def prepare_on(device: str):
    """What the trainer's prefetcher makes of a loader batch: model input and labels on ``device``."""
    dev = torch.device(device)
    return lambda images, labels: (model_input(images, SIZE, dev, channels_last=dev.type == "cuda"), labels.to(dev))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_prefetched_batches_are_the_plain_ones_in_order_and_resume_exactly(dataset, decode, device):
    data, manifest = dataset
    parquet = open_split(data, "train", manifest)
    kw = dict(workers=2, rank=0, world_size=1, batch_size=5, image_size=SIZE, seed=4, epoch=1, steps_per_epoch=6,
              decode=decode)
    prepare = prepare_on(device)
    with make_train_loader(parquet, **kw) as batches:
        plain = [prepare(*batch) for batch in batches]
    with make_train_loader(parquet, **kw) as batches, make_device_prefetcher(batches, prepare, device) as ahead:
        full = list(ahead)
    with make_train_loader(parquet, skip_batches=4, **kw) as batches, \
            make_device_prefetcher(batches, prepare, device) as ahead:
        resumed = list(ahead)
    assert (len(plain), len(full), len(resumed)) == (6, 6, 2)
    # CPU: bit for bit. CUDA: the side stream's matrix products may round differently from
    # the default stream's (cuBLAS workspaces), by a grey level at single pixels at most.
    tolerance = 0.0 if device == "cpu" else 1.01 / (255 * 0.225)
    for (x, y), (want_x, want_y) in zip(full + resumed, plain + full[4:]):
        assert x.device.type == device and torch.equal(y, want_y)
        assert (x - want_x).abs().max() <= tolerance


def test_prefetcher_raises_the_loaders_error_and_reads_one_batch_ahead_at_most():
    def failing():
        yield torch.zeros(2), torch.zeros(2)
        raise UserError("broken split")

    with make_device_prefetcher(failing(), lambda images, labels: (images, labels), "cpu") as ahead:
        assert next(ahead)[0].shape == (2,)
        for _ in range(2):  # and again on every later call, never a hang
            with pytest.raises(UserError, match="broken split"):
                next(ahead)
    taken = []

    def endless():
        for i in itertools.count():
            taken.append(i)
            yield torch.tensor([i]), torch.tensor([i])

    with make_device_prefetcher(endless(), lambda images, labels: (images + 1, labels), "cpu") as ahead:
        assert [(int(x), int(y)) for x, y in itertools.islice(ahead, 3)] == [(1, 0), (2, 1), (3, 2)]
    assert taken in ([0, 1, 2], [0, 1, 2, 3])  # the batch in the caller's hands and at most one more
    assert not [t for t in threading.enumerate() if t.name == "sparkdp-prefetch"]


def test_jpeg_batch_keeps_each_file_and_draws_like_the_cpu_path():
    rng = np.random.default_rng(0)
    files = []
    for w, h in [(64, 48), (40, 90), (120, 30)]:
        buf = io.BytesIO()
        make_image(1, 3, w, h, rng).save(buf, format="JPEG")
        files.append(buf.getvalue())
    batch = jpeg_batch(files, lambda w, h: train_params(w, h, np.random.default_rng([w, h])))
    offsets = batch.offsets.tolist()
    assert [bytes(batch.data[a:b].numpy()) for a, b in zip(offsets, offsets[1:])] == files
    for (w, h), box, flip in zip([(64, 48), (40, 90), (120, 30)], batch.boxes.tolist(), batch.flips.tolist()):
        assert (tuple(box), flip) == train_params(w, h, np.random.default_rng([w, h]))
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h


def test_draft_mode_decode_of_a_large_crop_agrees_with_a_full_decode():
    buf = io.BytesIO()
    make_image(2, 5, 1024, 768, np.random.default_rng(1)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    box, size = (100, 80, 900, 700), 64  # 800x620 crop -> 64 px: Pillow decodes at 1/8 scale
    drafted = decode_crop(data, size, lambda w, h: (box, False))
    pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    full = torch.nn.functional.interpolate(pixels[None, :, box[1]:box[3], box[0]:box[2]], size=(size, size),
                                           mode="bilinear", antialias=True)[0]  # uint8 in, uint8 out
    assert drafted.shape == full.shape == (3, size, size)
    assert (drafted.float() - full.float()).abs().mean() < 6.0


@CUDA
def test_nvjpeg_and_libjpeg_turbo_decode_alike():
    """The bound above is the decoders' own difference: whole images, no crop or resize."""
    rng = np.random.default_rng(3)
    files = [torch.frombuffer(bytearray(small_jpeg(k % 3, rng)), dtype=torch.uint8) for k in range(8)]
    on_gpu = decode_jpeg(files, mode=ImageReadMode.RGB, device="cuda")
    for data, gpu in zip(files, on_gpu):
        diff = (gpu.cpu().float() - decode_jpeg(data, mode=ImageReadMode.RGB).float()).abs()
        print(f"nvJPEG vs libjpeg-turbo, whole 40x30 image: max |diff| {diff.max():.0f}, mean {diff.mean():.3f}")
        assert diff.max() <= 64 and diff.mean() < 10.0
