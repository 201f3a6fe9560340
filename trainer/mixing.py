"""``--mixup-alpha`` / ``--cutmix-alpha``: mix pairs of images in a batch, and their labels.

As torchvision's ``transforms.v2.MixUp`` and ``CutMix`` (which the classification
reference applies to each collated batch): every image is mixed with the next one in
the batch (``roll(1)``) with a weight ``lam ~ Beta(alpha, alpha)``; CutMix pastes a box
of area ``1 - lam`` instead and sets ``lam`` to the area actually kept. With both
alphas one of the two is picked per batch, with equal odds. The targets become class
probabilities, which ``nn.CrossEntropyLoss`` (label smoothing included) takes as they are.

Runs in the training process on each normalised micro-batch. Its draws come from a
generator keyed by (seed, micro-batch index in the global batch, step), so there is no
state to save: a resumed run, on any world size with the same micro-batch, mixes each
step's micro-batches exactly as an uninterrupted run would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchMixing:
    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                 part: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixed images, target probabilities [B, classes])`` for micro-batch ``part`` of the
        global batch of optimizer step ``step``."""
        rng = np.random.default_rng([self.seed, part, step, 9])
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        rolled = images.roll(1, 0)
        if use_cutmix:
            height, width = images.shape[-2:]
            cx, cy = int(rng.integers(width)), int(rng.integers(height))
            half = 0.5 * math.sqrt(1.0 - lam)
            hw, hh = int(half * width), int(half * height)
            x1, y1, x2, y2 = max(cx - hw, 0), max(cy - hh, 0), min(cx + hw, width), min(cy + hh, height)
            images = images.clone()
            images[..., y1:y2, x1:x2] = rolled[..., y1:y2, x1:x2]
            lam = 1.0 - (x2 - x1) * (y2 - y1) / (width * height)
        else:
            images = images * lam + rolled * (1.0 - lam)
        one_hot = F.one_hot(labels, self.num_classes).to(images.dtype)
        return images, one_hot * lam + one_hot.roll(1, 0) * (1.0 - lam)
