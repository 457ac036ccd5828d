"""Exponential moving average of a model's weights (Polyak averaging), for evaluation.

After every optimizer step ``ema = d * ema + (1 - d) * live`` for floating-point parameters and
buffers; integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The decay ramps up,
``d = decay * (1 - exp(-updates / warmup))``, so the early, fast-moving weights are forgotten
quickly (the ramp of YOLOv5's ModelEMA); with ``warmup = 0`` it is ``decay`` from the start.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def current_decay(self) -> float:
        ramp = 1.0 - math.exp(-self.updates / self.warmup) if self.warmup > 0 else 1.0
        return self.decay * ramp

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        live = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.lerp_(live[name].detach(), 1.0 - d)
            else:
                avg.copy_(live[name])

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
