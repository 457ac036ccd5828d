"""Max-IoU assignment (Faster R-CNN, Ren et al. 2015, Sec. 3.1.2), mmdet 2.25.3's
``MaxIoUAssigner`` as a pure function.

For boxes (anchors / proposals) ``b_j`` and gts ``g_i`` with IoU matrix ``O[i, j]``:

1. ``gt_inds = -1`` (ignored) everywhere; ``0`` (negative) where ``neg_lo <= max_i O < neg_hi``
   (``neg_iou_thr`` a float ``t`` means ``[0, t)``);
2. ``argmax_i O + 1`` where ``max_i O >= pos_iou_thr``;
3. ``match_low_quality``: for each gt ``i`` in index order whose best IoU ``m_i >= min_pos_iou``,
   every box with ``O[i, j] == m_i`` (exact float equality; only the first such box when not
   ``gt_max_assign_all``) gets ``i + 1``; a later gt overrides an earlier one.

With ``ignore_iof_thr > 0`` boxes covered by an ignore region more than that (IoF) get ``O = -1``
and stay ignored. IoU is mmdet's ``bbox_overlaps``: union clamped to ``>= 1e-6``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from codetr.boxes import mmdet_iof, mmdet_iou


@dataclass
class MaxIoUAssignment:
    """``gt_inds`` [N] int64: -1 ignored, 0 negative, i + 1 matched to gt i; ``max_overlaps``
    [N] best IoU per box (0 for all when there are no gts); ``labels`` [N] int64 (-1 where not
    positive) or None when no gt labels were given."""

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor | None = None


def _low_quality_owner(overlaps: Tensor, min_pos_iou: float, assign_all: bool) -> Tensor:
    """[G, N] -> [N] int64: the LAST gt (1-based; 0 = none) whose best box is this box."""
    best, best_box = overlaps.max(dim=1)  # [G]
    if assign_all:
        hit = overlaps == best[:, None]  # [G, N]
    else:
        hit = torch.zeros_like(overlaps, dtype=torch.bool)
        hit[torch.arange(len(best), device=overlaps.device), best_box] = True
    hit &= (best >= min_pos_iou)[:, None]
    rank = torch.arange(1, len(best) + 1, device=overlaps.device)[:, None]  # [G, 1]
    return (hit.long() * rank).max(dim=0).values  # [N]


def assign_overlaps(overlaps: Tensor, pos_iou_thr: float, neg_iou_thr: float | tuple[float, float],
                    min_pos_iou: float = 0.0, match_low_quality: bool = True,
                    gt_max_assign_all: bool = True, gt_labels: Tensor | None = None) -> MaxIoUAssignment:
    """Max-IoU rule on a given overlap matrix ``overlaps`` [G, N] (module docstring)."""
    g, n = overlaps.shape
    gt_inds = overlaps.new_full((n,), -1, dtype=torch.long)
    if g == 0 or n == 0:
        gt_inds.fill_(0 if g == 0 else -1)
        labels = None if gt_labels is None else gt_inds.new_full((n,), -1)
        return MaxIoUAssignment(g, gt_inds, overlaps.new_zeros(n), labels)
    best, owner = overlaps.max(dim=0)  # [N] each
    lo, hi = (0.0, neg_iou_thr) if isinstance(neg_iou_thr, (int, float)) else neg_iou_thr
    gt_inds[(best >= lo) & (best < hi)] = 0
    positive = best >= pos_iou_thr
    gt_inds[positive] = owner[positive] + 1
    if match_low_quality:
        late = _low_quality_owner(overlaps, min_pos_iou, gt_max_assign_all)
        gt_inds = torch.where(late > 0, late, gt_inds)
    labels = None
    if gt_labels is not None:
        labels = gt_inds.new_full((n,), -1)
        matched = gt_inds > 0
        labels[matched] = gt_labels[gt_inds[matched] - 1]
    return MaxIoUAssignment(g, gt_inds, best, labels)


def max_iou_assign(boxes: Tensor, gt_boxes: Tensor, pos_iou_thr: float,
                   neg_iou_thr: float | tuple[float, float], min_pos_iou: float = 0.0,
                   match_low_quality: bool = True, gt_max_assign_all: bool = True,
                   gt_labels: Tensor | None = None, gt_ignore: Tensor | None = None,
                   ignore_iof_thr: float = -1.0, ignore_wrt_candidates: bool = True) -> MaxIoUAssignment:
    """boxes [N, 4+] xyxy, gt_boxes [G, 4] xyxy (gt_labels [G]) -> ``MaxIoUAssignment``."""
    overlaps = mmdet_iou(gt_boxes, boxes)  # [G, N]
    if ignore_iof_thr > 0 and gt_ignore is not None and gt_ignore.numel() > 0 and boxes.numel() > 0:
        if ignore_wrt_candidates:
            covered = mmdet_iof(boxes, gt_ignore).max(dim=1).values  # [N]
        else:
            covered = mmdet_iof(gt_ignore, boxes).max(dim=0).values  # [N]
        overlaps[:, covered > ignore_iof_thr] = -1
    return assign_overlaps(overlaps, pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality,
                           gt_max_assign_all, gt_labels)
