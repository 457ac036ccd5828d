"""DINO's deformable transformer (Zhang et al., ICLR 2023): the Deformable DETR encoder,
mixed query selection and a decoder whose queries are 4-d anchor boxes (DAB-DETR), refined
layer by layer with look-forward-twice.

Shapes: B images, S tokens (all levels flattened, see ``transformer.py``), Q decoder queries
(denoising queries first, then ``num_queries`` matching queries, or S when an image has fewer
tokens), C = ``dim``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..boxes import inverse_sigmoid
from ..nn import MLP
from .transformer import (DecoderLayer, DeformableTransformer, EncoderLayer, encoder_proposals,
                          init_transformer_weights)

# DINO's inverse sigmoid clamps at 1e-3 (Deformable DETR: 1e-5); it matters for boxes that
# touch the image border, e.g. noised denoising boxes clamped to [0, 1].
DINO_EPS = 1e-3


def box_sine_embed(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of sigmoid boxes [B, Q, 4] (cx, cy, w, h) -> [B, Q, 4 * num_feats], ordered
    (y, x, w, h) as official. Official hard-codes num_feats = 128 (hidden 256); here dim // 2."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = boxes[..., [1, 0, 2, 3], None] * (2 * math.pi) / dim_t                  # [B, Q, 4, F]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)


class DINOTransformer(nn.Module):
    """Encoder + query selection + decoder. Heads are owned by the detector and passed in."""

    # flatten levels, add level embeddings, run the encoder (uses .encoder and .level_embed)
    encode = DeformableTransformer.encode

    def __init__(self, dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.0,
                 num_levels: int = 4, enc_points: int = 4, dec_points: int = 4, num_queries: int = 900,
                 detached_boxes_out: bool = False) -> None:
        super().__init__()
        self.dim, self.num_queries = dim, num_queries
        self.detached_boxes_out = detached_boxes_out
        self.encoder = nn.ModuleList(EncoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, enc_points)
                                     for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, dec_points)
                                     for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)   # sine(4-d box) -> query position
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.tgt_embed = nn.Embedding(num_queries, dim)    # learned content queries
        self.enc_output = nn.Linear(dim, dim)
        self.enc_output_norm = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_transformer_weights(self)
        nn.init.normal_(self.level_embed)

    def select_queries(self, enc: dict[str, Tensor], class_head: nn.Module, box_head: nn.Module) -> dict[str, Tensor]:
        """Mixed query selection (Sec. 3.3): the top ``num_queries`` encoder tokens by their best
        class score give the anchor boxes; the content queries are learned (``tgt_embed``).
        An image with fewer tokens S (very small or elongated) selects all of them and gets
        Q = S matching queries (the first S content queries)."""
        shapes = [tuple(s) for s in enc["spatial_shapes"].tolist()]
        proposals, valid = encoder_proposals(enc["mask"], shapes)                   # [B, S, 4]
        memory = self.enc_output_norm(self.enc_output(enc["memory"].masked_fill(~valid, 0.0)))
        logits = class_head(memory)                                                  # [B, S, K]
        coords_unact = box_head(memory) + proposals                                  # [B, S, 4]
        scores = logits.max(-1)[0]                                                   # [B, S]
        topk = torch.topk(scores, min(self.num_queries, scores.shape[1]), dim=1)[1]  # [B, Q]
        pick4 = topk[..., None].expand(-1, -1, 4)
        B = memory.shape[0]
        return {"enc_logits": logits, "output_proposals": proposals, "selection_scores": scores, "topk": topk,
                "ref_unact": torch.gather(coords_unact, 1, pick4),                  # not detached (interm loss)
                "memory_topk": torch.gather(memory, 1, topk[..., None].expand(-1, -1, self.dim)),
                "init_box_proposal": torch.gather(proposals, 1, pick4).sigmoid(),
                "tgt": self.tgt_embed.weight[None, : topk.shape[1]].expand(B, -1, -1)}

    def decode(self, tgt: Tensor, ref_unact: Tensor, enc: dict[str, Tensor], box_heads: nn.ModuleList,
               attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tgt [B, Q, C], ref_unact [B, Q, 4] unsigmoided anchors. Returns the normed hidden states
        [L, B, Q, C] and references [L + 1, B, Q, 4]: index 0 the input anchors, i + 1 the box
        refined by layer i, kept attached to layer i's graph (look forward twice, Sec. 3.4)
        while the next layer receives it detached."""
        ratios = torch.cat([enc["valid_ratios"], enc["valid_ratios"]], -1)          # [B, L, 4]
        reference = ref_unact.sigmoid()
        hs, refs = [], [reference]
        for layer, box_head in zip(self.decoder, box_heads):
            ref_input = reference[:, :, None] * ratios[:, None]                      # [B, Q, L, 4]
            query_pos = self.ref_point_head(box_sine_embed(ref_input[:, :, 0], self.dim // 2))
            tgt = layer(tgt, query_pos, ref_input, enc["memory"], enc["spatial_shapes"], enc["mask"], attn_mask)
            new_reference = (box_head(tgt) + inverse_sigmoid(reference, DINO_EPS)).sigmoid()
            reference = new_reference.detach()
            refs.append(reference if self.detached_boxes_out else new_reference)
            hs.append(self.decoder_norm(tgt))
        return torch.stack(hs), torch.stack(refs)
