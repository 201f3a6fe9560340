"""Exact metrics across ranks: every quantity is a sum, reduced once, then divided.

Never an average of per-rank averages: ranks see different numbers of images.
:func:`evaluate` scores a model into those sums (validation during training and
``trainer.evaluate`` both use it).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from trainer.distributed import all_reduce_sum


class ClassificationSums:
    """Running sums for loss, top-1, top-5 and a confusion matrix over one evaluation."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.loss_sum = 0.0
        self.correct5 = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> None:
        """Add one batch: ``loss_sum`` is the batch's summed (not mean) loss."""
        k = min(5, self.num_classes)
        top = logits.float().topk(k, dim=1).indices.cpu()
        labels = labels.cpu()
        self.loss_sum += float(loss_sum)
        self.correct5 += int((top == labels[:, None]).any(dim=1).sum())
        idx = labels * self.num_classes + top[:, 0]
        self.confusion += torch.bincount(idx, minlength=self.num_classes ** 2).view_as(self.confusion)

    def reduce(self) -> "ClassificationSums":
        """Sum over all ranks (a collective: every rank must call it)."""
        head = all_reduce_sum(torch.tensor([self.loss_sum, float(self.correct5)], dtype=torch.float64))
        self.loss_sum, self.correct5 = float(head[0]), int(head[1])
        all_reduce_sum(self.confusion)
        return self

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def results(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {
            "loss": self.loss_sum / n,
            "top1": float(self.confusion.diagonal().sum()) / n,
            "top5": self.correct5 / n,
            "count": self.count,
        }

    def per_class_accuracy(self) -> list[float | None]:
        totals = self.confusion.sum(dim=1)
        return [float(self.confusion[i, i]) / float(t) if t else None for i, t in enumerate(totals)]


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, num_classes: int,
             prepare=None, autocast=contextlib.nullcontext) -> ClassificationSums:
    """Loss/top-1/top-5/confusion over this rank's share, then summed over all ranks.

    ``prepare(images, labels)`` puts a batch on the device as the model takes it (default:
    ``.to(device)``); ``autocast()`` is the precision context of the forward pass.
    ``model`` must be the unwrapped model: ranks hold different numbers of batches, and
    a DDP forward could wait on a collective that a finished rank never joins.
    """
    model.eval()
    sums = ClassificationSums(num_classes)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, labels in batches:
        x, y = prepare(images, labels) if prepare else (images.to(device), labels.to(device))
        with autocast():
            logits = model(x)
        sums.update(logits, y, float(criterion(logits.float(), y)))
    return sums.reduce()
