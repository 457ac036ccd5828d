"""The protonet (Bolya et al. 2019, Sec. 3.2): k prototype masks from P3 at twice its
resolution. 3 x (3x3 conv + ReLU), bilinear x2 upsampling, 3x3 conv + ReLU, 1x1 conv to
``num_prototypes``, ReLU (unbounded positive prototypes)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Protonet(nn.Module):
    def __init__(self, in_channels: int = 256, hidden: int = 256, num_prototypes: int = 32,
                 num_convs: int = 3) -> None:
        super().__init__()
        dims = [in_channels] + [hidden] * num_convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims, dims[1:]))
        self.after_upsample = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, num_prototypes, 1)

    def forward(self, p3: Tensor) -> Tensor:
        """p3 [B, C, H, W] -> prototypes [B, 2H, 2W, k] (channels last, as official)."""
        x = p3
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.relu(self.after_upsample(x))
        return F.relu(self.out(x)).permute(0, 2, 3, 1).contiguous()
