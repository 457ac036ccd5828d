"""Point-to-object assignment of dense heads: pure functions from predictions and targets to
matches (a matched object index per point, -1 for background).

* ``poto_assign``: DeFCN's Prediction-aware One-To-One assignment (Wang et al. 2021, Eq. 5-6):
  quality Q = p^(1 - alpha) * IoU^alpha of each point's prediction for each object, restricted
  to the object's center region, then a maximum-weight bipartite (Hungarian) matching;
* ``aux_topk_assign``: DeFCN's auxiliary one-to-many assignment (Sec. 3.4): per level the top-k
  points by Q, kept above mean + std of those candidates and inside the box;
* ``fcos_assign``: FCOS's one-to-many rule (points in the center region and the level's size
  range, the smallest object wins).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..boxes import box_area, box_iou, ltrb_encode


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """[G, 4] x [R, 4] xyxy -> [G, R] ``boxes.box_iou``, but 0 where boxes do not intersect, so
    degenerate predicted boxes (a side <= 0) give 0, not NaN (0 / 0) or -0 (a negative union).
    A positive IoU needs a positive intersection, hence two boxes of positive size."""
    iou = box_iou(a, b)
    return torch.where(iou > 0, iou, 0.0)


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


def poto_quality(prob: Tensor, iou: Tensor, alpha: float) -> Tensor:
    """Eq. 6: Q = p^(1 - alpha) * IoU^alpha, [G, R]."""
    return prob ** (1 - alpha) * iou ** alpha


def poto_assign(quality: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """quality [G, R], candidates [G, R] bool -> (object indices, point indices) of the
    maximum-quality one-to-one matching. Non-candidates weigh -1, as official: an object whose
    region holds no free point still gets one (the Hungarian matching is complete)."""
    weights = quality.masked_fill(~candidates, -1)
    if weights.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=quality.device)
        return empty, empty
    gt_idx, point_idx = linear_sum_assignment(weights.detach().float().cpu().numpy(), maximize=True)
    to = lambda x: torch.as_tensor(x, dtype=torch.long, device=quality.device)  # noqa: E731
    return to(gt_idx), to(point_idx)


def aux_topk_assign(quality: Tensor, level_sizes: list[int], topk: int, inside_box: Tensor) -> Tensor:
    """quality [G, R], inside_box [G, R] -> [R] matched object (-1: background).

    Candidates: the ``topk`` best points of each level per object (all of a level's points when
    it has fewer), kept when Q >= mean + std of the object's candidates and inside its box; a
    point claimed by several objects goes to the one of highest Q."""
    num_gt, num_points = quality.shape
    if num_gt == 0:
        return torch.full((num_points,), -1, dtype=torch.long, device=quality.device)
    candidates = []
    for start, size in zip(torch.tensor([0] + level_sizes).cumsum(0).tolist(), level_sizes):
        idx = quality[:, start:start + size].topk(min(topk, size), dim=1).indices
        candidates.append(idx + start)
    candidates = torch.cat(candidates, dim=1)  # [G, sum_l k_l]
    cand_quality = quality.gather(1, candidates)
    threshold = cand_quality.mean(dim=1, keepdim=True) + cand_quality.std(dim=1, keepdim=True)
    is_fg = torch.zeros_like(inside_box).scatter_(1, candidates, True) & (quality >= threshold) & inside_box
    best_quality, matched = quality.masked_fill(~is_fg, -1).max(dim=0)
    return torch.where(best_quality != -1, matched, torch.full_like(matched, -1))


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
