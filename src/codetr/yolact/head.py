"""YOLACT's prediction head, shared by all FPN levels: a 3x3 conv + ReLU, then three 3x3
convs giving, per location and prior, 4 box offsets, class logits (background first) and
``mask_dim`` mask coefficients (tanh)."""
from __future__ import annotations

from torch import Tensor, nn


class PredictionHead(nn.Module):
    def __init__(self, channels: int, num_priors: int, num_classes: int, mask_dim: int = 32) -> None:
        """``num_classes`` counts the background class."""
        super().__init__()
        self.num_priors, self.num_classes, self.mask_dim = num_priors, num_classes, mask_dim
        self.upfeature = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.bbox_layer = nn.Conv2d(channels, num_priors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, num_priors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, num_priors * mask_dim, 3, padding=1)

    @staticmethod
    def _flatten(x: Tensor, k: int) -> Tensor:
        # [B, A*k, H, W] -> [B, H*W*A, k]
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, k)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, C, H, W] -> loc [B, HWA, 4], conf logits [B, HWA, num_classes], mask [B, HWA, mask_dim]."""
        x = self.upfeature(x)
        loc = self._flatten(self.bbox_layer(x), 4)
        conf = self._flatten(self.conf_layer(x), self.num_classes)
        mask = self._flatten(self.mask_layer(x), self.mask_dim).tanh()
        return loc, conf, mask
