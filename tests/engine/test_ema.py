import math

import pytest
import torch
from torch import nn

from codetr.engine.ema import ModelEMA


def test_ema_follows_the_recurrence_with_warmup():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = ModelEMA(model, decay=0.9, warmup=2)
    expected = model[0].weight.detach().clone()
    for step in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(float(step))
        model[1].num_batches_tracked += 1
        ema.update(model)
        d = 0.9 * (1 - math.exp(-step / 2))
        expected = d * expected + (1 - d) * model[0].weight.detach()
        torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.module[1].num_batches_tracked.item() == 3  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trip_and_bad_decay():
    model = nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.mul_(3)
    ema.update(model)
    other = ModelEMA(nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)
