"""The deformable transformer of Deformable DETR (Zhu et al., 2021): encoder, decoder with
iterative box refinement, and the two-stage proposal generation.

Token layout: multi-scale maps are flattened level by level, row-major within a level, into
S = sum_l H_l * W_l tokens. Boxes are normalized (cx, cy, w, h) relative to each image's
valid (unpadded) region, the DETR convention.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..boxes import inverse_sigmoid
from ..nn import MultiScaleDeformableAttention


def valid_ratios(mask: Tensor) -> Tensor:
    """[B, H, W] padding mask -> [B, 2] valid fraction (w, h) of the map."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def level_grid(h: int, w: int, device: torch.device) -> Tensor:
    """Pixel-centre coordinates of an h x w map: [h*w, 2] (x, y) in pixels, row-major."""
    y, x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                          torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], -1)


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Each token's own centre, normalized by its level's valid size, then projected to every
    level: [B, S, L, 2]."""
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        grid = level_grid(h, w, ratios.device)  # [HW, 2]
        refs.append(grid[None] / (ratios[:, None, lvl] * ratios.new_tensor([w, h])))
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]


def proposal_pos_embed(proposals: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of unsigmoided boxes [B, N, 4] -> [B, N, 4 * num_feats]."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = proposals.sigmoid() * (2 * math.pi)
    pos = pos[:, :, :, None] / dim_t  # [B, N, 4, F]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)


def encoder_proposals(padding_mask: Tensor, spatial_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """One proposal box per token: centred on the token, side 0.05 * 2^level of the valid image.

    Returns (proposals [B, S, 4] unsigmoided, valid [B, S, 1]); a proposal is invalid when it
    is on padding or any coordinate is outside (0.01, 0.99). Invalid proposals are +inf.
    """
    B = padding_mask.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        mask = padding_mask[:, start:start + h * w].view(B, h, w)
        valid_hw = torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)  # (w, h)
        y, x = torch.meshgrid(torch.linspace(0, h - 1, h, dtype=torch.float32, device=mask.device),
                              torch.linspace(0, w - 1, w, dtype=torch.float32, device=mask.device), indexing="ij")
        grid = torch.stack([x, y], -1)  # [h, w, 2]
        centres = (grid[None] + 0.5) / valid_hw.view(B, 1, 1, 2)
        sizes = torch.full_like(centres, 0.05 * 2.0 ** lvl)
        proposals.append(torch.cat([centres, sizes], -1).view(B, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask[..., None], float("inf"))
    proposals = proposals.masked_fill(~valid, float("inf"))
    return proposals, valid & ~padding_mask[..., None]


def init_transformer_weights(module: nn.Module) -> None:
    """The official init of a deformable transformer: xavier-uniform for every matrix, then each
    deformable attention's own reset (offsets start on a ring of directions)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for m in module.modules():
        if isinstance(m, MultiScaleDeformableAttention):
            m.reset_parameters()


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then FFN; post-norm."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int,
                 num_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                padding_mask: Tensor) -> Tensor:
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the memory, FFN; post-norm.
    Norm names follow the official code: norm2 after self-attention, norm1 after cross-attention."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int,
                 num_points: int) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, padding_mask: Tensor, self_attn_mask: Tensor | None = None) -> Tensor:
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout(attn))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask)
        tgt = self.norm1(tgt + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class DeformableTransformer(nn.Module):
    """Encoder + decoder. With ``two_stage`` the decoder's queries come from the top-scoring
    encoder proposals (Sec. 4.2); otherwise from learned query embeddings.

    The class/box heads are owned by the detector and passed to ``forward``: with box
    refinement each decoder layer refines the reference boxes with its own box head, and in
    two-stage mode the heads at index ``num_decoder_layers`` score the encoder proposals.
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 1024, dropout: float = 0.1,
                 num_levels: int = 4, enc_points: int = 4, dec_points: int = 4,
                 two_stage: bool = False, num_queries: int = 300, class_aware_proposals: bool = False) -> None:
        super().__init__()
        self.dim, self.two_stage, self.num_queries = dim, two_stage, num_queries
        self.class_aware_proposals = class_aware_proposals
        self.encoder = nn.ModuleList(EncoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, enc_points)
                                     for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, dec_points)
                                     for _ in range(num_decoder_layers))
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        if two_stage:
            self.enc_output = nn.Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
            self.pos_trans = nn.Linear(2 * dim, 2 * dim)
            self.pos_trans_norm = nn.LayerNorm(2 * dim)
        else:
            self.reference_points = nn.Linear(dim, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_transformer_weights(self)
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def encode(self, srcs: list[Tensor], masks: list[Tensor], pos: list[Tensor]) -> dict[str, Tensor]:
        """Flatten the levels and run the encoder. Returns memory [B, S, C], padding mask [B, S],
        spatial shapes [L, 2], valid ratios [B, L, 2]."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)          # [B, S, C]
        mask = torch.cat([m.flatten(1) for m in masks], 1)                          # [B, S]
        lvl_pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                             for i, p in enumerate(pos)], 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
        ratios = torch.stack([valid_ratios(m) for m in masks], 1)                  # [B, L, 2]
        refs = encoder_reference_points(shapes, ratios)
        for layer in self.encoder:
            src = layer(src, lvl_pos, refs, spatial_shapes, mask)
        return {"memory": src, "mask": mask, "spatial_shapes": spatial_shapes, "valid_ratios": ratios}

    def select_proposals(self, enc: dict[str, Tensor], class_head: nn.Module, box_head: nn.Module) -> dict[str, Tensor]:
        """Two-stage: score every encoder token, keep the top ``num_queries`` as reference boxes
        (all S tokens, hence S queries, when an image has fewer: very small or elongated)."""
        shapes = [tuple(s) for s in enc["spatial_shapes"].tolist()]
        proposals, valid = encoder_proposals(enc["mask"], shapes)
        memory = enc["memory"].masked_fill(~valid, 0.0)
        memory = self.enc_output_norm(self.enc_output(memory))
        logits = class_head(memory)                                                  # [B, S, K]
        coords_unact = box_head(memory) + proposals                                  # [B, S, 4]
        # official Deformable DETR ranks by the first (class-agnostic) logit; class-aware: best class
        scores = logits.max(-1)[0] if self.class_aware_proposals else logits[..., 0]
        topk = torch.topk(scores, min(self.num_queries, scores.shape[1]), dim=1)[1]  # [B, Q]
        ref_unact = torch.gather(coords_unact, 1, topk[..., None].expand(-1, -1, 4)).detach()
        query_pos, tgt = self.pos_trans_norm(self.pos_trans(
            proposal_pos_embed(ref_unact, num_feats=self.dim // 2))).split(self.dim, dim=2)
        return {"enc_logits": logits, "enc_coords_unact": coords_unact, "output_proposals": proposals,
                "selection_scores": scores, "topk": topk, "reference": ref_unact.sigmoid(),
                "tgt": tgt, "query_pos": query_pos}

    def decode(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, enc: dict[str, Tensor],
               box_heads: nn.ModuleList | None) -> tuple[Tensor, Tensor]:
        """Run the decoder. Returns hidden states [L_dec, B, Q, C] and the reference boxes after
        each layer [L_dec, B, Q, 2 or 4] (detached, as official)."""
        ratios = enc["valid_ratios"]
        hs, refs = [], []
        for i, layer in enumerate(self.decoder):
            scale = torch.cat([ratios, ratios], -1) if reference.shape[-1] == 4 else ratios
            ref_input = reference[:, :, None] * scale[:, None]                       # [B, Q, L, 2|4]
            tgt = layer(tgt, query_pos, ref_input, enc["memory"], enc["spatial_shapes"], enc["mask"])
            if box_heads is not None:  # iterative box refinement
                delta = box_heads[i](tgt)
                if reference.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference)).sigmoid()
                else:
                    new_ref = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
                reference = new_ref.detach()
            hs.append(tgt)
            refs.append(reference)
        return torch.stack(hs), torch.stack(refs)
