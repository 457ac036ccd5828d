"""Feed-forward heads and positional encodings."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SinePositionEncoding(nn.Module):
    """2-D sine/cosine encoding of pixel positions (DETR), normalized to [0, scale] over each
    image's valid region. Output [B, 2 * num_feats, H, W]: the y half first, then x.

    Each coordinate c gets features sin(c / T^(2i / F)), cos(c / T^(2i / F)) interleaved.
    DINO uses separate temperatures for y and x, hence ``temperature_h`` / ``temperature_w``,
    and no half-pixel shift of the cumulative counts (``offset`` 0; Deformable DETR: 0.5).
    """

    def __init__(self, num_feats: int = 128, temperature_h: float = 10000.0,
                 temperature_w: float = 10000.0, scale: float = 2 * math.pi, offset: float = 0.5) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.offset = offset
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.scale = scale

    def _embed(self, coord: Tensor, temperature: float) -> Tensor:
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=coord.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        pos = coord[..., None] / dim_t  # [B, H, W, F]
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(3)

    def forward(self, mask: Tensor) -> Tensor:
        """mask: [B, H, W] bool, True on padding."""
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y = (y - self.offset) / (y[:, -1:, :] + eps) * self.scale
        x = (x - self.offset) / (x[:, :, -1:] + eps) * self.scale
        pos = torch.cat((self._embed(y, self.temperature_h), self._embed(x, self.temperature_w)), dim=3)
        return pos.permute(0, 3, 1, 2)
