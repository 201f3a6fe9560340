"""A confusion matrix as a PNG heatmap, drawn with matplotlib (installed with MLflow).

Rows are true classes, columns predicted classes, both in the manifest's class order.
Each cell's shade is the share of its row (so a class's recall is its diagonal cell,
whatever the class sizes), with a colour bar. Every class name is written on both axes:
the figure grows with the class count (about 0.2 inch per class, Food-101's 101 classes
in a ~21 inch square at 150 dpi) so names never overprint; counts are written in the
cells up to 20 classes.
"""
from __future__ import annotations

import os

import torch

MAX_CLASSES_FOR_COUNTS = 20
LABEL_CHARS = 24


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"


def write_confusion_png(confusion: torch.Tensor, classes: list[str], path: str, title: str = "") -> str:
    """Draw ``confusion`` (``[true, predicted]`` counts) to ``path``; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    n = len(classes)
    counts = confusion.to(torch.float64)
    shares = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    side = max(5.0, 0.2 * n + 2.5)             # inches: room for one label line per class
    font = 9 if n <= 30 else 6                  # points; 0.2 inch per class holds a 6 pt line
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    names = [_short(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix", fontsize=10)
    if n <= MAX_CLASSES_FOR_COUNTS:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=font,
                        color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class (row)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100 if n <= 30 else 150)
    plt.close(fig)
    return path
