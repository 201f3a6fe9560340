"""The input paths :mod:`bench` compares, each as an endless stream of batches.

Every ``open_*`` function is a context manager yielding an iterator of
``(images, labels)`` batches that never ends (the benchmark decides how long to read),
so all paths are measured the same way. All use the same augmentation
(RandomResizedCrop + horizontal flip), batch size and worker count:

* ``raw_files``: torchvision ``ImageFolder`` + ``DataLoader`` (RandomResizedCrop, flip,
  ToTensor, Normalize in the workers), the usual way to read an image folder;
* ``petastorm_converter``: Petastorm's Spark recipe: ``make_spark_converter(df)`` on a
  ``binaryFile`` DataFrame, then ``make_torch_dataloader`` with a pandas
  ``TransformSpec`` that decodes each row;
* ``project``: the trainer's own loader (:func:`data.loader.make_loader`), uint8 batches
  normalised on the device; ``decode="gpu"`` yields JPEG bytes decoded on the device.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import numpy as np
import torch

from data.loader import make_loader, open_split  # (also hides petastorm's pyarrow deprecation noise)
from data.transforms import MEAN, STD

Batch = tuple[Any, torch.Tensor]


@dataclass(frozen=True)
class PathSettings:
    """What every path shares: loader processes, batch size, output size, seed, and pinned
    batches (on CUDA machines, as the trainer does: pageable copies stall the GPU)."""
    workers: int
    batch_size: int
    image_size: int
    seed: int = 0
    pin_memory: bool = False


def reference_transform(size: int):
    """torchvision's usual training transform: the baseline the project must beat."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def _endless(loader) -> Iterator[Batch]:
    while True:
        yield from loader


@contextlib.contextmanager
def open_raw_files(images: str, s: PathSettings) -> Iterator[Iterator[Batch]]:
    """ImageFolder + DataLoader, reshuffled every epoch by persistent workers."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    torch.manual_seed(s.seed)
    loader = DataLoader(ImageFolder(images, transform=reference_transform(s.image_size)), batch_size=s.batch_size,
                        shuffle=True, drop_last=True, num_workers=s.workers, persistent_workers=s.workers > 0,
                        pin_memory=s.pin_memory)
    try:
        yield _endless(loader)
    finally:
        if loader._iterator is not None:  # persistent workers: stop them now, not at exit
            loader._iterator._shutdown_workers()


def class_names(images: str) -> list[str]:
    """The class folders of an image folder, in ImageFolder's (sorted) order."""
    return sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))


def make_petastorm_converter(spark, images: str, cache_dir: str):
    """Petastorm's Spark recipe: a ``binaryFile`` DataFrame cached by ``make_spark_converter``."""
    from petastorm.spark import SparkDatasetConverter, make_spark_converter
    from pyspark.sql import functions as F

    from data.image_folder import image_glob

    classes = class_names(images)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, "file://" + os.path.abspath(cache_dir))
    label = F.element_at(F.split("path", "/"), -2)
    mapping = F.create_map(*[F.lit(x) for i, c in enumerate(classes) for x in (c, i)])
    df = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
          .option("pathGlobFilter", image_glob()).load(images)
          .select("content", mapping[label].cast("long").alias("label_index")))
    return make_spark_converter(df)


def _decode_rows(transform, pd_batch):
    """The recipe's TransformSpec function: decode and transform row by row in pandas."""
    from PIL import Image

    pd_batch["features"] = pd_batch["content"].map(
        lambda x: transform(Image.open(io.BytesIO(x)).convert("RGB")).numpy())
    return pd_batch.drop(labels=["content"], axis=1)


@contextlib.contextmanager
def open_petastorm_converter(converter, s: PathSettings) -> Iterator[Iterator[Batch]]:
    """``converter.make_torch_dataloader`` with a decoding TransformSpec (thread pool)."""
    from petastorm import TransformSpec

    spec = TransformSpec(partial(_decode_rows, reference_transform(s.image_size)),
                         edit_fields=[("features", np.float32, (3, s.image_size, s.image_size), False)],
                         selected_fields=["features", "label_index"])
    with converter.make_torch_dataloader(transform_spec=spec, batch_size=s.batch_size,
                                         workers_count=max(1, s.workers), seed=s.seed) as loader:
        yield ((b["features"], b["label_index"]) for b in _endless(loader))


@contextlib.contextmanager
def open_project(data: str, s: PathSettings, decode: str = "cpu") -> Iterator[Iterator[Batch]]:
    """The trainer's loader on the train split: uint8 batches, or ``JpegBatch`` with ``decode="gpu"``."""
    parquet = open_split(data, "train")
    with make_loader(parquet, workers=s.workers, pin_memory=s.pin_memory or decode == "gpu", rank=0, world_size=1,
                     batch_size=s.batch_size, image_size=s.image_size, train=True, seed=s.seed,
                     decode=decode) as batches:
        yield batches


@contextlib.contextmanager
def open_gpu_decoded(data: str, s: PathSettings, device: torch.device) -> Iterator[Iterator[Batch]]:
    """:func:`open_project` with ``decode="gpu"``, each batch decoded on ``device`` before it counts."""
    from data.gpu_decode import decode_on_device

    with open_project(data, s, "gpu") as batches:
        def on_device() -> Iterator[Batch]:
            for jpegs, labels in batches:
                images = decode_on_device(jpegs, s.image_size, device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # count only images really decoded
                yield images, labels

        yield on_device()


def reader_rows_per_s(data: str, seconds: float) -> float:
    """Rows/s of the train split read alone (no decode) in one process, by Petastorm as the
    loader reads it (:class:`data.split_reader.RowGroupReader`, whole passes in seeded row-group
    orders): what Petastorm can feed a worker."""
    from data.order import pass_order, row_ranges
    from data.split_reader import RowGroupReader

    parquet = open_split(data, "train")
    rows, started = 0, time.perf_counter()
    with RowGroupReader(parquet) as reader:
        for pass_ in itertools.count():
            for _, labels, _ in reader.rows(row_ranges(parquet.group_rows, pass_order(parquet.row_groups, 0, 0, pass_),
                                                       0, 1)):
                rows += len(labels)
            if time.perf_counter() - started >= seconds:
                return rows / (time.perf_counter() - started)
    raise AssertionError("unreachable")
