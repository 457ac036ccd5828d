"""Losses of the dense heads, element-wise; callers sum and normalise. (The focal losses, shared
with the other families, live in ``codetr.losses``.)"""
from __future__ import annotations

import torch
from torch import Tensor


def ltrb_giou_loss(pred: Tensor, target: Tensor, eps: float = torch.finfo(torch.float32).eps) -> Tensor:
    """1 - GIoU of boxes given as ltrb distances from the same point: [N, 4] x [N, 4] -> [N].
    Degenerate predictions (a side of length <= 0) have area 0, as in cvpods' ``iou_loss``."""
    pred_area = (pred[:, 0] + pred[:, 2]).clamp(min=0) * (pred[:, 1] + pred[:, 3]).clamp(min=0)
    target_area = (target[:, 0] + target[:, 2]).clamp(min=0) * (target[:, 1] + target[:, 3]).clamp(min=0)
    inter_w = (torch.min(pred[:, 2], target[:, 2]) + torch.min(pred[:, 0], target[:, 0])).clamp(min=0)
    inter_h = (torch.min(pred[:, 3], target[:, 3]) + torch.min(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = pred_area + target_area - inter
    iou = inter / union.clamp(min=eps)
    enclosing = (torch.max(pred[:, 2], target[:, 2]) + torch.max(pred[:, 0], target[:, 0])) * \
        (torch.max(pred[:, 3], target[:, 3]) + torch.max(pred[:, 1], target[:, 1]))
    return 1 - (iou - (enclosing - union) / enclosing.clamp(min=eps))
