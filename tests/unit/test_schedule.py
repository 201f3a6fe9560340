"""trainer.schedule: the batch scaling rules, the warm-up length, warm-up then cosine."""
from __future__ import annotations

import pytest
import torch

from trainer.schedule import REFERENCE_BATCH, peak_lr, warmup_cosine, warmup_length


def test_an_explicit_lr_wins_and_otherwise_the_base_scales_with_the_global_batch():
    assert peak_lr(0.5, 0.1, "sgd", 4096) == 0.5
    assert peak_lr(None, 0.2, "sgd", REFERENCE_BATCH * 4) == pytest.approx(0.8)
    assert peak_lr(None, None, "sgd", 2 * REFERENCE_BATCH) == pytest.approx(2 * peak_lr(None, None, "sgd", REFERENCE_BATCH))


@pytest.mark.parametrize("optimizer,global_batch,lr", [
    ("sgd", 256, 0.1), ("sgd", 1024, 0.4), ("sgd", 64, 0.025),  # torchvision's ResNet recipe, scaled linearly
    ("adamw", 64, 0.002), ("adamw", 1024, 0.008),  # the default, scaled by the square root
])
def test_each_optimizer_scales_its_default_base_lr_with_the_global_batch(optimizer, global_batch, lr):
    assert peak_lr(None, None, optimizer, global_batch) == pytest.approx(lr)


def test_warmup_is_exact_steps_when_given_else_epochs_capped_at_half_the_run():
    assert warmup_length(7, 5.0, 100, 1000) == 7
    assert warmup_length(None, 1.5, 10, 1000) == 15
    assert warmup_length(None, 5.0, 10, 40) == 20


def factors(warmup: int, total: int) -> list[float]:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule, seen = warmup_cosine(optimizer, warmup, total), []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_lr_rises_linearly_to_the_peak_then_falls_by_a_cosine_towards_zero():
    lr = factors(4, 20)
    assert lr[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(lr[4:], lr[5:]))
    assert lr[12] == pytest.approx(0.5) and lr[-1] < 0.05


def test_no_warmup_starts_at_the_peak():
    assert factors(0, 10)[0] == pytest.approx(1.0)
