"""Feed-forward heads, the decoder queries' self-attention and positional encodings."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class QuerySelfAttention(nn.Module):
    """Multi-head attention among a decoder's queries, batch first, with the parameters of
    ``nn.MultiheadAttention`` (``in_proj_weight`` [3C, C] / ``in_proj_bias`` packed q, k, v;
    ``out_proj``), so official checkpoints load as they are. ``nn.MultiheadAttention`` leaves
    its fused path under autocast or autograd and projects [Q, B, C] transposed views: there
    ``F.linear`` cannot fold the batch and expands the weight to a [Q, C, C] batched product
    (DINO-R50 bf16 eval of two images: ~1 s of 1.6). Here every projection is one matrix
    product over the B * Q rows; q and k (the same input) share one."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s init."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query_key: Tensor, value: Tensor, blocked: Tensor | None = None) -> Tensor:
        """query_key (queries and keys, the same tokens), value [B, Q, C]; ``blocked`` [Q, Q]
        True where query i may not attend to key j -> [B, Q, C]."""
        B, Q, C = value.shape
        qk = F.linear(query_key, self.in_proj_weight[:2 * C], self.in_proj_bias[:2 * C])
        v = F.linear(value, self.in_proj_weight[2 * C:], self.in_proj_bias[2 * C:])

        def heads(x: Tensor) -> Tensor:                                    # [B, Q, C] -> [B, H, Q, C / H]
            return x.view(B, Q, self.num_heads, C // self.num_heads).transpose(1, 2)

        mask = None
        if blocked is not None:   # additive, as nn.MultiheadAttention turns a boolean mask
            mask = torch.zeros(blocked.shape, dtype=v.dtype, device=v.device).masked_fill_(blocked, float("-inf"))
        out = F.scaled_dot_product_attention(heads(qk[..., :C]), heads(qk[..., C:]), heads(v), mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, Q, C))


def sine_embed(coords: Tensor, num_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi,
               order: Sequence[int] | None = None) -> Tensor:
    """The sine/cosine encoding of scalar coordinates (Vaswani et al., Sec. 3.5; DETR's 2-D form).

    coords [..., N] (normalized, e.g. in [0, 1]) -> [..., N * num_feats], coordinate after
    coordinate (in ``order``, a permutation of the N coordinates, if given). With
    a = scale * c, coordinate c gets num_feats / 2 frequencies w_j = temperature^(-2j / num_feats)
    and, for each, the pair (sin(a w_j), cos(a w_j)).

    Users: pixel positions (``SinePositionEncoding``), two-stage proposal boxes (cx, cy, w, h)
    and DINO's anchor boxes (ordered y, x, w, h).
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even (sin/cos pairs), got {num_feats}")
    if order is not None:
        coords = torch.stack([coords[..., i] for i in order], -1)   # no index tensor: nothing copied to the device
    exponent = 2 * torch.arange(num_feats // 2, dtype=torch.float32, device=coords.device) / num_feats
    wavelength = temperature ** exponent                                       # [F/2]
    angle = (coords * scale)[..., None] / wavelength                           # [..., N, F/2]
    return torch.stack((angle.sin(), angle.cos()), -1).flatten(-3)             # [..., N * F]


class SinePositionEncoding(nn.Module):
    """2-D sine/cosine encoding of pixel positions (DETR), normalized to [0, scale] over each
    image's valid region. Output [B, 2 * num_feats, H, W]: the y half first, then x.

    DINO uses separate temperatures for y and x, hence ``temperature_h`` / ``temperature_w``,
    and no half-pixel shift of the cumulative counts (``offset`` 0; Deformable DETR: 0.5).
    """

    def __init__(self, num_feats: int = 128, temperature_h: float = 10000.0,
                 temperature_w: float = 10000.0, scale: float = 2 * math.pi, offset: float = 0.5) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.offset = offset
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask: [B, H, W] bool, True on padding."""
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)  # row count within the valid region
        x = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y = (y - self.offset) / (y[:, -1:, :] + eps)
        x = (x - self.offset) / (x[:, :, -1:] + eps)
        pos = torch.cat((sine_embed(y[..., None], self.num_feats, self.temperature_h, self.scale),
                         sine_embed(x[..., None], self.num_feats, self.temperature_w, self.scale)), dim=3)
        return pos.permute(0, 3, 1, 2)                                         # [B, 2F, H, W]
