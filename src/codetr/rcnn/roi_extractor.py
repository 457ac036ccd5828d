"""Multi-level RoI feature extraction (FPN, Lin et al. 2017, Eq. 1), mmdet 2.25.3's
``SingleRoIExtractor`` with mmcv's ``RoIAlign(aligned=True)``.

Each RoI ``(b, x1, y1, x2, y2)`` (input pixels) reads ONE level:

    level = clamp(floor(log2(sqrt(w * h) / finest_scale + 1e-6)), 0, L - 1)

(``finest_scale`` 56: RoIs under 112 px on a side read level 0, 112-224 level 1, ...; Co-DETR's
Co-Deformable-DETR config uses 112). That level is pooled with RoIAlign (Mask R-CNN, He et al.
2017) on an ``output_size`` x ``output_size`` grid, ``spatial_scale = 1 / stride``, half-pixel
aligned, adaptive sampling (``sampling_ratio=0``): ``torchvision.ops.roi_align`` with these
arguments equals mmcv's kernel bit for bit. Only the first ``len(strides)`` feature maps are used.

torchvision's CPU RoIAlign runs on one thread; on CPU the RoIs of a level are split over
``torch.get_num_threads()`` Python threads (the op releases the GIL), which gives the same
values: each RoI is pooled on its own (adaptive sampling makes large RoIs costly: ~12% of a
Faster R-CNN R50 inference at 800 x 1333).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align


MIN_ROIS_PER_THREAD = 32  # below this, one call is faster than a thread hand-off


@lru_cache(maxsize=None)
def _pool_of(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="codetr-roi-align")


def roi_levels(rois: Tensor, finest_scale: float, num_levels: int) -> Tensor:
    """rois [N, 5] (batch index, x1, y1, x2, y2) -> level of each RoI [N] int64 (module
    docstring). Negative areas (inverted boxes) count as 0 rather than NaN, i.e. level 0."""
    area = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).clamp(min=0)  # [N]
    level = torch.floor(torch.log2(torch.sqrt(area) / finest_scale + 1e-6))
    return level.clamp(min=0, max=num_levels - 1).long()


class RoIExtractor(nn.Module):
    """Pools each RoI from its FPN level: feats per level [B, C, H_l, W_l], rois [N, 5] ->
    [N, C, S, S] float32 (S = ``output_size``). No parameters.

    Args: ``strides`` of the levels used (finest first; extra maps passed in are ignored),
    ``output_size``, ``finest_scale``, ``sampling_ratio`` (0 = adaptive, mmcv's default here).
    """

    def __init__(self, strides: Sequence[int], output_size: int = 7, finest_scale: float = 56,
                 sampling_ratio: int = 0) -> None:
        super().__init__()
        if not strides:
            raise ValueError("RoIExtractor needs at least one feature stride")
        self.strides = tuple(int(s) for s in strides)
        self.output_size = int(output_size)
        self.finest_scale = float(finest_scale)
        self.sampling_ratio = int(sampling_ratio)

    @property
    def num_inputs(self) -> int:
        return len(self.strides)

    def pool(self, feat: Tensor, rois: Tensor, stride: int) -> Tensor:
        """RoIAlign of rois [n, 5] on one map [B, C, H, W] -> [n, C, S, S], in float32 (mmdet's
        ``force_fp32``: low-precision box coordinates would move the sampling points)."""
        feat, rois = feat.float().contiguous(), rois.float()  # the kernel reads NCHW: one copy, not one per thread
        workers = min(torch.get_num_threads(), len(rois) // MIN_ROIS_PER_THREAD)
        if feat.device.type != "cpu" or workers < 2:
            return self._roi_align(feat, rois, stride, torch.is_grad_enabled())
        grad = torch.is_grad_enabled()  # thread-local: handed to the workers
        parts = _pool_of(workers).map(lambda r: self._roi_align(feat, r, stride, grad), rois.chunk(workers))
        return torch.cat(list(parts))

    def _roi_align(self, feat: Tensor, rois: Tensor, stride: int, grad: bool) -> Tensor:
        with torch.set_grad_enabled(grad):
            return roi_align(feat, rois, self.output_size, spatial_scale=1.0 / stride,
                             sampling_ratio=self.sampling_ratio, aligned=True)

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        if len(feats) < self.num_inputs:
            raise ValueError(f"{len(feats)} feature maps for an extractor of {self.num_inputs} strides")
        feats = list(feats[:self.num_inputs])
        c, s = feats[0].shape[1], self.output_size
        out = feats[0].new_zeros(rois.shape[0], c, s, s, dtype=torch.float32)  # [N, C, S, S]
        if self.num_inputs == 1:
            return self.pool(feats[0], rois, self.strides[0]) if len(rois) else out
        levels = roi_levels(rois, self.finest_scale, self.num_inputs)  # [N]
        for lvl, (feat, stride) in enumerate(zip(feats, self.strides)):
            members = torch.nonzero(levels == lvl).reshape(-1)  # [n_l]
            if members.numel():
                out = out.index_put((members,), self.pool(feat, rois[members], stride))
            else:  # keep every level in the graph (mmdet's 0 * sum), value unchanged
                out = out + feat.sum() * 0.0
        return out
