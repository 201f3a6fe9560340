"""Classify image files with a checkpoint: ``python -m trainer.predict --checkpoint FILE IMAGE...``.

The class names come from the checkpoint. Each file goes through the same steps as
training data: :func:`data.convert.images.to_rgb_jpeg` (any format Pillow reads, made an upright
RGB JPEG exactly as ``data.convert`` stores it), then the eval transform
(:func:`data.transforms.decode_eval`: resize and centre crop to the trained size).
Prints the top-k classes with softmax probabilities per image.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from data.errors import UserError, cli
from data.convert.images import BadImage, to_rgb_jpeg
from data.loader import normalize
from data.transforms import decode_eval
from trainer import checkpoint as ck
from trainer.model import model_from_checkpoint

CHUNK = 32  # images per forward pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a .pt file written by trainer.train (best.pt, last.pt)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--image-size", type=int, help="default: the size the checkpoint was trained at")
    return p


def load_image(path: str, size: int) -> np.ndarray:
    """One file as the eval transform's HWC uint8 array; a plain UserError if unusable."""
    try:
        with open(path, "rb") as f:
            jpeg = to_rgb_jpeg(f.read()).jpeg
    except (OSError, BadImage) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"cannot read image {path}: {reason}") from None
    return decode_eval(jpeg, size)


@torch.no_grad()
def predict(checkpoint: str, images: list[str], top_k: int = 5,
            image_size: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """``{image path: [(class name, probability), ...]}``, best first, ``top_k`` long."""
    if top_k < 1:
        raise UserError("--top-k must be >= 1")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:  # before loading the model: say it at once
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"image not found: {missing[0]}{more}")
    state = ck.load_checkpoint(checkpoint)
    classes = list(state[ck.CLASSES])
    size = image_size or state[ck.CONFIG]["image_size"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_checkpoint(state).to(device)
    k = min(top_k, len(classes))
    out: dict[str, list[tuple[str, float]]] = {}
    for start in range(0, len(images), CHUNK):
        paths = images[start:start + CHUNK]
        batch = torch.from_numpy(np.stack([load_image(p, size) for p in paths])).permute(0, 3, 1, 2)
        probs = model(normalize(batch, device, channels_last=device.type == "cuda")).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(paths, top.values.tolist(), top.indices.tolist()):
            out[path] = [(classes[i], v) for i, v in zip(indices, values)]
    return out


def main(argv: list[str] | None = None) -> dict[str, list[tuple[str, float]]]:
    """Print and return the top-k predictions for every image given."""
    a = build_parser().parse_args(argv)
    results = predict(a.checkpoint, a.images, a.top_k, a.image_size)
    for path, ranked in results.items():
        print(path)
        width = max(len(name) for name, _ in ranked)
        for name, prob in ranked:
            print(f"  {name:<{width}}  {prob:.4f}")
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
