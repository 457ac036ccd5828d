"""FCOS's point assignment (Tian et al. 2019, Sec. 3.1-3.2, with center sampling) as a pure
function: a point is positive for the smallest object whose center region holds it and whose
size fits the point's level (``fcos_assign``). The point-in-box and center-region masks are
shared with DeFCN's POTO (``assign.poto``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import box_area
from ..coders import ltrb_encode


def inside_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """points [R, 2], boxes [G, 4] -> [G, R] True where the point is strictly inside the box."""
    return ltrb_encode(points[None], boxes[:, None]).amin(dim=-1) > 0


def center_region_mask(points: list[Tensor], strides: list[int], boxes: Tensor, radius: float) -> Tensor:
    """[G, R]: point inside the box's center region, the square of half-side ``radius * stride``
    around the box center, clipped to the box. radius <= 0: the whole box."""
    all_points = torch.cat(points)
    if radius <= 0:
        return inside_boxes(all_points, boxes)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    masks = []
    for pts, stride in zip(points, strides):
        r = stride * radius
        region = torch.cat([torch.max(centers - r, boxes[:, :2]), torch.min(centers + r, boxes[:, 2:])], dim=1)
        masks.append(inside_boxes(pts, region))
    return torch.cat(masks, dim=1)


def fcos_assign(points: list[Tensor], strides: list[int], boxes: Tensor, size_ranges: list[tuple[float, float]],
                radius: float) -> Tensor:
    """FCOS targets: a point is positive for an object when it lies in the object's center
    region and its largest ltrb distance is in its level's ``size_ranges``; the smallest such
    object wins. Returns [R] matched object (-1: background)."""
    all_points = torch.cat(points)
    if len(boxes) == 0:
        return torch.full((len(all_points),), -1, dtype=torch.long, device=all_points.device)
    ranges = torch.cat([all_points.new_tensor(r).expand(len(p), 2) for p, r in zip(points, size_ranges)])
    max_dist = ltrb_encode(all_points[None], boxes[:, None]).amax(dim=-1)  # [G, R]
    ok = center_region_mask(points, strides, boxes, radius) & (max_dist >= ranges[:, 0]) & (max_dist <= ranges[:, 1])
    area = box_area(boxes)[:, None].expand_as(max_dist).masked_fill(~ok, float("inf"))
    min_area, matched = area.min(dim=0)
    return torch.where(torch.isfinite(min_area), matched, torch.full_like(matched, -1))
