"""Adaptive Training Sample Selection (ATSS; Zhang et al., CVPR 2020, Alg. 1), as mmdet 2.25.3's
``ATSSAssigner`` computes it (the assigner of Co-DETR's auxiliary ATSS head).

For every ground-truth box g (Alg. 1):

1. on each pyramid level, the ``topk`` anchors whose centres are closest (L2) to g's centre are
   candidates C_g (line 3-6);
2. t_g = mean + std of the IoUs of C_g (the std is the UNBIASED one, torch's default) (7-11);
3. a candidate c is positive for g when IoU(c, g) >= t_g and c's centre lies strictly inside g,
   i.e. min(l, t, r, b) > 0.01 pixel (mmdet's margin) (12-16);
4. an anchor positive for several boxes takes the one of highest IoU (the first on exact ties).

Anchors are the image's valid anchors concatenated level by level (``level_sizes`` counts
them). IoUs are mmdet's ``bbox_overlaps``: union clamped at 1e-6. Optionally anchors covered
by an "ignore" box by more than ``ignore_iof_thr`` (intersection / anchor area) are ignored
(-1) and cannot be candidates, unless a level has too few other anchors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..boxes import mmdet_iof, mmdet_iou

# mmdet's sentinel: "far away" distance for ignored anchors, "no IoU" for non-positive anchors
INF = 100000000.0
CENTRE_MARGIN = 0.01  # mmdet: the anchor centre must be more than this inside the box


@dataclass(frozen=True)
class ATSSAssignment:
    """Per anchor [A]: ``gt_inds`` (long) 0 negative, -1 ignored, i + 1 assigned to box i;
    ``max_overlaps`` the IoU with the assigned box, -1e8 (mmdet's -INF) for anchors without
    one (all zeros when there are no boxes, as mmdet); ``labels`` (long) the assigned box's
    label, -1 elsewhere (None when no labels were given)."""

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor | None

    @property
    def positive(self) -> Tensor:
        return self.gt_inds > 0


def box_centres(boxes: Tensor) -> Tensor:
    """[N, 4] xyxy -> [N, 2] (cx, cy), computed as (x0 + x1) / 2."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], dim=1)


def centre_distances(anchors: Tensor, boxes: Tensor) -> Tensor:
    """L2 distance between anchor and box centres: [A, 4] x [G, 4] -> [A, G]."""
    diff = box_centres(anchors)[:, None, :] - box_centres(boxes)[None, :, :]  # [A, G, 2]
    return diff.pow(2).sum(-1).sqrt()


def closest_per_level(distances: Tensor, level_sizes: list[int], topk: int) -> Tensor:
    """Alg. 1 lines 3-6: for each box, the ``topk`` closest anchors of every level (fewer on a
    level holding fewer anchors). distances [A, G] -> candidate anchor indices [C, G],
    C = sum_l min(topk, A_l), level by level."""
    picked = []
    for start, block in zip(_starts(level_sizes), distances.split(level_sizes, dim=0)):
        k = min(topk, block.shape[0])
        picked.append(block.topk(k, dim=0, largest=False).indices + start)  # [k, G]
    return torch.cat(picked, dim=0)


def _starts(sizes: list[int]) -> list[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


def centre_inside(anchors: Tensor, candidates: Tensor, boxes: Tensor) -> Tensor:
    """Alg. 1 line 14: the candidate's centre is more than 0.01 px inside its box.
    candidates [C, G] anchor indices -> [C, G] bool."""
    centres = box_centres(anchors)[candidates]  # [C, G, 2]
    sides = torch.stack([centres[..., 0] - boxes[:, 0], centres[..., 1] - boxes[:, 1],
                         boxes[:, 2] - centres[..., 0], boxes[:, 3] - centres[..., 1]], dim=-1)
    return sides.min(dim=-1).values > CENTRE_MARGIN


def ignored_anchors(anchors: Tensor, ignore_boxes: Tensor | None, thr: float) -> Tensor | None:
    """[A] bool: anchors whose area an ignore box covers by more than ``thr`` (mmdet 'iof',
    area clamped at 1e-6); None when ignoring is off or there is nothing to ignore."""
    if thr <= 0 or ignore_boxes is None or ignore_boxes.numel() == 0 or anchors.numel() == 0:
        return None
    return mmdet_iof(anchors, ignore_boxes).max(dim=1).values > thr


def atss_assign(anchors: Tensor, level_sizes: list[int], gt_boxes: Tensor, gt_labels: Tensor | None = None,
                topk: int = 9, ignore_boxes: Tensor | None = None, ignore_iof_thr: float = -1.0) -> ATSSAssignment:
    """ATSS (module docstring). anchors [A, 4] xyxy (level by level, ``sum(level_sizes) == A``),
    gt_boxes [G, 4] xyxy, gt_labels [G] -> ``ATSSAssignment`` over the A anchors."""
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    if sum(level_sizes) != num_anchors:
        raise ValueError(f"level_sizes sum to {sum(level_sizes)}, but there are {num_anchors} anchors")
    gt_inds = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
    if num_gts == 0 or num_anchors == 0:
        labels = None if gt_labels is None else torch.full_like(gt_inds, -1)
        return ATSSAssignment(gt_inds, anchors.new_zeros(num_anchors), labels)
    ious = mmdet_iou(anchors, gt_boxes)  # [A, G]
    distances = centre_distances(anchors, gt_boxes)  # [A, G]
    ignored = ignored_anchors(anchors, ignore_boxes, ignore_iof_thr)
    if ignored is not None:
        distances[ignored] = INF
        gt_inds[ignored] = -1
    candidates = closest_per_level(distances, level_sizes, topk)  # [C, G]
    candidate_ious = ious.gather(0, candidates)  # [C, G]
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # [G], Alg. 1 lines 7-11
    keep = (candidate_ious >= threshold[None, :]) & centre_inside(anchors, candidates, gt_boxes)
    positive = torch.zeros_like(ious, dtype=torch.bool).scatter_(0, candidates, keep)  # [A, G]
    best_iou, best_gt = ious.masked_fill(~positive, -INF).max(dim=1)  # [A]
    assigned = best_iou != -INF
    gt_inds = torch.where(assigned, best_gt + 1, gt_inds)
    labels = None
    if gt_labels is not None:
        labels = torch.where(assigned, gt_labels[best_gt], torch.full_like(gt_inds, -1))
    return ATSSAssignment(gt_inds, best_iou, labels)
