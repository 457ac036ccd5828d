"""Boxes: format conversions and overlaps (IoU, GIoU, coverage). The one home of each;
detectors and assigners import them from here.

Formats, all [..., 4]: ``xyxy`` corners, ``cxcywh`` centre and size, ``xywh`` (COCO) corner
and size.

Overlaps come in two layouts: *pairwise* [..., N, 4] x [..., M, 4] -> [..., N, M] (leading
dimensions broadcast, e.g. one IoU matrix per class) and *elementwise* [..., 4] x [..., 4] ->
[...] (matched rows). Plain pairwise IoU and GIoU without ``eps`` are ``torchvision.ops``
(identical values and gradients in float32/64; torchvision computes float16/bfloat16 inputs in
float32); the rest share one formula, ``_overlap_terms``.

Denominator conventions (``eps``), as the detectors we reproduce use them:

* added, ``d + eps`` (``clamp=False``): DETR / Deformable DETR (``eps = 0``), DINO (1e-6);
* clamped, ``max(d, eps)`` (``clamp=True``): mmdet's ``bbox_overlaps`` (``mmdet_iou``,
  ``mmdet_iof``) and ``GIoULoss`` (``MMDET_EPS``), cvpods' IoU loss.

The box coders (boxes to regression targets and back) are ``codetr.coders``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision import ops

MMDET_EPS = 1e-6  # mmdet's clamp on IoU / GIoU denominators (bbox_overlaps, GIoULoss)


# -- formats ------------------------------------------------------------------------------

def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(b: Tensor) -> Tensor:
    x, y, w, h = b.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(b: Tensor) -> Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_area(b: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...]; negative for inverted boxes (x1 < x0 or y1 < y0)."""
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


# -- overlaps -----------------------------------------------------------------------------

def _side_product(lo: Tensor, hi: Tensor) -> Tensor:
    """Area of the box [lo, hi] ([..., 2] corners each), 0 when it is empty."""
    wh = (hi - lo).clamp(min=0)
    return wh[..., 0] * wh[..., 1]  # not .prod(-1): its gradient divides by the factors


def _divide(num: Tensor, den: Tensor, eps: float, clamp: bool) -> Tensor:
    return num / (den.clamp(min=eps) if clamp else den + eps)


def _overlap_terms(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Elementwise over broadcast a, b [..., 4] xyxy: (intersection, union, enclosing-box area),
    each [...]."""
    area_a, area_b = box_area(a), box_area(b)  # first: the order fixes how gradients accumulate
    inter = _side_product(torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:]))
    union = area_a + area_b - inter
    enclosing = _side_product(torch.min(a[..., :2], b[..., :2]), torch.max(a[..., 2:], b[..., 2:]))
    return inter, union, enclosing


def _giou(a: Tensor, b: Tensor, eps: float, clamp: bool) -> Tensor:
    """GIoU (Rezatofighi et al. 2019, Alg. 1) = IoU - (|C| - |A u B|) / |C|, C the smallest
    box enclosing A and B, elementwise over broadcast [..., 4]."""
    inter, union, enclosing = _overlap_terms(a, b)
    return _divide(inter, union, eps, clamp) - _divide(enclosing - union, enclosing, eps, clamp)


def _pairwise(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """[..., N, 4], [..., M, 4] -> views [..., N, 1, 4], [..., 1, M, 4] that broadcast to N x M."""
    return a[..., :, None, :], b[..., None, :, :]


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection areas: [..., N, 4] x [..., M, 4] xyxy -> [..., N, M]."""
    a, b = _pairwise(a, b)
    return _side_product(torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:]))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU |A n B| / |A u B|: [..., N, 4] x [..., M, 4] xyxy -> [..., N, M]
    (torchvision). NaN where both boxes are empty (0 / 0)."""
    return ops.box_iou(a, b)


def box_coverage(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise |A n B| / |A|, the share of each ``a`` box that a ``b`` box covers (YOLACT's
    crowd test, "IoF" in mmdet): [..., N, 4] x [..., M, 4] xyxy -> [..., N, M]."""
    return box_intersection(a, b) / box_area(a)[..., :, None]


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = 0.0, clamp: bool = False) -> Tensor:
    """Pairwise GIoU: [..., N, 4] x [..., M, 4] xyxy -> [..., N, M]; ``eps`` / ``clamp``: the
    denominator convention (module docstring)."""
    if eps == 0 and not clamp:
        return ops.generalized_box_iou(a, b)
    return _giou(*_pairwise(a, b), eps, clamp)


def elementwise_box_iou(a: Tensor, b: Tensor, eps: float = 0.0, clamp: bool = False) -> Tensor:
    """IoU of matched rows: [..., 4] x [..., 4] xyxy (broadcast) -> [...]."""
    inter, union, _ = _overlap_terms(a, b)
    return _divide(inter, union, eps, clamp)


def mmdet_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU [N, 4] x [M, 4] xyxy -> [N, M], union clamped to ``MMDET_EPS`` (mmdet's
    ``bbox_overlaps``; extra columns, e.g. scores, ignored)."""
    return elementwise_box_iou(a[:, None, :4], b[None, :, :4], eps=MMDET_EPS, clamp=True)


def mmdet_iof(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise |A n B| / |A|, [N, 4] x [M, 4] -> [N, M], |A| clamped to ``MMDET_EPS`` (mmdet's
    ``bbox_overlaps(mode='iof')``)."""
    return box_intersection(a[:, :4], b[:, :4]) / box_area(a[:, :4]).clamp(min=MMDET_EPS)[:, None]


def elementwise_generalized_box_iou(a: Tensor, b: Tensor, eps: float = 0.0, clamp: bool = False) -> Tensor:
    """GIoU of matched rows: [..., 4] x [..., 4] xyxy (broadcast) -> [...]; ``eps`` / ``clamp``
    as ``generalized_box_iou``."""
    return _giou(a, b, eps, clamp)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with both clamped away from 0 by ``eps`` (as the DETR family does)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
