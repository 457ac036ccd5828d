"""Customised positive queries of Co-DETR (Zong et al., ICCV 2023, Sec. 3.3): the positives an
auxiliary head assigned (RoI head: sampled RoIs; ATSS: anchors) become extra decoder queries,
each supervised by the box its head assigned to it, without Hungarian matching.

Per auxiliary head, every image gets M = max(9, min(max_pos_coords, max over images of #pos))
queries (official ``get_aux_targets``): its positives (a random M of them when it has more),
then random negatives of the same head to fill M. Boxes are normalized cxcywh (divided by the
image size, then converted). Query features: the RoI head's mean RoI features; for ATSS the
feature of the anchor's position in the multi-level maps (all L+1 levels, flattened level by
level, repeated for each anchor of a position).

Short of negatives (an image whose head has fewer negatives than the padding needs, which makes
the official code fail on mismatched shapes), the remaining slots are background queries at the
empty box (0, 0, 0, 0) with zero features: label K, class weight 1, box weight 0, like every
padding query. Every random draw goes through ``codetr.rng`` (in the official order: per image,
the positive subsampling, then the negative padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from .. import rng
from ..boxes import xyxy_to_cxcywh
from ..detr.criterion import Matched

if TYPE_CHECKING:
    from ..dense.atss import PosCoords
    from ..rcnn.roi_head import RoIPosCoords

MIN_AUX_QUERIES = 9  # official floor on M


@dataclass
class AuxTargets:
    """One auxiliary head's positive queries and their targets over the batch (the official
    ``get_aux_targets`` tuple, zero-padding mode off, so no attention mask).

    coords [B, M, 4]: query boxes, normalized cxcywh; labels [B, M] long (``num_classes`` =
    background); targets [B, M, 4]: assigned boxes, normalized cxcywh (zeros for negatives);
    feats [B, M, C]: query features. Positives come first in every image."""

    coords: Tensor
    labels: Tensor
    targets: Tensor
    feats: Tensor
    num_classes: int

    @property
    def positive(self) -> Tensor:
        """[B, M] bool."""
        return (self.labels >= 0) & (self.labels < self.num_classes)

    @property
    def label_weights(self) -> Tensor:
        """[B, M]: every query is classified (official ``label_weights``)."""
        return torch.ones_like(self.labels, dtype=self.coords.dtype)

    @property
    def bbox_weights(self) -> Tensor:
        """[B, M, 4]: 1 on positives (official ``bbox_weights``)."""
        return self.positive[..., None].expand_as(self.coords).to(self.coords.dtype)

    def matched(self) -> Matched:
        """The positives as (query, target) pairs, image after image, for the set losses."""
        batch, query = self.positive.nonzero().unbind(1)
        return Matched(batch, query, self.labels[batch, query], self.targets[batch, query])


def num_aux_queries(labels: Sequence[Tensor], num_classes: int, max_pos_coords: int) -> int:
    """M: the most positives of an image, capped at ``max_pos_coords``, at least 9."""
    most = max((int(((lab >= 0) & (lab < num_classes)).sum()) for lab in labels), default=0)
    return max(MIN_AUX_QUERIES, min(max_pos_coords, most))


def select_queries(labels: Tensor, num_classes: int, num_queries: int) -> Tensor:
    """Indices [<= M] of one image's rows: its positives (a random M of them when more), then
    random negatives up to M (all of them when fewer)."""
    pos = ((labels >= 0) & (labels < num_classes)).nonzero()[:, 0]
    if len(pos) > num_queries:
        pos = pos[rng.randperm(len(pos), pos.device)[:num_queries]]
    pad = num_queries - len(pos)
    if pad == 0:
        return pos
    neg = (labels == num_classes).nonzero()[:, 0]
    return torch.cat([pos, neg[rng.randperm(len(neg), neg.device)[:pad]]])


def position_feats(pos_coords: PosCoords | RoIPosCoords, mlvl_feats: Sequence[Tensor] | None) -> list[Tensor]:
    """Per image the feature [N_i, C] of every row of ``pos_coords``: the mean RoI features
    ('rcnn'), or the anchor's position in ``mlvl_feats`` (L+1 maps [B, C, H_l, W_l], 'atss')."""
    if pos_coords.kind == "rcnn":
        return list(pos_coords.feats.unbind(0))
    if mlvl_feats is None:
        raise ValueError("ATSS positive queries take their features from the multi-level maps: pass mlvl_feats")
    tokens = torch.cat([f.flatten(2) for f in mlvl_feats], dim=2).transpose(1, 2)  # [B, sum HW, C]
    per_position = len(pos_coords.labels[0]) // tokens.shape[1]                     # anchors per position
    return list(tokens.repeat_interleave(per_position, dim=1).unbind(0))            # B x [N, C]


def image_queries(boxes: Tensor, labels: Tensor, targets: Tensor, feats: Tensor, img_hw: tuple[int, int],
                  num_classes: int, num_queries: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image: rows boxes [N, 4] / targets [N, 4] xyxy pixels, labels [N], feats [N, C] ->
    M query boxes, labels, targets (normalized cxcywh) and features (module docstring)."""
    keep = select_queries(labels, num_classes, num_queries)
    h, w = img_hw
    scale = boxes.new_tensor([w, h, w, h])
    fill = num_queries - len(keep)  # > 0 only when short of negatives
    coords = torch.cat([xyxy_to_cxcywh(boxes[keep] / scale), boxes.new_zeros(fill, 4)])
    labels = torch.cat([labels[keep], labels.new_full((fill,), num_classes)])
    targets = torch.cat([xyxy_to_cxcywh(targets[keep] / scale), targets.new_zeros(fill, 4)])
    feats = torch.cat([feats[keep], feats.new_zeros(fill, feats.shape[1])])
    return coords, labels, targets, feats


def get_aux_targets(pos_coords: PosCoords | RoIPosCoords, img_hw: Sequence[tuple[int, int]], num_classes: int,
                    max_pos_coords: int = 300, mlvl_feats: Sequence[Tensor] | None = None) -> AuxTargets:
    """An auxiliary head's ``pos_coords`` (boxes or anchors, labels, targets, per image, xyxy
    input pixels; RoI: and mean RoI feats) and each image's ``img_shape`` (h, w) -> its
    positive queries. ``mlvl_feats``: the L+1 maps the heads ran on (needed for ATSS)."""
    boxes, labels, targets = pos_coords[:3]
    feats = position_feats(pos_coords, mlvl_feats)
    num_queries = num_aux_queries(labels, num_classes, max_pos_coords)
    rows = [image_queries(boxes[i], labels[i], targets[i], feats[i], img_hw[i], num_classes, num_queries)
            for i in range(len(labels))]
    coords, labels, targets, feats = (torch.stack(parts) for parts in zip(*rows))
    return AuxTargets(coords, labels, targets, feats, num_classes)
