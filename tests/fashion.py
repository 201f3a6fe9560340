"""A second small real data set: a class-balanced slice of Fashion-MNIST, read offline.

Fashion-MNIST (Zalando, MIT licence) is 70,000 real 28x28 grey-scale photos of 10 kinds
of clothing; Debian packages it as ``dataset-fashion-mnist`` (``/usr/share/datasets/
fashion-mnist``; ``dpkg-deb -x`` of the .deb gives the same files without installing).
:func:`write_fashion` saves the first ``per_class`` images of each class of the 10,000-image
test file as ``ROOT/<class>/NNNNN.jpg`` (upscaled to 32x32), an image folder
``data.convert`` reads like any other. Harder than the digits: a ResNet-18 trained from
scratch on 2,000 of them ends between 0.6 and 0.8 val top-1 in a few epochs.
"""
from __future__ import annotations

import gzip
import os

import numpy as np
from PIL import Image

SOURCE = "/usr/share/datasets/fashion-mnist"
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
SIDE = 32


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian dims after a 4-byte magic) as an array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_fashion(root: str, per_class: int = 200, source: str = SOURCE) -> str:
    """Write ``per_class`` test-file images of each class under ``root``; returns ``root``."""
    images = read_idx(os.path.join(source, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(source, "t10k-labels-idx1-ubyte.gz"))
    for label, name in enumerate(CLASSES):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in np.flatnonzero(labels == label)[:per_class]:
            picture = Image.fromarray(images[i], "L").resize((SIDE, SIDE), Image.BILINEAR)
            picture.save(os.path.join(folder, f"{i:05d}.jpg"), quality=95)
    return root
