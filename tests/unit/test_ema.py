"""trainer.ema: the average's ramp, what it averages and what it copies, and its state."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.ema import ModelEma


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_the_average_moves_by_the_ramped_decay_and_copies_integer_buffers():
    net = model()
    ema = ModelEma(net, decay=0.99)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked.fill_(5)
    ema.update(net)
    d = (1 + 1) / (10 + 1)  # the ramp, below 0.99 at the first update
    assert torch.allclose(ema.module[0].weight, d * before + (1 - d) * net[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 5


def test_the_decay_settles_at_its_setting():
    net = model()
    ema = ModelEma(net, decay=0.5)
    for _ in range(20):
        ema.update(net)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    ema.update(net)
    assert torch.allclose(ema.module[0].weight, 0.5 * before + 0.5 * net[0].weight)


def test_state_round_trip_restores_weights_and_the_update_count():
    net = model()
    ema = ModelEma(net, decay=0.9)
    for _ in range(3):
        ema.update(net)
    restored = ModelEma(model(), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 3 and restored.state_dict()["updates"] == 3
    saved, again = ema.state_dict()["weights"], restored.state_dict()["weights"]
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert not any(p.requires_grad for p in restored.module.parameters())


@pytest.mark.parametrize("decay", [0.0, 0.999])
def test_the_average_is_never_trained(decay):
    assert not any(p.requires_grad for p in ModelEma(model(), decay).module.parameters())
