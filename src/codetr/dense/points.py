"""Points ("shifts") of dense heads and the ltrb box coder.

A point of level l at grid cell (i, j) sits at ((j + offset) * stride_l, (i + offset) * stride_l)
in input pixels; its box is encoded as the distances (l, t, r, b) to the four sides.
"""
from __future__ import annotations

import torch
from torch import Tensor


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


def ltrb_encode(points: Tensor, boxes: Tensor) -> Tensor:
    """points [..., 2] (x, y), boxes [..., 4] xyxy (broadcast) -> [..., 4] (x - x0, y - y0, x1 - x, y1 - y)."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def ltrb_decode(points: Tensor, deltas: Tensor) -> Tensor:
    """Inverse of ``ltrb_encode``: points [..., 2], deltas [..., 4] -> xyxy [..., 4]."""
    return torch.cat([points - deltas[..., :2], points + deltas[..., 2:]], dim=-1)


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per-level [B, K, H_l, W_l] -> [B, sum_l H_l W_l, K], levels concatenated, row-major points."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
