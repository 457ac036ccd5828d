"""3D max filtering (DeFCN, Wang et al. 2021, Sec. 3.3): a max over a (scale, y, x) window of
neighbouring FPN levels, so a point's score can be suppressed by stronger neighbours across
scales, as a learnable replacement for NMS."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaxFiltering3D(nn.Module):
    """Per level l: conv, then the max over levels l - tau/2 .. l + tau/2 (bilinearly resized to
    level l) and a ``kernel_size`` x ``kernel_size`` window, plus the input, then GN + ReLU."""

    def __init__(self, channels: int, kernel_size: int = 3, tau: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(32, channels)
        self.kernel_size, self.margin = kernel_size, tau // 2

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        feats = [self.conv(x) for x in inputs]
        outs = []
        for level, x in enumerate(inputs):
            lo, hi = max(0, level - self.margin), min(len(feats), level + self.margin + 1)
            stack = torch.stack([feats[k] if k == level else
                                 F.interpolate(feats[k], size=x.shape[-2:], mode="bilinear", align_corners=False)
                                 for k in range(lo, hi)], dim=2)  # [B, C, levels, H, W]
            # over scales: max of the available neighbours (the zero padding of a 3D max pool
            # never wins, it pads with -inf); then the spatial window
            pooled = F.max_pool2d(stack.amax(dim=2), self.kernel_size, stride=1, padding=self.kernel_size // 2)
            outs.append(F.relu(self.norm(pooled + x)))
        return outs
