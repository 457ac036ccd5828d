"""Points ("shifts") of dense heads.

A point of level l at grid cell (i, j) sits at ((j + offset) * stride_l, (i + offset) * stride_l)
in input pixels; its box is encoded as the distances (l, t, r, b) to the four sides by
``codetr.coders.ltrb_encode``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import per_prior


def level_points(height: int, width: int, stride: int, offset: float = 0.5,
                 device: torch.device | str = "cpu") -> Tensor:
    """[H * W, 2] (x, y) point positions, row-major over (i, j)."""
    xs = (torch.arange(width, device=device, dtype=torch.float32) + offset) * stride
    ys = (torch.arange(height, device=device, dtype=torch.float32) + offset) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def points_per_level(shapes: list[tuple[int, int]], strides: list[int], offset: float = 0.5,
                     device: torch.device | str = "cpu") -> list[Tensor]:
    return [level_points(h, w, s, offset, device) for (h, w), s in zip(shapes, strides)]


class PointGenerator:
    """The points of every level, a ``DenseDetector`` prior generator."""

    def __init__(self, strides: list[int], offset: float = 0.5) -> None:
        self.strides, self.offset = list(strides), offset

    def __call__(self, shapes: list[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        return points_per_level(shapes, self.strides, self.offset, device)


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per-level [B, K, H_l, W_l] -> [B, sum_l H_l W_l, K], levels concatenated, row-major points
    (``base.per_prior`` with one prior per location)."""
    return torch.cat([per_prior(m, m.shape[1]) for m in maps], dim=1)
