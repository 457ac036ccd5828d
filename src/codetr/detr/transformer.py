"""The deformable transformer of Deformable DETR (Zhu et al., 2021): encoder, decoder with
iterative box refinement, and the two-stage proposal generation. DINO's transformer
(dino_transformer.py) is built from the same stages.

Stages, each with a typed output:
- ``DeformableEncoder``: multi-scale maps -> ``EncoderOutput`` (memory, token layout, valid ratios);
- ``select_tokens``: two-stage / mixed query selection -> ``TokenSelection``;
- ``run_decoder``: queries + reference boxes -> ``DecoderOutput`` (hidden states, references);
- ``predict_per_layer``: each layer's class / box heads on the decoder output.

Token layout: multi-scale maps are flattened level by level, row-major within a level, into
S = sum_l H_l * W_l tokens (``LevelLayout``). Boxes are normalized (cx, cy, w, h) relative to
each image's valid (unpadded) region, the DETR convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..boxes import inverse_sigmoid
from ..nn import LevelLayout, MultiScaleDeformableAttention, QuerySelfAttention, sine_embed
from ..ops.msda import exporting


class Intermediates:
    """Base of a detector's typed intermediates (``forward_raw(...)['_inter']``); dict-style
    reads by field name, as the parity tests index them."""

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


def valid_ratios(mask: Tensor) -> Tensor:
    """[B, H, W] padding mask -> [B, 2] valid fraction (w, h) of the map."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def encoder_reference_points(levels: LevelLayout, ratios: Tensor) -> Tensor:
    """Each token's own centre as a fraction of its level's valid region, seen on every level:
    [B, S, L, 2] (x, y). The centre of pixel (i, j) of an H x W map is (j + 1/2, i + 1/2)."""
    refs = []
    for lvl, (h, w) in enumerate(levels.shapes):
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=ratios.device) + 0.5,
                              torch.arange(w, dtype=torch.float32, device=ratios.device) + 0.5, indexing="ij")
        centres = torch.stack([x.flatten(), y.flatten()], -1)                       # [HW, 2] pixels
        refs.append(centres[None] / (ratios[:, None, lvl] * levels.wh[lvl]))        # / valid (w, h) in pixels
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]


def encoder_proposals(padding_mask: Tensor, levels: LevelLayout) -> tuple[Tensor, Tensor]:
    """One square proposal per token (two-stage, Sec. 4.2): centred on the token, side
    0.05 * 2^l of the valid image on level l; (cx, cy) relative to each image's valid map.

    Returns (proposals [B, S, 4] in logit space, valid [B, S, 1]). A proposal is usable when its
    token is not padding and all four numbers lie in (0.01, 0.99); unusable ones are +inf.
    """
    B = padding_mask.shape[0]
    boxes = []
    for lvl, (mask, (h, w)) in enumerate(zip(padding_mask.split(levels.sizes, 1), levels.shapes)):
        mask = mask.view(B, h, w)
        valid_wh = torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)    # [B, 2]
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=mask.device),
                              torch.arange(w, dtype=torch.float32, device=mask.device), indexing="ij")
        centres = (torch.stack([x, y], -1)[None] + 0.5) / valid_wh.view(B, 1, 1, 2)       # [B, h, w, 2]
        side = torch.full_like(centres, 0.05 * 2.0 ** lvl)
        boxes.append(torch.cat([centres, side], -1).view(B, h * w, 4))
    boxes = torch.cat(boxes, 1)
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True) & ~padding_mask[..., None]
    logits = torch.log(boxes / (1 - boxes))
    return logits.masked_fill(~usable, float("inf")), usable


def init_transformer_weights(*modules: nn.Module) -> None:
    """The official init of a deformable transformer's parts: xavier-uniform for every matrix,
    then each deformable attention's own reset (offsets start on a ring of directions)."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in module.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()


@dataclass
class EncoderOutput:
    """The encoder's result; ``levels`` is computed once per forward."""

    memory: Tensor        # [B, S, C]
    padding_mask: Tensor  # [B, S] True on padding
    levels: LevelLayout   # (H_l, W_l) per level as Python ints
    valid_ratios: Tensor  # [B, L, 2] valid fraction (w, h) of each level

    def to_maps(self) -> list[Tensor]:
        """The memory as per-level maps [B, C, H_l, W_l] (padded positions included)."""
        B, _, C = self.memory.shape
        return [tokens.transpose(1, 2).reshape(B, C, h, w)                         # [B, HW, C] -> [B, C, H, W]
                for tokens, (h, w) in zip(self.memory.split(self.levels.sizes, 1), self.levels.shapes)]


# Queries per chunk of an encoder layer on CPU without autograd. Each query's update reads the
# shared value table and its own rows only, so chunks give the same result; they keep every
# temporary under glibc's 32 MiB mmap threshold (the FFN's [4000, 2048] float32 hidden is
# 31.25 MiB), which spares page-faulting fresh memory in each layer: DINO-R50 eval at 800x1066
# ~25% faster in bfloat16 (benchmarks/RESULTS.md).
EVAL_CHUNK = 4000


def chunked(src: Tensor) -> bool:
    """Whether an encoder layer splits the tokens ``src`` [B, S, C] into ``EVAL_CHUNK`` queries:
    on CPU without autograd, and not while exporting (the loop would freeze the traced size)."""
    return (src.device.type == "cpu" and not torch.is_grad_enabled() and not exporting()
            and src.shape[1] > EVAL_CHUNK)


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

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, levels: LevelLayout,
                padding_mask: Tensor) -> Tensor:
        """src, pos [B, S, C], reference_points [B, S, L, 2], padding_mask [B, S] -> [B, S, C]."""
        values = self.self_attn.project_value(src, padding_mask)
        if not chunked(src):
            return self.update(src, pos, reference_points, values, levels)
        out = torch.empty_like(src)
        for start in range(0, src.shape[1], EVAL_CHUNK):
            part = slice(start, start + EVAL_CHUNK)
            out[:, part] = self.update(src[:, part], pos[:, part], reference_points[:, part], values, levels)
        return out

    def update(self, src: Tensor, pos: Tensor, reference_points: Tensor, values: Tensor, levels: LevelLayout) -> Tensor:
        """The layer for the queries ``src`` [B, Q, C] (all tokens or a chunk) on the whole value table."""
        attn = self.self_attn.attend(src + pos, reference_points, values, levels)
        src = self.norm1(src + self.dropout(attn))
        # in place: no second [tokens, ffn_dim] buffer (its allocation cost ~15% of the FFN on CPU)
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src), inplace=True)))
        return self.norm2(src + self.dropout(ffn))


class DeformableEncoder(nn.Module):
    """Flattens the levels, adds a learned embedding per level to the position encodings and
    runs the encoder layers (shared by Deformable DETR and DINO).

    ``checkpoint_layers``: the first this many layers keep no activations in training; the
    backward pass recomputes them (Co-DETR's ``with_cp``: memory only, the same values and
    gradients). A plain attribute, 0 here, no weights: an owner sets it after construction."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int,
                 num_points: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, num_points)
                                    for _ in range(num_layers))
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.checkpoint_layers = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_transformer_weights(self.layers)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], masks: list[Tensor], pos: list[Tensor]) -> EncoderOutput:
        """srcs and pos [B, C, H_l, W_l], masks [B, H_l, W_l] (True on padding)."""
        levels = LevelLayout.of([tuple(s.shape[-2:]) for s in srcs], srcs[0].device)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)             # [B, S, C]
        mask = torch.cat([m.flatten(1) for m in masks], 1)                            # [B, S]
        level_pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl]
                               for lvl, p in enumerate(pos)], 1)                      # [B, S, C]
        ratios = torch.stack([valid_ratios(m) for m in masks], 1)                    # [B, L, 2]
        refs = encoder_reference_points(levels, ratios)                              # [B, S, L, 2]
        recompute = self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute and i < self.checkpoint_layers:
                src = checkpoint(layer, src, level_pos, refs, levels, mask, use_reentrant=False)
            else:
                src = layer(src, level_pos, refs, levels, mask)
        return EncoderOutput(src, mask, levels, ratios)


@dataclass
class TokenSelection:
    """Encoder tokens scored as proposals and the top ``Q`` kept (two-stage, mixed selection)."""

    memory: Tensor        # [B, S, C] memory after the output projection + norm (unusable tokens zeroed)
    proposals: Tensor     # [B, S, 4] each token's proposal in logit space (+inf: unusable)
    logits: Tensor        # [B, S, K] class logits of every token
    coords_unact: Tensor  # [B, S, 4] proposal refined by the box head, logit space
    scores: Tensor        # [B, S] the ranking score
    topk: Tensor          # [B, Q] the kept tokens, best first

    def gather(self, per_token: Tensor) -> Tensor:
        """[B, S, D] -> [B, Q, D]: the kept tokens' rows."""
        return torch.gather(per_token, 1, self.topk[..., None].expand(-1, -1, per_token.shape[-1]))


def select_tokens(enc: EncoderOutput, project: Callable[[Tensor], Tensor], class_head: nn.Module,
                  box_head: nn.Module, num_queries: int, by_best_class: bool) -> TokenSelection:
    """Score every encoder token as a proposal and keep the top ``num_queries`` (all S when an
    image has fewer tokens: very small or elongated). Ranked by the best class logit, or by the
    first (class-agnostic) one as official two-stage Deformable DETR."""
    proposals, usable = encoder_proposals(enc.padding_mask, enc.levels)
    memory = project(enc.memory.masked_fill(~usable, 0.0))
    logits = class_head(memory)                                                      # [B, S, K]
    coords_unact = box_head(memory) + proposals
    scores = logits.max(-1)[0] if by_best_class else logits[..., 0]
    topk = torch.topk(scores, min(num_queries, scores.shape[1]), dim=1)[1]
    return TokenSelection(memory, proposals, logits, coords_unact, scores, topk)


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the memory, FFN; post-norm.
    Norm names follow the official code: norm2 after self-attention, norm1 after cross-attention."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int,
                 num_points: int) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = QuerySelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, enc: EncoderOutput,
                self_attn_mask: Tensor | None = None) -> Tensor:
        attn = self.self_attn(tgt + query_pos, tgt, self_attn_mask)
        tgt = self.norm2(tgt + self.dropout(attn))
        attn = self.cross_attn(tgt + query_pos, reference_points, enc.memory, enc.levels, enc.padding_mask)
        tgt = self.norm1(tgt + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt), inplace=True)))
        return self.norm3(tgt + self.dropout(ffn))


def refine_boxes(delta: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Box head output [..., 4] on a sigmoid reference [..., 4] (box) or [..., 2] (point) ->
    sigmoid boxes [..., 4]: the head predicts an offset in logit space; on a point reference,
    the size directly."""
    anchor = inverse_sigmoid(reference, eps)
    if reference.shape[-1] == 2:
        anchor = F.pad(anchor, (0, 2))
    return (delta + anchor).sigmoid()


@dataclass
class DecoderOutput:
    hidden: Tensor             # [L, B, Q, C] each layer's output
    references: list[Tensor]   # L + 1 x [B, Q, 2 | 4] sigmoid: [0] the input, [i + 1] refined by layer i


def run_decoder(layers: nn.ModuleList, tgt: Tensor, reference: Tensor, enc: EncoderOutput,
                query_pos: Callable[[Tensor], Tensor], box_heads: nn.ModuleList | None,
                attn_mask: Tensor | None, look_forward_twice: bool, eps: float) -> DecoderOutput:
    """The decoder shared by both transformers. tgt [B, Q, C]; reference [B, Q, 2 | 4] sigmoid;
    ``query_pos`` maps the references scaled to every level [B, Q, L, 2 | 4] to position
    queries [B, Q, C]; ``attn_mask`` [Q, Q] True = blocked.

    With ``box_heads`` (iterative box refinement) layer i's head refines the reference; the
    next layer gets it detached. ``look_forward_twice`` (DINO Sec. 3.4) reports the refined box
    still attached to layer i's graph, so layer i + 1's loss also trains layer i's head."""
    ratios = enc.valid_ratios                                                        # [B, L, 2]
    hidden, references = [], [reference]
    for i, layer in enumerate(layers):
        scale = ratios if reference.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
        on_levels = reference[:, :, None] * scale[:, None]                          # [B, Q, L, 2|4]
        tgt = layer(tgt, query_pos(on_levels), on_levels, enc, attn_mask)
        hidden.append(tgt)
        if box_heads is not None:
            refined = refine_boxes(box_heads[i](tgt), reference, eps)
            reference = refined.detach()
            references.append(refined if look_forward_twice else reference)
        else:
            references.append(reference)
    return DecoderOutput(torch.stack(hidden), references)


def predict_per_layer(hidden: Tensor, references: list[Tensor], class_heads: nn.ModuleList,
                      box_heads: nn.ModuleList, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Each decoder layer's heads on its output: hidden [L, B, Q, C], references as
    ``DecoderOutput`` (layer i refines references[i]) -> logits [L, B, Q, K] and sigmoid
    cxcywh boxes [L, B, Q, 4]."""
    layers = range(hidden.shape[0])
    logits = torch.stack([class_heads[i](hidden[i]) for i in layers])
    boxes = torch.stack([refine_boxes(box_heads[i](hidden[i]), references[i], eps) for i in layers])
    return logits, boxes


class DeformableTransformer(nn.Module):
    """Encoder + decoder. With ``two_stage`` the decoder's queries come from the top-scoring
    encoder proposals (Sec. 4.2); otherwise from learned query embeddings.

    The class/box heads are owned by the detector and passed in: with box refinement each
    decoder layer refines the reference boxes with its own box head, and in two-stage mode the
    heads at index ``num_decoder_layers`` score the encoder proposals.
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 1024, dropout: float = 0.1,
                 num_levels: int = 4, enc_points: int = 4, dec_points: int = 4,
                 two_stage: bool = False, num_queries: int = 300, class_aware_proposals: bool = False) -> None:
        super().__init__()
        self.dim, self.two_stage, self.num_queries = dim, two_stage, num_queries
        self.class_aware_proposals = class_aware_proposals
        self.encoder = DeformableEncoder(dim, ffn_dim, dropout, num_levels, num_heads, enc_points, num_encoder_layers)
        self.decoder = nn.ModuleList(DecoderLayer(dim, ffn_dim, dropout, num_levels, num_heads, dec_points)
                                     for _ in range(num_decoder_layers))
        if two_stage:
            self.enc_output = nn.Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
            self.pos_trans = nn.Linear(2 * dim, 2 * dim)
            self.pos_trans_norm = nn.LayerNorm(2 * dim)
        else:
            self.reference_points = nn.Linear(dim, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The encoder inits itself; matrices xavier-uniform, ``reference_points`` bias zero."""
        init_transformer_weights(self.decoder, *([self.enc_output, self.pos_trans] if self.two_stage
                                                 else [self.reference_points]))
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)

    def select_proposals(self, enc: EncoderOutput, class_head: nn.Module, box_head: nn.Module) -> TokenSelection:
        """Two-stage: every encoder token scored as a proposal, the top ``num_queries`` kept."""
        return select_tokens(enc, lambda m: self.enc_output_norm(self.enc_output(m)), class_head, box_head,
                             self.num_queries, by_best_class=self.class_aware_proposals)

    def proposal_queries(self, boxes_unact: Tensor) -> tuple[Tensor, Tensor]:
        """Two-stage queries from boxes [B, Q, 4] (logit space): the boxes' sine embedding
        (C / 2 features per coordinate) through ``pos_trans`` + norm, split into the position
        and the content query, each [B, Q, C]."""
        embedded = sine_embed(boxes_unact.sigmoid(), self.dim // 2)                  # [B, Q, 2C]
        query_pos, tgt = self.pos_trans_norm(self.pos_trans(embedded)).split(self.dim, dim=2)
        return query_pos, tgt

    def decode(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, enc: EncoderOutput,
               box_heads: nn.ModuleList | None, attn_mask: Tensor | None = None,
               look_forward_twice: bool = False) -> DecoderOutput:
        """``run_decoder`` with fixed position queries [B, Q, C] (Deformable DETR); reference
        [B, Q, 2] points or [B, Q, 4] boxes, sigmoid. Official: no mask, references detached."""
        return run_decoder(self.decoder, tgt, reference, enc, lambda _: query_pos, box_heads, attn_mask,
                           look_forward_twice, eps=1e-5)
