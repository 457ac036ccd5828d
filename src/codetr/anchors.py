"""mmdet-style anchor grids (mmdet 2.25.3 ``AnchorGenerator``, the RPN and ATSS priors).

Per level ``l`` with stride ``s``: the base anchors are centred on ``center_offset * s`` and
have, for ratio ``r`` (= h / w) and scale ``k``, the size ``w = s * k / sqrt(r)``,
``h = s * k * sqrt(r)``; base anchor ``a = i_ratio * n_scales + i_scale`` (scale-major).
The grid shifts them by ``(x * s, y * s)`` and lists them position-major, anchor-minor:
row ``(y * W + x) * A + a``. Octave scales ``octave_base_scale * 2**(i / scales_per_octave)``
are computed in float64 and rounded once to float32, as mmdet does. torchvision's
``AnchorGenerator`` rounds its boxes and centres differently and is not equivalent.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    """Multi-level anchors; ``base_size = stride`` on every level (mmdet's default)."""

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float],
        scales: Sequence[float] | None = None,
        octave_base_scale: int | None = None,
        scales_per_octave: int | None = None,
        center_offset: float = 0.0,
    ) -> None:
        if (scales is None) == (octave_base_scale is None or scales_per_octave is None):
            raise ValueError("give either scales or octave_base_scale with scales_per_octave")
        if not 0.0 <= center_offset <= 1.0:
            raise ValueError(f"center_offset must be in [0, 1], got {center_offset}")
        if scales is None:  # float64 products, one rounding to float32
            scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        self.strides = [int(s) for s in strides]
        self.ratios = torch.tensor([float(r) for r in ratios], dtype=torch.float32)
        self.scales = torch.tensor([float(k) for k in scales], dtype=torch.float32)
        self.center_offset = float(center_offset)
        self.base_anchors = [self._base_anchors(s) for s in self.strides]  # each [A, 4]

    @property
    def num_base_anchors(self) -> list[int]:
        return [len(b) for b in self.base_anchors]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def _base_anchors(self, stride: int) -> Tensor:
        """[A, 4] xyxy around (offset * stride, offset * stride), A = ratios x scales."""
        h_ratio = self.ratios.sqrt()  # [R]
        w_ratio = 1 / h_ratio
        ws = (stride * w_ratio[:, None] * self.scales[None, :]).reshape(-1)  # [R*S], scale-major
        hs = (stride * h_ratio[:, None] * self.scales[None, :]).reshape(-1)
        c = self.center_offset * stride
        return torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], dim=-1)

    def _level_anchors(self, level: int, size: tuple[int, int], device) -> Tensor:
        """[H*W*A, 4]: base anchors [A, 4] shifted to every grid cell, position-major."""
        h, w = size
        s = self.strides[level]
        xs = torch.arange(w, device=device).to(torch.float32) * s  # [W]
        ys = torch.arange(h, device=device).to(torch.float32) * s  # [H]
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each, row-major
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [HW, 1, 4]
        return (self.base_anchors[level].to(device)[None] + shifts).reshape(-1, 4)

    def grid_anchors(self, featmap_sizes: list[tuple[int, int]], device) -> list[Tensor]:
        """Per level ``[H_l * W_l * A_l, 4]`` xyxy anchors in input pixels."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"{len(featmap_sizes)} feature maps for {self.num_levels} anchor levels")
        return [self._level_anchors(i, tuple(hw), device) for i, hw in enumerate(featmap_sizes)]

    def valid_flags(self, featmap_sizes, valid_hw: tuple[int, int], device) -> list[Tensor]:
        """Per level ``[H_l * W_l * A_l]`` bool: the anchor's cell lies in the first
        ``min(ceil(h / s), H_l)`` rows and ``min(ceil(w / s), W_l)`` columns, ``(h, w) =
        valid_hw`` (mmdet passes the image's ``pad_shape``)."""
        h, w = valid_hw[:2]
        flags = []
        for s, a, (fh, fw) in zip(self.strides, self.num_base_anchors, featmap_sizes):
            rows = torch.arange(fh, device=device) < min(math.ceil(h / s), fh)  # [H]
            cols = torch.arange(fw, device=device) < min(math.ceil(w / s), fw)  # [W]
            cell = (rows[:, None] & cols[None, :]).reshape(-1, 1)  # [HW, 1]
            flags.append(cell.expand(-1, a).reshape(-1))
        return flags
