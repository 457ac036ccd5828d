"""DINO's deformable transformer (Zhang et al., ICLR 2023): the Deformable DETR encoder,
mixed query selection and a decoder whose queries are 4-d anchor boxes (DAB-DETR), refined
layer by layer with look-forward-twice.

Shapes: B images, S tokens (all levels flattened, see ``transformer.py``), Q decoder queries
(denoising queries first, then ``num_queries`` matching queries, or S when an image has fewer
tokens), C = ``dim``.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..nn import MLP, sine_embed
from .transformer import (DecoderLayer, DecoderOutput, DeformableEncoder, EncoderOutput, TokenSelection,
                          init_transformer_weights, run_decoder, select_tokens)

# DINO's inverse sigmoid clamps at 1e-3 (Deformable DETR: 1e-5); it matters for boxes that
# touch the image border, e.g. noised denoising boxes clamped to [0, 1].
DINO_EPS = 1e-3
# DINO embeds an anchor box (cx, cy, w, h) in the order (y, x, w, h)
ANCHOR_ORDER = (1, 0, 2, 3)


class DINOTransformer(nn.Module):
    """Encoder + query selection + decoder. Heads are owned by the detector and passed in."""

    def __init__(self, dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.0,
                 num_levels: int = 4, enc_points: int = 4, dec_points: int = 4, num_queries: int = 900) -> None:
        super().__init__()
        self.dim, self.num_queries = dim, num_queries
        self.encoder = DeformableEncoder(dim, ffn_dim, dropout, num_levels, num_heads, enc_points, num_encoder_layers)
        self.decoder = nn.ModuleList(DecoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, dec_points)
                                     for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)   # sine(4-d box) -> query position
        self.tgt_embed = nn.Embedding(num_queries, dim)    # learned content queries
        self.enc_output = nn.Linear(dim, dim)
        self.enc_output_norm = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The encoder inits itself; every other matrix xavier-uniform (content queries too)."""
        init_transformer_weights(self.decoder, self.ref_point_head, self.tgt_embed, self.enc_output)

    def select_queries(self, enc: EncoderOutput, class_head: nn.Module, box_head: nn.Module) -> TokenSelection:
        """Mixed query selection (Sec. 3.3): the top ``num_queries`` encoder tokens by their best
        class score give the anchor boxes; the content queries are learned (``content_queries``)."""
        return select_tokens(enc, lambda m: self.enc_output_norm(self.enc_output(m)), class_head, box_head,
                             self.num_queries, by_best_class=True)

    def content_queries(self, batch_size: int, num: int) -> Tensor:
        """The first ``num`` learned content queries for every image: [B, num, C]. An image with
        fewer tokens than ``num_queries`` (very small or elongated) selects all S of them and
        gets S matching queries."""
        return self.tgt_embed.weight[None, :num].expand(batch_size, -1, -1)

    def anchor_query_pos(self, anchors: Tensor) -> Tensor:
        """Position queries from anchor boxes [B, Q, L, 4] scaled to the levels (the first level's
        copy is used): sine embedding (C / 2 features per coordinate) -> ``ref_point_head``."""
        return self.ref_point_head(sine_embed(anchors[:, :, 0], self.dim // 2, order=ANCHOR_ORDER))

    def decode(self, tgt: Tensor, reference: Tensor, enc: EncoderOutput, box_heads: nn.ModuleList,
               attn_mask: Tensor | None = None, look_forward_twice: bool = True) -> DecoderOutput:
        """``run_decoder`` with anchor-box position queries; tgt [B, Q, C], reference [B, Q, 4]
        sigmoid anchors. The hidden states come out through ``decoder_norm``."""
        out = run_decoder(self.decoder, tgt, reference, enc, self.anchor_query_pos, box_heads, attn_mask,
                          look_forward_twice, eps=DINO_EPS)
        return DecoderOutput(self.decoder_norm(out.hidden), out.references)
