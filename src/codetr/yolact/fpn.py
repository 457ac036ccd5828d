"""YOLACT's FPN: P3-P5 from C3-C5 (lateral 1x1, top-down bilinear upsampling, 3x3 output
convs followed by ReLU), then P6, P7 by stride-2 3x3 convs on P5 and P6 (no ReLU)."""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class YolactFPN(nn.Module):
    """``in_channels``: channels of C3..C5 (finest first). Returns [P3, ..., P7], each
    [B, num_features, H_l, W_l]."""

    def __init__(self, in_channels: Sequence[int], num_features: int = 256, num_extra: int = 2,
                 relu_outputs: bool = True) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, num_features, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(num_features, num_features, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList(nn.Conv2d(num_features, num_features, 3, padding=1, stride=2)
                                   for _ in range(num_extra))
        self.relu_outputs = relu_outputs

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        x = self.lateral[-1](feats[-1])
        merged = [x]
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False) + lateral(f)
            merged.insert(0, x)
        outs = [conv(m) for conv, m in zip(self.output, merged)]
        if self.relu_outputs:
            outs = [F.relu(o) for o in outs]
        for conv in self.extra:
            outs.append(conv(outs[-1]))
        return outs
