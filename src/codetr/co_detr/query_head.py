"""Co-DETR's query heads (Zong et al., ICCV 2023): the DETR decoder branch of Co-Deformable-DETR
and Co-DINO, built from codetr's deformable transformers, plus what Co-DETR adds:

* the encoder memory back as multi-scale maps plus one stride-2 ``downsample`` level (Sec. 3.2:
  the auxiliary heads read these L + 1 maps, not the neck's);
* customised positive queries (Sec. 3.3, ``PositiveQueries``): boxes from an auxiliary head's
  positives become extra decoder queries. The official code decodes each head's group in a pass
  of its own; in training ``decode`` runs the main queries and every group in ONE pass, each
  group's self-attention blocked from the others (a block-diagonal mask). Every other decoder
  operation acts on each query alone, so the outputs are the separate passes' (tested against
  ``forward_positive``, the separate pass) at a fraction of the per-pass cost.

    neck maps [B, C, H_l, W_l] -> masks + sine positions -> deformable encoder -> memory [B, S, C]
      -> two-stage selection (Co-Def: class-0 logit; Co-DINO: best class) -> decoder (box refine)
      -> per layer: logits [L, B, Q, K], sigmoid cxcywh boxes [L, B, Q, 4] (relative to the valid image)

Co-Deformable-DETR: mixed selection (position queries from the selected proposals, learned
content queries), references refined with look-forward-twice. Co-DINO: DINO's decoder (anchor
position queries through ``ref_point_head``, a shared output norm) and denoising queries whose
group count is ``num_dn_queries // max_gts`` (CdnQueryGenerator's dynamic rule).
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..boxes import inverse_sigmoid, xyxy_to_cxcywh
from ..detr.deformable_detr import with_masks_and_positions
from ..detr.denoising import DenoisingQueries, build_dn_queries, draw_dn_noise
from ..detr.dino import prediction_heads
from ..detr.dino_transformer import DINO_EPS, DINOTransformer
from ..detr.transformer import (DecoderOutput, DeformableTransformer, EncoderOutput, TokenSelection,
                                predict_per_layer)
from ..nn import SinePositionEncoding, sine_embed

DEF_EPS = 1e-5  # Co-Deformable-DETR's inverse-sigmoid clamp (Co-DINO: DINO_EPS = 1e-3)


@dataclass
class QueryHeadOutput:
    """One forward of a query head. Q counts the denoising queries first (Co-DINO, train)."""

    logits: Tensor             # [L, B, Q, K] every decoder layer's class logits
    boxes: Tensor              # [L, B, Q, 4] sigmoid cxcywh
    maps: list[Tensor]         # L_enc + 1 maps [B, C, H_l, W_l]: encoder memory per level + ``downsample``
    enc: EncoderOutput
    selection: TokenSelection  # two-stage scoring of every token and the top-k kept
    dec: DecoderOutput         # hidden [L, B, Q, C] (Co-DINO: normed), references L + 1 x [B, Q, 4]
    dn: DenoisingQueries | None = None

    @property
    def pad_size(self) -> int:
        return 0 if self.dn is None else self.dn.pad_size


@dataclass
class QueryGroup:
    """Decoder queries that attend only to each other: content [B, Q, C], reference [B, Q, 4]
    sigmoid cxcywh, position [B, Q, C] (Co-Deformable-DETR; Co-DINO derives it from the
    reference: None) and the self-attention mask inside the group [Q, Q] (True = blocked) or None."""

    content: Tensor
    reference: Tensor
    position: Tensor | None = None
    attn_mask: Tensor | None = None

    @property
    def size(self) -> int:
        return self.content.shape[1]


def join_groups(groups: Sequence[QueryGroup]) -> QueryGroup:
    """The groups as one query set whose self-attention mask is block-diagonal: a query sees
    its own group only (within it, as the group's own mask says)."""
    if len(groups) == 1:
        return groups[0]
    total = sum(g.size for g in groups)
    mask = torch.ones(total, total, dtype=torch.bool, device=groups[0].content.device)
    start = 0
    for g in groups:
        end = start + g.size
        mask[start:end, start:end] = False if g.attn_mask is None else g.attn_mask
        start = end
    position = None if groups[0].position is None else torch.cat([g.position for g in groups], 1)
    return QueryGroup(torch.cat([g.content for g in groups], 1), torch.cat([g.reference for g in groups], 1),
                      position, mask)


def split_decoder_output(dec: DecoderOutput, sizes: Sequence[int]) -> list[DecoderOutput]:
    """``join_groups``' inverse on the decoder output: one ``DecoderOutput`` per group."""
    hidden = dec.hidden.split(list(sizes), dim=2)
    references = list(zip(*(r.split(list(sizes), dim=1) for r in dec.references)))
    return [DecoderOutput(h, list(r)) for h, r in zip(hidden, references)]


class PositiveQueries(nn.Module):
    """Customised positive queries (Sec. 3.3), one set of layers per auxiliary head k: the boxes'
    sine embedding (C / 2 features per coordinate, as the two-stage proposals) -> Linear_k -> LN_k.

    Co-Deformable-DETR (``split``): a 2C output split into position and content queries; with
    ``with_coord_feat`` the content adds ``LN'_k(Linear'_k(feats))`` and the position adds
    ``head_pos_embed.weight[k]``, an embedding of width 1 (one scalar per head: an official quirk
    kept so official weights load). Co-DINO: a C output, the content query alone (positions come
    from the decoder's ``ref_point_head``)."""

    def __init__(self, dim: int, num_heads: int, split: bool, with_coord_feat: bool) -> None:
        super().__init__()
        out = 2 * dim if split else dim
        self.dim, self.split, self.with_coord_feat = dim, split, with_coord_feat
        self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * dim, out) for _ in range(num_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(out) for _ in range(num_heads))
        if with_coord_feat:
            self.pos_feats_trans = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_heads))
            self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_heads))
        if split:
            self.head_pos_embed = nn.Embedding(num_heads, 1)

    def forward(self, coords: Tensor, feats: Tensor | None, head: int) -> tuple[Tensor, Tensor | None]:
        """coords [B, M, 4] normalized cxcywh, feats [B, M, C] -> (content [B, M, C], position
        [B, M, C] or None). The embedding reads sigmoid(inverse_sigmoid(coords)), as official."""
        embedded = sine_embed(inverse_sigmoid(coords, DEF_EPS).sigmoid(), self.dim // 2)   # [B, M, 2C]
        queries = self.aux_pos_trans_norm[head](self.aux_pos_trans[head](embedded))
        if not self.split:
            return queries, None
        position, content = queries.split(self.dim, dim=-1)
        if self.with_coord_feat:
            content = content + self.pos_feats_norm[head](self.pos_feats_trans[head](feats))
            position = position + self.head_pos_embed.weight[head]
        return content, position


class CoQueryHead(nn.Module, ABC):
    """What both query heads share: positions and masks, the encoder, the L + 1 class / box
    branches (index L scores the encoder tokens), the aux-head maps and the positive queries."""

    eps: float = DEF_EPS

    def __init__(self, transformer: nn.Module, position: SinePositionEncoding, num_classes: int, dim: int,
                 positive: PositiveQueries | None) -> None:
        super().__init__()
        self.transformer, self.position = transformer, position
        num_dec = len(transformer.decoder)
        cls, box = prediction_heads(dim, num_classes)   # prior-0.01 cls bias, zero last box layer
        self.cls_branches = nn.ModuleList(copy.deepcopy(cls) for _ in range(num_dec + 1))
        self.reg_branches = nn.ModuleList(copy.deepcopy(box) for _ in range(num_dec + 1))
        self.downsample = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.GroupNorm(32, dim))
        self.positive = positive

    def encode(self, feats: list[Tensor], sizes: Tensor, image_hw: tuple[int, int]) -> EncoderOutput:
        """Neck maps [B, C, H_l, W_l] of a batch padded to ``image_hw``, valid ``sizes`` [B, 2]."""
        maps = with_masks_and_positions(feats, sizes, image_hw, self.position)
        return self.transformer.encoder(maps.srcs, maps.masks, maps.pos)

    def aux_maps(self, enc: EncoderOutput) -> list[Tensor]:
        """The memory per level [B, C, H_l, W_l] (padding included) plus ``downsample`` of the last."""
        maps = enc.to_maps()
        return maps + [self.downsample(maps[-1])]

    def predict(self, dec: DecoderOutput) -> tuple[Tensor, Tensor]:
        return predict_per_layer(dec.hidden, dec.references, self.cls_branches, self.reg_branches, self.eps)

    def forward(self, feats: list[Tensor], sizes: Tensor, image_hw: tuple[int, int],
                dn: DenoisingQueries | None = None) -> QueryHeadOutput:
        """Neck maps [B, C, H_l, W_l] of a batch padded to ``image_hw``, valid ``sizes`` [B, 2]
        -> every decoder layer's predictions for the main (and denoising) queries."""
        enc = self.encode(feats, sizes, image_hw)
        return self.decode(enc, self.aux_maps(enc), dn)[0]

    def decode(self, enc: EncoderOutput, maps: list[Tensor], dn: DenoisingQueries | None = None,
               positives: Sequence[tuple[Tensor, Tensor | None]] = ()
               ) -> tuple[QueryHeadOutput, list[tuple[Tensor, Tensor]]]:
        """The main queries (after the denoising ones) and auxiliary head k's positive queries
        ``positives[k]`` = (coords [B, M_k, 4] normalized cxcywh, feats [B, M_k, C]) in one
        decoder pass (module docstring) -> (the main output, per head (logits [L, B, M_k, K],
        boxes [L, B, M_k, 4]))."""
        sel, main = self.main_queries(enc, dn)
        groups = [main] + [self.positive_queries(coords, feats, k) for k, (coords, feats) in enumerate(positives)]
        sizes = [g.size for g in groups]
        dec = self.run_decoder(enc, join_groups(groups))
        logits, boxes = (t.split(sizes, dim=2) for t in self.predict(dec))
        head = QueryHeadOutput(logits[0], boxes[0], maps, enc, sel, split_decoder_output(dec, sizes)[0], dn)
        return head, list(zip(logits[1:], boxes[1:]))

    def forward_positive(self, enc: EncoderOutput, coords: Tensor, feats: Tensor | None,
                         head: int) -> tuple[Tensor, Tensor]:
        """One auxiliary head's positive queries in a decoder pass of their own, as official
        (``decode`` joins them to the main pass): coords [B, M, 4] normalized cxcywh, feats
        [B, M, C] -> (logits [L, B, M, K], boxes [L, B, M, 4])."""
        return self.predict(self.run_decoder(enc, self.positive_queries(coords, feats, head)))

    def positive_queries(self, coords: Tensor, feats: Tensor | None, head: int) -> QueryGroup:
        if self.positive is None:
            raise ValueError("this query head has no positive-query layers (num_co_heads 0 or with_pos_coord off)")
        content, position = self.positive(coords, feats, head)
        return QueryGroup(content, coords, position)

    @abstractmethod
    def main_queries(self, enc: EncoderOutput, dn: DenoisingQueries | None) -> tuple[TokenSelection, QueryGroup]:
        """The two-stage selection and the queries it gives (Co-DINO: after the denoising ones)."""

    @abstractmethod
    def run_decoder(self, enc: EncoderOutput, queries: QueryGroup) -> DecoderOutput:
        """The variant's decoder on ``queries``."""


class CoDeformableDETRHead(CoQueryHead):
    """Co-Deformable-DETR: two-stage proposals ranked by the first class logit, mixed selection."""

    def __init__(self, transformer: DeformableTransformer, position: SinePositionEncoding, num_classes: int,
                 num_queries: int, mixed_selection: bool, look_forward_twice: bool,
                 positive: PositiveQueries | None) -> None:
        super().__init__(transformer, position, num_classes, transformer.dim, positive)
        self.look_forward_twice = look_forward_twice
        self.query_embedding = nn.Embedding(num_queries, transformer.dim) if mixed_selection else None

    def main_queries(self, enc: EncoderOutput, dn: DenoisingQueries | None) -> tuple[TokenSelection, QueryGroup]:
        num_dec = len(self.transformer.decoder)
        sel = self.transformer.select_proposals(enc, self.cls_branches[num_dec], self.reg_branches[num_dec])
        boxes_unact = sel.gather(sel.coords_unact).detach()                      # [B, Q, 4]
        query_pos, content = self.transformer.proposal_queries(boxes_unact)
        if self.query_embedding is not None:  # mixed selection: learned content, proposal positions
            content = self.query_embedding.weight[None].expand(boxes_unact.shape[0], -1, -1)
        return sel, QueryGroup(content, boxes_unact.sigmoid(), query_pos)

    def run_decoder(self, enc: EncoderOutput, queries: QueryGroup) -> DecoderOutput:
        return self.transformer.decode(queries.content, queries.position, queries.reference, enc, self.reg_branches,
                                       queries.attn_mask, look_forward_twice=self.look_forward_twice)


class CoDINOHead(CoQueryHead):
    """Co-DINO: DINO's query selection and decoder, K label embeddings for the denoising queries."""

    eps = DINO_EPS

    def __init__(self, transformer: DINOTransformer, position: SinePositionEncoding, num_classes: int,
                 positive: PositiveQueries | None, label_noise: float, box_noise: float, num_dn_queries: int) -> None:
        super().__init__(transformer, position, num_classes, transformer.dim, positive)
        self.label_embedding = nn.Embedding(num_classes, transformer.dim)
        self.label_noise, self.box_noise, self.num_dn_queries = label_noise, box_noise, num_dn_queries

    def denoising_queries(self, gt_boxes: list[Tensor], gt_labels: list[Tensor], sizes: Tensor) -> DenoisingQueries:
        """Noised copies of the gts (xyxy input pixels, normalized by each image's valid (w, h)
        after the cxcywh conversion); ``num_dn_queries // max_gts`` groups (at least 1)."""
        counts = [len(l) for l in gt_labels]
        max_gts = max(counts, default=0)
        groups = max(self.num_dn_queries // max_gts, 1) if max_gts else 1
        noise = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
        if max_gts:
            scale = [b.new_tensor([w, h, w, h]) for b, (h, w) in zip(gt_boxes, sizes.tolist())]
            boxes = torch.cat([xyxy_to_cxcywh(b) / s for b, s in zip(gt_boxes, scale)])   # [N, 4]
            noise = draw_dn_noise(torch.cat(gt_labels), boxes, groups, self.label_embedding.num_embeddings,
                                  self.label_noise, self.box_noise)
        return build_dn_queries(counts, noise[0], noise[1], self.label_embedding, groups, self.transformer.num_queries)

    def main_queries(self, enc: EncoderOutput, dn: DenoisingQueries | None) -> tuple[TokenSelection, QueryGroup]:
        num_dec = len(self.transformer.decoder)
        sel = self.transformer.select_queries(enc, self.cls_branches[num_dec], self.reg_branches[num_dec])
        reference_unact = sel.gather(sel.coords_unact).detach()                # [B, Q, 4]
        content = self.transformer.content_queries(reference_unact.shape[0], reference_unact.shape[1])
        attn_mask = None
        if dn is not None and dn.pad_size > 0:  # denoising queries first
            end = dn.pad_size + content.shape[1]
            content = torch.cat([dn.content, content], 1)
            reference_unact = torch.cat([dn.boxes, reference_unact], 1)
            attn_mask = dn.attn_mask[:end, :end]
        elif dn is not None:  # no gt in the batch: keep the embedding in the graph (DDP)
            content = content + 0.0 * self.label_embedding.weight[0, 0]
        return sel, QueryGroup(content, reference_unact.sigmoid(), None, attn_mask)

    def run_decoder(self, enc: EncoderOutput, queries: QueryGroup) -> DecoderOutput:
        return self.transformer.decode(queries.content, queries.reference, enc, self.reg_branches, queries.attn_mask)
