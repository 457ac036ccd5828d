"""DeFCN's point assignments (Wang et al. 2021) as pure functions from predictions and targets
to matches:

* ``poto_assign``: Prediction-aware One-To-One assignment (Eq. 5-6): quality
  Q = p^(1 - alpha) * IoU^alpha (``poto_quality``, IoU by ``pairwise_iou``) of each point's
  prediction for each object, restricted to the object's center region
  (``assign.fcos.center_region_mask``), then a maximum-weight bipartite (Hungarian) matching;
* ``aux_topk_assign``: the auxiliary one-to-many assignment (Sec. 3.4): per level the top-k
  points by Q, kept above mean + std of those candidates and inside the box.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..boxes import box_iou


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """[G, 4] x [R, 4] xyxy -> [G, R] ``boxes.box_iou``, but 0 where boxes do not intersect, so
    degenerate predicted boxes (a side <= 0) give 0, not NaN (0 / 0) or -0 (a negative union).
    A positive IoU needs a positive intersection, hence two boxes of positive size."""
    iou = box_iou(a, b)
    return torch.where(iou > 0, iou, 0.0)


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
