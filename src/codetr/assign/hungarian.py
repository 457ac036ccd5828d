"""Hungarian (one-to-one) matching of DETR queries to ground truth (Carion et al. 2020, Eq. 1).

Two conventions: ``HungarianMatcher`` (the DETR / Deformable DETR / DINO repositories: batched,
targets normalized cxcywh, GIoU on normalized boxes) and ``PixelHungarianMatcher`` (mmdet's
``HungarianAssigner``, used by Co-DETR: one image at a time, GIoU on pixel boxes).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..boxes import MMDET_EPS, cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh

Match = tuple[Tensor, Tensor]  # (query indices, target indices), int64, equal length


def focal_class_cost(prob: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                     eps: float = 1e-8) -> Tensor:
    """Classification cost of Deformable DETR: the focal loss of predicting ``labels`` as
    positive minus that of predicting them as negative, ``eps`` inside the logs (1e-8 in the
    DETR repositories, 1e-12 in mmdet). prob [N, K], labels [M] -> [N, M]."""
    p = prob[:, labels]
    neg = (1 - alpha) * p ** gamma * (-(1 - p + eps).log())
    pos = alpha * (1 - p) ** gamma * (-(p + eps).log())
    return pos - neg


def linear_assignment(cost: Tensor) -> Match:
    """Minimum-cost one-to-one assignment of a [N, M] cost matrix (scipy)."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher:
    """cost = w_class * focal cost + w_bbox * L1(cxcywh) + w_giou * (-GIoU).
    ``giou_eps`` is added to the GIoU denominators (DINO: 1e-6; Deformable DETR: 0)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0, giou_eps: float = 0.0) -> None:
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma, self.giou_eps = alpha, gamma, giou_eps

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """logits [Q, K], boxes [Q, 4] normalized cxcywh; labels [M], target_boxes [M, 4] -> [Q, M]."""
        cost_class = focal_class_cost(logits.sigmoid(), labels, self.alpha, self.gamma)
        cost_bbox = torch.cdist(boxes, target_boxes, p=1)
        cost_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes), self.giou_eps)
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[Match]:
        """logits [B, Q, K], boxes [B, Q, 4]; targets: per image {'labels' [M], 'boxes' [M, 4]}.
        All images' costs are computed in one batched call, then split per image."""
        B, Q, _ = logits.shape
        labels = torch.cat([t["labels"] for t in targets])
        tboxes = torch.cat([t["boxes"] for t in targets])
        if labels.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(B)]
        cost = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), labels, tboxes)
        cost = cost.view(B, Q, -1).cpu()
        sizes = [len(t["labels"]) for t in targets]
        return [linear_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]


class PixelHungarianMatcher:
    """mmdet's ``HungarianAssigner`` with its focal, L1 and GIoU costs (Co-DETR's query heads),
    one image at a time, on target boxes in pixels: cost = w_class * focal cost (log eps 1e-12)
    + w_bbox * L1 between normalized cxcywh boxes (targets divided by the image size, then
    converted) + w_giou * (-GIoU) between pixel xyxy boxes (mmdet's denominators, clamped at
    1e-6). The terms are added in mmdet's order, so near-ties resolve as the official ones."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-12) -> None:
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma, self.eps = alpha, gamma, eps

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, gt_boxes: Tensor, img_wh: Tensor) -> Tensor:
        """logits [Q, K], boxes [Q, 4] normalized cxcywh; labels [M], gt_boxes [M, 4] xyxy
        pixels; img_wh [4] (w, h, w, h) of the image -> [Q, M]."""
        cost_class = focal_class_cost(logits.sigmoid(), labels, self.alpha, self.gamma, self.eps)
        cost_bbox = torch.cdist(boxes, xyxy_to_cxcywh(gt_boxes / img_wh), p=1)
        giou = generalized_box_iou(cxcywh_to_xyxy(boxes) * img_wh, gt_boxes, eps=MMDET_EPS, clamp=True)  # [Q, M]
        return self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * -giou

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, labels: Tensor, gt_boxes: Tensor, img_wh: Tensor) -> Match:
        """One image (``cost_matrix``'s arguments) -> (query indices, target indices), sorted by
        query; empty without targets."""
        if labels.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        return linear_assignment(self.cost_matrix(logits, boxes, labels, gt_boxes, img_wh).cpu())
