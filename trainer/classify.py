"""Score encoded images with a trained model, exactly as validation scores converted data.

One path for every way of predicting (``trainer.predict``, the MLflow model in
:mod:`trainer.mlflow_model`, ``launch.batch_predict`` on Spark): the bytes become an
upright RGB JPEG as ``data.convert`` stores it (:func:`data.images.to_rgb_jpeg`;
a stored RGB JPEG is kept byte-for-byte), then the eval transform
(:func:`data.transforms.decode_eval`: resize + centre crop to the trained size) and the
batch normalisation of the loaders (:func:`data.transforms.normalize`). So a converted
image gets the very pixels ``trainer.evaluate`` gives the model.

A :class:`Classifier` is built from a checkpoint dict (a full one from training, or the
small model-only one from :func:`model_only`) and returns one result per image, a bad
image included (its ``error`` says why; nothing is dropped).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from data.images import BadImage, to_rgb_jpeg
from data.transforms import normalize
from data.transforms import decode_eval
from trainer import checkpoint as ckpt
from trainer.model import model_from_checkpoint

TOP_K = 5
FORWARD_BATCH = 32  # images per forward pass
# What :meth:`Classifier.predict` returns, in this order.
OUTPUT_COLUMNS = ("prediction", "probability", "top5_classes", "top5_probabilities", "error")


def prepare_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes (any format ``data.convert`` accepts) as the eval transform's HWC
    uint8 array; raises :class:`BadImage` when the bytes are not a usable image."""
    return decode_eval(to_rgb_jpeg(bytes(data)).jpeg, size)


def model_only(state: dict) -> dict:
    """The part of a checkpoint dict that scoring needs (the weights validation scored: the
    EMA's with ``--model-ema``; model name, classes, image size): a small file, loadable by
    :func:`trainer.checkpoint.load_checkpoint`."""
    run = ckpt.run_identity(state)
    scoring = ckpt.RunIdentity(model_name=run.model_name, classes=list(run.classes),
                               config={"image_size": run.config["image_size"]})
    return {ckpt.FORMAT: ckpt.FORMAT_VERSION, ckpt.MODEL: ckpt.scored_weights(state), ckpt.RUN: scoring.state_dict()}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Classifier:
    """A trained model, its class names and eval size, on ``device`` (default: CUDA if any)."""

    def __init__(self, state: dict, device: torch.device | None = None, image_size: int | None = None,
                 forward_batch: int = FORWARD_BATCH):
        self.forward_batch = forward_batch
        run = ckpt.run_identity(state)
        self.classes = list(run.classes)
        self.image_size = image_size or run.config["image_size"]
        self.device = device or default_device()
        self.model = model_from_checkpoint(state).to(self.device)

    @classmethod
    def from_file(cls, path: str, device: torch.device | None = None, image_size: int | None = None) -> "Classifier":
        return cls(ckpt.load_checkpoint(path), device, image_size)

    @torch.no_grad()
    def probabilities(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Softmax probabilities ``[N, classes]`` (CPU, float32) of prepared images."""
        out = []
        for start in range(0, len(arrays), self.forward_batch):
            batch = torch.from_numpy(np.stack(arrays[start:start + self.forward_batch])).permute(0, 3, 1, 2)
            x = normalize(batch, self.device, channels_last=self.device.type == "cuda")
            out.append(self.model(x).float().softmax(dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def top_k(self, arrays: list[np.ndarray], k: int = TOP_K) -> list[list[tuple[str, float]]]:
        """``[(class name, probability), ...]`` best first, ``k`` long (at most the class count)."""
        top = self.probabilities(arrays).topk(min(k, len(self.classes)), dim=1)
        return [[(self.classes[i], v) for i, v in zip(idx, vals)]
                for vals, idx in zip(top.values.tolist(), top.indices.tolist())]

    def predict(self, images) -> pd.DataFrame:
        """One row per encoded image, in order: ``prediction`` (class name), ``probability``,
        ``top5_classes``, ``top5_probabilities``, and ``error`` (None, or why the image could
        not be read: then the other columns are empty)."""
        arrays, errors = [], []
        for data in images:
            try:
                arrays.append(prepare_image(data, self.image_size))
                errors.append(None)
            except (BadImage, TypeError) as exc:  # TypeError: not bytes at all (None, a number)
                errors.append(str(exc) or type(exc).__name__)
        ranked = iter(self.top_k(arrays))
        rows = []
        for error in errors:
            if error is not None:
                rows.append((None, None, None, None, error))
                continue
            best = next(ranked)
            rows.append((best[0][0], best[0][1], [c for c, _ in best], [p for _, p in best], None))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
