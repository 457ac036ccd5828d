"""Fast NMS (Bolya et al. 2019, Sec. 3.3): NMS as one matrix operation. Per class, the top-k
candidates by score get their pairwise IoU matrix X [c, k, k]; its lower triangle and
diagonal are zeroed (X_kj for k < j compares j with higher-scoring boxes only); a candidate is
dropped when its column maximum exceeds the threshold. Unlike greedy NMS, an already
suppressed box may still suppress others.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..assign.prior_match import pairwise_overlap


@dataclass
class NMSResult:
    """Kept detections, best score first: boxes [K, 4] relative xyxy, coeffs [K, D] mask
    coefficients, labels [K] (0-based foreground class), scores [K]."""

    boxes: Tensor
    coeffs: Tensor
    labels: Tensor
    scores: Tensor


def fast_nms(boxes: Tensor, coeffs: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200,
             max_detections: int = 100) -> NMSResult:
    """Per-class Fast NMS. boxes [N, 4], coeffs [N, D], scores [C, N] (foreground classes) ->
    at most ``max_detections`` detections over all classes, by score."""
    scores, order = scores.sort(1, descending=True)                     # [C, N]
    order, scores = order[:, :top_k], scores[:, :top_k]                 # [C, k]
    num_classes, k = order.shape
    cand_boxes = boxes[order.reshape(-1)].view(num_classes, k, 4)
    cand_coeffs = coeffs[order.reshape(-1)].view(num_classes, k, -1)
    iou = pairwise_overlap(cand_boxes, cand_boxes).triu_(diagonal=1)    # [C, k, k]
    keep = iou.max(1).values <= iou_threshold                           # [C, k]
    labels = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
    scores, best = scores[keep].sort(0, descending=True)
    best = best[:max_detections]
    return NMSResult(cand_boxes[keep][best], cand_coeffs[keep][best], labels[best], scores[:max_detections])


def cross_class_fast_nms(boxes: Tensor, coeffs: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                         top_k: int = 200) -> NMSResult:
    """Class-agnostic Fast NMS: each candidate keeps its best class; boxes of different
    classes suppress each other. Not capped (as official)."""
    scores, labels = scores.max(0)                                      # [N]
    order = scores.sort(0, descending=True).indices[:top_k]
    cand = boxes[order]
    iou = pairwise_overlap(cand, cand).triu_(diagonal=1)
    kept = order[iou.max(0).values <= iou_threshold]
    return NMSResult(boxes[kept], coeffs[kept], labels[kept], scores[kept])
