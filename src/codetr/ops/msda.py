"""Multi-scale deformable attention core (Zhu et al., Deformable DETR, Eq. 3).

For each query q, head m, level l and point k the value map of level l is sampled bilinearly
at ``sampling_locations[q, m, l, k]`` and the samples are summed with
``attention_weights[q, m, l, k]``:

    out[q, m] = sum_l sum_k  A[q, m, l, k] * V_l[m](p[q, m, l, k])

Locations are normalized to [0, 1] over each level's map (0 = left/top edge of the first
pixel, 1 = right/bottom edge of the last), bilinear with zero padding outside the map, which is
what ``grid_sample(align_corners=False, padding_mode='zeros')`` computes. This plain-PyTorch
version is the reference every faster backend is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor | list[tuple[int, int]],
                   sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """
    value:               [B, S, M, D]   S = sum_l H_l * W_l tokens, M heads of D channels
    spatial_shapes:      [L, 2]         (H_l, W_l) per level, tokens flattened level by level
    sampling_locations:  [B, Q, M, L, P, 2]  (x, y) in [0, 1]
    attention_weights:   [B, Q, M, L, P]
    returns:             [B, Q, M * D]
    """
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # [B*M, D, Q, P]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B, Q, M, L, P] -> [B*M, 1, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Q]
    return out.view(B, M * D, Q).transpose(1, 2).contiguous()
