"""Mask assembly (Bolya et al. 2019, Eq. 1): M = sigmoid(P C^T), P [h, w, k] prototypes,
C [n, k] coefficients; then cropping to the boxes and, at inference, upsampling and
thresholding at 0.5."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sanitize_coordinates(x1: Tensor, x2: Tensor, size: int, padding: int = 0) -> tuple[Tensor, Tensor]:
    """Relative coordinates -> absolute in [0, size], ordered, widened by ``padding`` pixels."""
    x1, x2 = x1 * size, x2 * size
    lo, hi = torch.min(x1, x2), torch.max(x1, x2)
    return (lo - padding).clamp(min=0), (hi + padding).clamp(max=size)


def crop_masks(masks: Tensor, boxes: Tensor, padding: int = 1) -> Tensor:
    """Zero everything outside each box. masks [h, w, n], boxes [n, 4] relative xyxy; a pixel
    (x, y) is kept when x1 <= x < x2 and y1 <= y < y2, box sides widened by ``padding``."""
    h, w, _ = masks.shape
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype)[None, :, None]
    rows = torch.arange(h, device=masks.device, dtype=x1.dtype)[:, None, None]
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)     # [h, w, n]
    return masks * inside.to(masks.dtype)


def assemble_masks(prototypes: Tensor, coeffs: Tensor) -> Tensor:
    """prototypes [h, w, k], coeffs [n, k] -> soft masks [h, w, n] in (0, 1)."""
    return torch.sigmoid(prototypes @ coeffs.t())


def final_masks(prototypes: Tensor, coeffs: Tensor, boxes: Tensor, out_hw: tuple[int, int],
                crop: bool = True) -> Tensor:
    """Inference masks: assemble, crop (at prototype resolution), bilinear upsampling to
    ``out_hw``, > 0.5. Returns [n, H, W] bool."""
    masks = assemble_masks(prototypes, coeffs)
    if crop:
        masks = crop_masks(masks, boxes)
    masks = masks.permute(2, 0, 1).contiguous()
    masks = F.interpolate(masks[None], out_hw, mode="bilinear", align_corners=False)[0]
    return masks > 0.5
