"""The FCOS head (Tian et al. 2019) shared by FCOS and DeFCN.

    P_l -> cls tower (num_convs x [3x3 conv, GN, ReLU]) -> cls_score   [B, K, H, W] logits
        -> box tower (same, separate weights)        -> bbox_pred   [B, 4, H, W] ltrb distances
                                                     -> centerness  [B, 1, H, W] (FCOS), or
           box towers of all levels -> 3D max filter -> filter      [B, 1, H, W] (DeFCN)

Towers and predictors are shared over levels; each level has a learnable scale on its box
regression: ltrb = relu(scale_l * conv) * stride_l (``norm_reg_targets``) or exp(scale_l * conv).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .max_filter import MaxFiltering3D


class Scale(nn.Module):
    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """``quality``: "filter" (DeFCN: 3D max filtering + a filter conv on the box tower),
    "centerness" (FCOS, on the box tower when ``centerness_on_reg`` else the cls tower) or None."""

    def __init__(self, channels: int, num_classes: int, strides: list[int], num_convs: int = 4,
                 prior_prob: float = 0.01, norm_reg_targets: bool = True, quality: str | None = "filter",
                 filter_kernel_size: int = 3, filter_tau: int = 2, centerness_on_reg: bool = True) -> None:
        super().__init__()
        if quality not in ("filter", "centerness", None):
            raise ValueError(f"quality must be 'filter', 'centerness' or None, got {quality!r}")
        self.strides, self.norm_reg_targets = list(strides), norm_reg_targets
        self.quality, self.centerness_on_reg = quality, centerness_on_reg
        self.cls_subnet, self.bbox_subnet = tower(channels, num_convs), tower(channels, num_convs)
        self.cls_score = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        if quality == "filter":
            self.max3d = MaxFiltering3D(channels, filter_kernel_size, filter_tau)
            self.filter = nn.Conv2d(channels, 1, 3, padding=1)
        elif quality == "centerness":
            self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in strides)
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        """feats: P maps [B, C, H_l, W_l] -> {"box_cls": [B, K, H_l, W_l], "box_delta": [B, 4, H_l, W_l]
        ltrb in input pixels, and "box_filter" or "box_center": [B, 1, H_l, W_l] logits}, lists over levels."""
        logits, deltas, cls_towers, box_towers = [], [], [], []
        for level, feat in enumerate(feats):
            cls_t, box_t = self.cls_subnet(feat), self.bbox_subnet(feat)
            logits.append(self.cls_score(cls_t))
            reg = self.scales[level](self.bbox_pred(box_t))
            deltas.append(F.relu(reg) * self.strides[level] if self.norm_reg_targets else reg.exp())
            cls_towers.append(cls_t)
            box_towers.append(box_t)
        out = {"box_cls": logits, "box_delta": deltas}
        if self.quality == "filter":
            out["box_filter"] = [self.filter(x) for x in self.max3d(box_towers)]
        elif self.quality == "centerness":
            out["box_center"] = [self.centerness(x) for x in (box_towers if self.centerness_on_reg else cls_towers)]
        return out
