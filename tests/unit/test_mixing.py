"""trainer.mixing: MixUp and CutMix on a micro-batch, keyed so that a resume mixes alike."""
from __future__ import annotations

import torch

from trainer.mixing import BatchMixing

IMAGES = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).reshape(4, 3, 8, 8)
LABELS = torch.tensor([0, 1, 2, 1])


def test_inactive_without_alphas():
    assert not BatchMixing(3).active and BatchMixing(3, mixup_alpha=0.2).active


def test_mixup_is_a_convex_mix_of_each_image_with_the_next_and_targets_mix_alike():
    images, targets = BatchMixing(3, mixup_alpha=0.4, seed=1)(IMAGES, LABELS, step=5)
    lam = float(targets[0, LABELS[0]])
    assert torch.allclose(images, IMAGES * lam + IMAGES.roll(1, 0) * (1 - lam))
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_pastes_a_box_and_its_weight_is_the_area_kept():
    images, targets = BatchMixing(3, cutmix_alpha=1.0, seed=3)(IMAGES, LABELS, step=2)
    kept = (images == IMAGES).all(1).float().mean(dim=(1, 2))  # per image, the share of pixels unchanged
    assert torch.allclose(targets[0, LABELS[0]], kept[0]) and torch.allclose(targets.sum(1), torch.ones(4))


def test_draws_depend_only_on_seed_step_and_micro_batch_index():
    mix = BatchMixing(3, mixup_alpha=0.2, cutmix_alpha=1.0, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(mix(IMAGES, LABELS, 3, 1), mix(IMAGES, LABELS, 3, 1)))
    assert not torch.equal(mix(IMAGES, LABELS, 3, 1)[1], mix(IMAGES, LABELS, 4, 1)[1])
