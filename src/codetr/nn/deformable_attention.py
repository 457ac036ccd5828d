"""The multi-scale deformable attention module (Zhu et al., Deformable DETR, Sec. 4.1)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import host_to_device
from ..ops.msda import exporting, ms_deform_attn


@dataclass(frozen=True)
class LevelLayout:
    """Multi-scale maps flattened into one token sequence, level after level, row-major within a
    level: S = sum_l H_l * W_l tokens. Built once per forward from the maps' shapes (Python
    ints), with the one device table the kernels need, so no attention call reads a shape back
    from the device or copies one to it."""

    shapes: list[tuple[int, int]]  # (H_l, W_l)
    hw: Tensor                     # [L, 2] int32 (H_l, W_l) on the maps' device (the fused MSDA kernel's table)
    wh: Tensor                     # [L, 2] int32 (W_l, H_l): a pixel offset over this is a normalized one

    @classmethod
    def of(cls, shapes: list[tuple[int, int]], device: torch.device) -> LevelLayout:
        if exporting():  # traced sizes: kept, and the table computed from them in the graph
            hw = torch.stack([torch.stack([torch.scalar_tensor(x, dtype=torch.int32, device=device) for x in size])
                              for size in shapes])
            return cls(list(shapes), hw, hw.flip(-1))
        shapes = [(int(h), int(w)) for h, w in shapes]
        hw = host_to_device(shapes, device)
        return cls(shapes, hw, hw.flip(-1))

    @property
    def sizes(self) -> list[int]:
        """Tokens per level, H_l * W_l."""
        return [h * w for h, w in self.shapes]

    @property
    def starts(self) -> list[int]:
        """Index of each level's first token."""
        return list(accumulate(self.sizes[:-1], initial=0))


def ring_offsets(num_heads: int, num_levels: int, num_points: int) -> Tensor:
    """Initial sampling offsets [M, L, P, 2] in pixels, as the official init: head m looks
    along the angle 2 pi m / M and its k-th point (k = 1..P) lies where that ray crosses the
    square ring of L-infinity radius k around the reference point, on every level."""
    angle = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    ray = torch.stack([angle.cos(), angle.sin()], -1)                      # [M, 2], unit L2 length
    ray = ray / ray.abs().amax(-1, keepdim=True)                           # unit L-infinity length
    radius = torch.arange(1, num_points + 1, dtype=torch.float32)          # [P]
    return (ray[:, None, None, :] * radius[:, None]).expand(-1, num_levels, -1, -1)


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` sampled locations per head and level around its
    reference point. Reference points are (x, y) in [0, 1] of each level's valid region, or
    boxes (cx, cy, w, h), in which case offsets are scaled by the box size (Eq. in App. A.4)."""

    def __init__(self, embed_dim: int = 256, num_levels: int = 4, num_heads: int = 8,
                 num_points: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_levels = embed_dim, num_levels
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start at ``ring_offsets`` whatever the query; attention starts uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring_offsets(self.num_heads, self.num_levels, self.num_points).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor, levels: LevelLayout,
                padding_mask: Tensor | None = None) -> Tensor:
        """
        query:            [B, Q, C]
        reference_points: [B, Q, L, 2] (x, y) or [B, Q, L, 4] (cx, cy, w, h), normalized
        value:            [B, S, C] flattened multi-scale features laid out as ``levels``
        padding_mask:     [B, S] True on padding
        returns           [B, Q, C]
        """
        return self.attend(query, reference_points, self.project_value(value, padding_mask), levels)

    def project_value(self, value: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """[B, S, C] -> the per-head value table [B, S, M, C / M], zero on padding. On CPU its
        memory is head-major ([B, M, S, C / M]), the rows the CPU backends read: the attention
        calls that share the table (the encoder's query chunks) then share that one copy."""
        B, S, _ = value.shape
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, S, self.num_heads, self.embed_dim // self.num_heads)
        return v.transpose(1, 2).contiguous().transpose(1, 2) if v.device.type == "cpu" else v

    def attend(self, query: Tensor, reference_points: Tensor, values: Tensor, levels: LevelLayout) -> Tensor:
        """``forward`` on the value table of ``project_value``: each query's rows are its own, so
        queries can be split into chunks that share one table."""
        B, Q, _ = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Q, M, L * P), -1).view(B, Q, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l). Both terms broadcast over
            # the last L*P*2 numbers (~10x faster on CPU than over [..., L, P, 2] with L, P, 2 apart)
            scale = levels.wh[:, None, :].expand(L, P, 2).reshape(L * P * 2)
            start = reference_points[:, :, None, :, None, :].expand(B, Q, 1, L, P, 2).reshape(B, Q, 1, L * P * 2)
            locations = (offsets.view(B, Q, M, L * P * 2) / scale + start).view(B, Q, M, L, P, 2)
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got {reference_points.shape[-1]}")
        return self.output_proj(ms_deform_attn(values, levels.shapes, locations, weights, levels.hw))
