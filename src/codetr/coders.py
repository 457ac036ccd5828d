"""Delta-XYWH box coder (R-CNN, Girshick et al. 2014, appendix C), mmdet 2.25.3 semantics.

``encode``: for a proposal ``p`` and its target ``g`` (xyxy), with centres and sizes
``(x, y, w, h)``: ``d = ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph))``, then
``(d - means) / stds``. ``decode`` inverts it with ``dw, dh`` clamped to ``|log(wh_ratio_clip)|``
and, when ``clip_border`` and ``max_shape = (h, w)`` are given, x clamped to ``[0, w]`` and y to
``[0, h]``. Deltas may hold several classes, ``[N, 4K]`` against rois ``[N, 4]``.
(The SSD/YOLACT and FCOS coders live in ``codetr.boxes``.)
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

_UNIT = (1.0, 1.0, 1.0, 1.0)
_ZERO = (0.0, 0.0, 0.0, 0.0)


def _centre_size(b: Tensor) -> tuple[Tensor, Tensor]:
    """[..., 4] xyxy -> (centre [..., 2], size [..., 2])."""
    return (b[..., :2] + b[..., 2:]) * 0.5, b[..., 2:] - b[..., :2]


def delta_xywh_encode(proposals: Tensor, gt: Tensor, means: Sequence[float] = _ZERO,
                      stds: Sequence[float] = _UNIT) -> Tensor:
    """proposals, gt [..., 4] xyxy (same shape) -> normalised deltas [..., 4] (dx, dy, dw, dh),
    computed in float32."""
    if proposals.shape != gt.shape:
        raise ValueError(f"proposals {tuple(proposals.shape)} and gt {tuple(gt.shape)} differ")
    pc, ps = _centre_size(proposals.float())
    gc, gs = _centre_size(gt.float())
    deltas = torch.cat([(gc - pc) / ps, torch.log(gs / ps)], dim=-1)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def delta_xywh_decode(rois: Tensor, deltas: Tensor, means: Sequence[float] = _ZERO,
                      stds: Sequence[float] = _UNIT, max_shape: Sequence[int] | None = None,
                      wh_ratio_clip: float = 16 / 1000, clip_border: bool = True) -> Tensor:
    """rois [N, 4] xyxy, deltas [N, 4K] -> boxes [N, 4K] xyxy; ``max_shape`` (h, w[, c])."""
    n, k = deltas.shape[0], deltas.shape[1] // 4
    if n == 0:
        return deltas
    d = deltas.reshape(n, k, 4) * deltas.new_tensor(stds) + deltas.new_tensor(means)  # [N, K, 4]
    pc, ps = _centre_size(rois[:, None, :])  # [N, 1, 2] each
    limit = abs(math.log(wh_ratio_clip))
    centre = pc + ps * d[..., :2]
    size = ps * d[..., 2:].clamp(min=-limit, max=limit).exp()
    boxes = torch.cat([centre - size * 0.5, centre + size * 0.5], dim=-1)  # [N, K, 4]
    if clip_border and max_shape is not None:
        h, w = max_shape[0], max_shape[1]
        upper = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), upper)
    return boxes.reshape(n, 4 * k)
