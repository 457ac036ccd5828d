"""The multi-scale deformable attention module (Zhu et al., Deformable DETR, Sec. 4.1)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.msda import ms_deform_attn


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
        # Offsets start on a ring of directions, one per head, k pixels out for point k.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: Tensor,
                padding_mask: Tensor | None = None) -> Tensor:
        """
        query:            [B, Q, C]
        reference_points: [B, Q, L, 2] (x, y) or [B, Q, L, 4] (cx, cy, w, h), normalized
        value:            [B, S, C] flattened multi-scale features
        spatial_shapes:   [L, 2] (H_l, W_l)
        padding_mask:     [B, S] True on padding
        returns           [B, Q, C]
        """
        B, Q, _ = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, value.shape[1], M, self.embed_dim // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Q, M, L * P), -1).view(B, Q, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l)
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got {reference_points.shape[-1]}")
        return self.output_proj(ms_deform_attn(v, spatial_shapes, locations, weights))
