"""Fast NMS (Bolya et al. 2019, "Fast NMS"): NMS as one matrix operation.

Rule: rank the candidates by score; a candidate is kept unless a *higher-ranked* candidate
overlaps it with IoU above the threshold. With X the IoU matrix of the ranked candidates,
X[i, j] for i < j compares j with a better candidate, so candidate j survives when
max_i triu(X, 1)[i, j] <= threshold. Unlike greedy NMS an already suppressed candidate still
suppresses the ones below it (A > B > C overlapping in a chain: greedy keeps A and C, Fast NMS
only A).

``fast_nms`` applies the rule per class (a box competes only with its own class's top-k);
``cross_class_fast_nms`` once, over each box's best class.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..boxes import box_iou


@dataclass
class NMSResult:
    """Kept detections, best score first: boxes [K, 4] relative xyxy, coeffs [K, D] mask
    coefficients, labels [K] (0-based foreground class), scores [K]."""

    boxes: Tensor
    coeffs: Tensor
    labels: Tensor
    scores: Tensor


def top_candidates(scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """scores [..., N] -> (the ``top_k`` best scores [..., k], their indices [..., k]), best first."""
    ranked, index = scores.sort(dim=-1, descending=True)
    return ranked[..., :top_k], index[..., :top_k]


def survives_fast_nms(ranked_boxes: Tensor, iou_threshold: float) -> Tensor:
    """ranked_boxes [..., k, 4] xyxy, best first -> [..., k] bool: no better-ranked box of the
    same row overlaps it above ``iou_threshold``."""
    iou_with_better = box_iou(ranked_boxes, ranked_boxes).triu(diagonal=1)   # [..., k (better), k]
    return iou_with_better.amax(dim=-2) <= iou_threshold


def fast_nms(boxes: Tensor, coeffs: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200,
             max_detections: int = 100) -> NMSResult:
    """Per-class Fast NMS. boxes [N, 4], coeffs [N, D], scores [C, N] (foreground classes) ->
    the survivors of all classes, best ``max_detections`` by score."""
    class_scores, candidate = top_candidates(scores, top_k)                  # [C, k] each
    keep = survives_fast_nms(boxes[candidate], iou_threshold)                # [C, k, 4] -> [C, k]
    label, rank = keep.nonzero(as_tuple=True)                                # [K] each, class-major
    kept_scores, best = class_scores[label, rank].sort(descending=True)
    best = best[:max_detections]
    box_index = candidate[label, rank][best]                                 # into boxes / coeffs
    return NMSResult(boxes[box_index], coeffs[box_index], label[best], kept_scores[:max_detections])


def cross_class_fast_nms(boxes: Tensor, coeffs: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                         top_k: int = 200) -> NMSResult:
    """Class-agnostic Fast NMS: each box competes with its best class's score against boxes
    of every class. boxes [N, 4], coeffs [N, D], scores [C, N] -> survivors in rank order,
    not capped (as official)."""
    best_scores, best_class = scores.max(dim=0)                              # [N] each
    _, candidate = top_candidates(best_scores, top_k)                        # [k]
    box_index = candidate[survives_fast_nms(boxes[candidate], iou_threshold)]
    return NMSResult(boxes[box_index], coeffs[box_index], best_class[box_index], best_scores[box_index])
