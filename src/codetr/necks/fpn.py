"""Feature Pyramid Network (Lin et al. 2017) with RetinaNet's extra levels P6/P7.

    C3, C4, C5 -> 1x1 lateral convs -> top-down nearest upsampling + sum -> 3x3 output convs
               -> P3, P4, P5;  P6 = 3x3/2 conv(P5 or C5),  P7 = 3x3/2 conv(relu(P6))
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's XavierFill: uniform with a = sqrt(3 / fan_in), zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """``in_channels`` of C3..C5 (high to low resolution) -> ``len(in_channels) + num_extra``
    maps of ``out_channels``. ``extra_from``: "p5" (DeFCN / FCOS) or "c5" (RetinaNet) feeds P6."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_extra: int = 2,
                 extra_from: str = "p5") -> None:
        super().__init__()
        if extra_from not in ("p5", "c5"):
            raise ValueError(f"extra_from must be 'p5' or 'c5', got {extra_from!r}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        extra_in = ([out_channels if extra_from == "p5" else in_channels[-1]] + [out_channels] * (num_extra - 1))[:num_extra]
        self.extra = nn.ModuleList(nn.Conv2d(c, out_channels, 3, stride=2, padding=1) for c in extra_in)
        self.extra_from = extra_from
        for conv in [*self.lateral, *self.output, *self.extra]:
            c2_xavier_fill(conv)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats: [B, C_l, H_l, W_l] high to low resolution -> P maps, high to low resolution."""
        top = self.lateral[-1](feats[-1])
        outs = [self.output[-1](top)]
        for feat, lateral, output in zip(feats[-2::-1], self.lateral[-2::-1], self.output[-2::-1]):
            top = lateral(feat) + F.interpolate(top, size=feat.shape[-2:], mode="nearest")
            outs.insert(0, output(top))
        x = outs[-1] if self.extra_from == "p5" else feats[-1]
        for i, conv in enumerate(self.extra):
            x = conv(F.relu(x) if i > 0 else x)
            outs.append(x)
        return outs
