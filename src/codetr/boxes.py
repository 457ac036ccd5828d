"""Box conversions and overlaps. Boxes are [..., 4]; pairwise functions return [N, M]."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou as _tv_box_iou


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
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[N, 4] x [M, 4] xyxy -> [N, M] IoU."""
    return _tv_box_iou(a, b)


def _iou_and_union(a: Tensor, b: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / (union + eps), union


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = 0.0) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019, Alg. 1): IoU - (|C| - |A u B|) / |C|,
    C the smallest enclosing box. [N, 4] x [M, 4] xyxy -> [N, M]. ``eps`` is added to both
    denominators (DINO: 1e-6)."""
    iou, union = _iou_and_union(a, b, eps)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / (enclosing + eps)


def elementwise_generalized_box_iou(a: Tensor, b: Tensor, eps: float = 0.0) -> Tensor:
    """GIoU of matching rows: [N, 4] x [N, 4] xyxy -> [N]; ``eps`` as generalized_box_iou."""
    area_a, area_b = box_area(a), box_area(b)
    inter_wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area_a + area_b - inter
    encl_wh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enclosing = encl_wh[:, 0] * encl_wh[:, 1]
    return inter / (union + eps) - (enclosing - union) / (enclosing + eps)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with both clamped away from 0 by ``eps`` (as the DETR family does)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
