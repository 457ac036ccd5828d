"""Box coders: boxes to regression targets and back. The one home of each.

* ``delta_xywh_encode`` / ``delta_xywh_decode`` (R-CNN, Girshick et al. 2014, appendix C),
  mmdet 2.25.3 semantics: for a proposal ``p`` and its target ``g`` (xyxy), with centres and
  sizes ``(x, y, w, h)``: ``d = ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph))``,
  then ``(d - means) / stds``. ``decode`` inverts it with ``dw, dh`` clamped to
  ``|log(wh_ratio_clip)|`` and, when ``clip_border`` and ``max_shape = (h, w)`` are given, x
  clamped to ``[0, w]`` and y to ``[0, h]``. Deltas may hold several classes, ``[N, 4K]``
  against rois ``[N, 4]``.
* ``ssd_encode`` / ``ssd_decode``: offsets from a prior (SSD, Liu et al. 2016, Eq. 2; YOLACT),
  the case of delta-xywh with ``stds = (v0, v0, v1, v1)``, zero means, no clamp, no clipping,
  the prior given as cxcywh. The official code rounds differently in the last bits (it keeps the
  prior's centre and size, divides by ``v0 * wh_p``, puts the far corner at ``top_left + size``);
  YOLACT's golden tests (tests/yolact: detections, matching, losses) hold at their tolerances.
* ``ltrb_encode`` / ``ltrb_decode``: distances from a point to the four sides (FCOS, DeFCN).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .boxes import cxcywh_to_xyxy

_UNIT = (1.0, 1.0, 1.0, 1.0)
_ZERO = (0.0, 0.0, 0.0, 0.0)
SSD_VARIANCES = (0.1, 0.2)


# -- delta-xywh (R-CNN, mmdet) ------------------------------------------------------------

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


# -- SSD / YOLACT ------------------------------------------------------------------------

def ssd_encode(boxes: Tensor, priors: Tensor, variances: tuple[float, float] = SSD_VARIANCES) -> Tensor:
    """boxes [..., 4] xyxy, priors [..., 4] cxcywh (same shape and units) -> offsets [..., 4]:
    ``(c - c_p) / (v0 * wh_p)`` for the centre, ``log(wh / wh_p) / v1`` for the size, computed
    in float32."""
    v0, v1 = variances
    return delta_xywh_encode(cxcywh_to_xyxy(priors), boxes, stds=(v0, v0, v1, v1))


def ssd_decode(offsets: Tensor, priors: Tensor, variances: tuple[float, float] = SSD_VARIANCES) -> Tensor:
    """Inverse of ``ssd_encode``: offsets [..., 4], priors [..., 4] cxcywh (broadcast to the
    offsets) -> boxes [..., 4] xyxy, sizes not clamped, boxes not clipped."""
    v0, v1 = variances
    rois = cxcywh_to_xyxy(priors).expand(offsets.shape).reshape(-1, 4)  # [N, 4]
    boxes = delta_xywh_decode(rois, offsets.reshape(-1, 4), stds=(v0, v0, v1, v1),
                              wh_ratio_clip=math.inf, clip_border=False)  # |log(inf)|: no clamp
    return boxes.reshape(offsets.shape)


# -- ltrb (FCOS, DeFCN) -------------------------------------------------------------------

def ltrb_encode(points: Tensor, boxes: Tensor) -> Tensor:
    """points [..., 2] (x, y), boxes [..., 4] xyxy (broadcast) -> [..., 4] (x - x0, y - y0, x1 - x, y1 - y)."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def ltrb_decode(points: Tensor, deltas: Tensor) -> Tensor:
    """Inverse of ``ltrb_encode``: points [..., 2], deltas [..., 4] -> xyxy [..., 4]."""
    return torch.cat([points - deltas[..., :2], points + deltas[..., 2:]], dim=-1)
