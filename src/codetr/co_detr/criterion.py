"""Co-DETR's query-head losses (Zong et al., ICCV 2023, Eq. 6), in mmdet ``DETRHead`` semantics
(official ``CoDeformDETRHead`` / ``CoDINOHead``).

Every group of queries gets the same three weighted terms, ``layer_losses``:

* ``loss_cls``: focal (Co-Deformable-DETR) or quality focal (Co-DINO) loss of every query, the
  assigned ones labelled, the rest background;
* ``loss_bbox``: L1 of the assigned normalized cxcywh boxes; ``loss_iou``: 1 - GIoU of the
  same boxes in pixels (mmdet's denominators, clamped at 1e-6);

each summed and divided by the group's ``avg_factor`` = max(#assigned averaged over ranks, 1)
(+ the float32 epsilon, mmdet ``weight_reduce_loss``). The groups, with the official keys
(``d{l}.`` = decoder layer l, the last layer unprefixed):

* each decoder layer's matching queries, Hungarian-matched (``PixelHungarianMatcher``):
  ``loss_*``, ``d{l}.loss_*``;
* the encoder's proposals (two-stage), Hungarian-matched: ``enc_loss_*``; Co-Deformable-DETR
  scores all tokens against class 0 (class-agnostic), Co-DINO its top-k with real labels;
* Co-DINO's denoising queries, each positive copy assigned to its object (positive j of group g
  at slot g * (2 * max_gts) + j; every other slot background, class weight 1): ``dn_loss_*``,
  ``d{l}.dn_loss_*``;
* the positive queries of auxiliary head k (aux_targets.py), assigned by that head, times
  ``lambda_1``: ``loss_*_aux{k}``, ``d{l}.loss_*_aux{k}``.

Hungarian calls run in the official order (Co-Deformable-DETR: decoder layers, then the
encoder; Co-DINO: the encoder first). Ground truth is in mmdet's convention: per image xyxy
boxes in network-input pixels and the image's ``img_shape`` (h, w).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .. import distributed as du
from ..assign.hungarian import PixelHungarianMatcher
from ..boxes import MMDET_EPS, cxcywh_to_xyxy, elementwise_generalized_box_iou, xyxy_to_cxcywh
from ..detr.criterion import ClassLoss, FocalClassLoss, Matched, QualityFocalClassLoss
from ..detr.denoising import dn_positive_indices
from ..losses import F32_EPS
from .aux_targets import AuxTargets

TERMS = ("loss_cls", "loss_bbox", "loss_iou")


@dataclass
class GroundTruth:
    """The batch's objects: per image ``boxes`` [n_i, 4] xyxy network-input pixels, ``labels``
    [n_i] int64 in [0, K), and ``img_hw`` its ``img_shape`` (h, w)."""

    boxes: list[Tensor]
    labels: list[Tensor]
    img_hw: list[tuple[int, int]]

    def scales(self, like: Tensor) -> Tensor:
        """[B, 4] (w, h, w, h) per image, ``like``'s dtype and device."""
        return image_scales(self.img_hw, like)

    def targets(self, labels: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Per image {'labels': ``labels[i]``, 'boxes': the regression targets [n_i, 4], boxes
        divided by the image size, then cxcywh (mmdet's order)}."""
        return [{"labels": lab, "boxes": xyxy_to_cxcywh(b / image_scales([hw], b))}
                for lab, b, hw in zip(labels, self.boxes, self.img_hw)]


@dataclass(frozen=True)
class LossWeights:
    """Official loss weights: Co-Deformable-DETR cls 2, Co-DINO cls 1; L1 5, GIoU 2."""

    cls: float
    bbox: float = 5.0
    iou: float = 2.0


def image_scales(img_hw: Sequence[tuple[int, int]], like: Tensor) -> Tensor:
    """[B, 4] (w, h, w, h) of each image (h, w)."""
    return like.new_tensor([[w, h, w, h] for h, w in img_hw])


def layer_keys(num_layers: int, prefix: str = "", suffix: str = "") -> list[tuple[str, ...]]:
    """Official keys of each decoder layer's terms: layer l < L-1 ``d{l}.{prefix}loss_*{suffix}``,
    the last ``{prefix}loss_*{suffix}``. Returned layer by layer."""
    last = num_layers - 1
    return [tuple(("" if layer == last else f"d{layer}.") + prefix + term + suffix for term in TERMS)
            for layer in range(num_layers)]


def in_official_order(per_layer: list[tuple[str, ...]]) -> list[str]:
    """The official dict order: the last layer's keys, then d0, d1, ..."""
    return [key for keys in per_layer[-1:] + per_layer[:-1] for key in keys]


def layer_losses(logits: Tensor, boxes: Tensor, matched: Matched, scales: Tensor, class_loss: ClassLoss,
                 weights: LossWeights) -> tuple[Tensor, Tensor, Tensor]:
    """One group's weighted (cls, L1, GIoU) terms (module docstring). logits [B, Q, K], boxes
    [B, Q, 4] normalized cxcywh; ``matched``: the assigned pairs, target boxes normalized
    cxcywh; scales [B, 4] (w, h, w, h) per image."""
    avg_factor = du.mean_count_over_ranks(len(matched.query)) + F32_EPS
    loss_cls = class_loss(logits, boxes, matched, avg_factor)
    pred = boxes[matched.batch, matched.query]                                         # [P, 4]
    loss_bbox = (pred - matched.boxes).abs().sum() / avg_factor
    scale = scales[matched.batch]                                                       # [P, 4]
    giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(pred) * scale, cxcywh_to_xyxy(matched.boxes) * scale,
                                           eps=MMDET_EPS, clamp=True)
    loss_iou = (1 - giou).sum() / avg_factor
    return weights.cls * loss_cls, weights.bbox * loss_bbox, weights.iou * loss_iou


class CoDETRCriterion:
    """The query-head losses of one Co-DETR variant (module docstring). ``class_agnostic_encoder``:
    the encoder's targets are all class 0 (Co-Deformable-DETR); ``match_encoder_first``: the
    Hungarian call order (Co-DINO); ``lambda_1``: the auxiliary groups' factor (official 1)."""

    def __init__(self, class_loss: ClassLoss, weights: LossWeights, class_agnostic_encoder: bool,
                 match_encoder_first: bool, matcher: PixelHungarianMatcher | None = None,
                 lambda_1: float = 1.0) -> None:
        self.class_loss, self.weights, self.lambda_1 = class_loss, weights, lambda_1
        self.class_agnostic_encoder, self.match_encoder_first = class_agnostic_encoder, match_encoder_first
        self.matcher = matcher or PixelHungarianMatcher()

    def __call__(self, all_cls_scores: Tensor, all_bbox_preds: Tensor, enc_cls_scores: Tensor | None,
                 enc_bbox_preds: Tensor | None, gt: GroundTruth,
                 dn_meta: Mapping[str, int] | None = None) -> dict[str, Tensor]:
        """all_cls_scores [L, B, NQ, K] logits and all_bbox_preds [L, B, NQ, 4] normalized cxcywh
        of every decoder layer (Co-DINO: the first ``dn_meta['pad_size']`` queries are the
        denoising ones); the encoder's enc_cls_scores [B, S, K] / enc_bbox_preds [B, S, 4]
        (Co-Deformable-DETR: all tokens; Co-DINO: the top-k), None without two-stage;
        ``dn_meta`` {'pad_size', 'num_dn_group'} -> the official loss dict (weighted terms)."""
        pad = dn_meta["pad_size"] if dn_meta is not None else 0
        decoder = layer_keys(len(all_cls_scores))
        steps = [(keys, all_cls_scores[i, :, pad:], all_bbox_preds[i, :, pad:], gt.labels)
                 for i, keys in enumerate(decoder)]
        order = in_official_order(decoder)
        if enc_cls_scores is not None:
            labels = [torch.zeros_like(lab) for lab in gt.labels] if self.class_agnostic_encoder else gt.labels
            encoder = (tuple("enc_" + term for term in TERMS), enc_cls_scores, enc_bbox_preds, labels)
            steps = [encoder] + steps if self.match_encoder_first else steps + [encoder]
            order = list(encoder[0]) + order
        losses = {}  # in the Hungarian call order
        for names, logits, boxes, labels in steps:
            matched = self.hungarian(logits, boxes, labels, gt)
            terms = layer_losses(logits, boxes, matched, gt.scales(boxes), self.class_loss, self.weights)
            losses.update(zip(names, terms))
        out = {key: losses[key] for key in order}
        if dn_meta is not None:
            out.update(self.denoising_losses(all_cls_scores[:, :, :pad], all_bbox_preds[:, :, :pad], gt, dn_meta))
        return out

    def hungarian(self, logits: Tensor, boxes: Tensor, labels: Sequence[Tensor], gt: GroundTruth) -> Matched:
        """Match each image's queries (logits [B, Q, K], boxes [B, Q, 4]) to its objects of
        ``labels`` (per image [n_i]) and ``gt`` boxes; the targets normalized cxcywh."""
        scales = gt.scales(boxes)
        indices = [self.matcher(logits[i], boxes[i], labels[i], gt.boxes[i], scales[i]) for i in range(len(labels))]
        return Matched.gather([(q.to(boxes.device), t.to(boxes.device)) for q, t in indices], gt.targets(labels))

    def denoising_losses(self, cls_scores: Tensor, bbox_preds: Tensor, gt: GroundTruth,
                         dn_meta: Mapping[str, int]) -> dict[str, Tensor]:
        """Co-DINO's denoising queries of every decoder layer: cls_scores [L, B, pad, K],
        bbox_preds [L, B, pad, 4]; each positive copy assigned to its object."""
        counts = [len(lab) for lab in gt.labels]
        indices = dn_positive_indices(counts, dn_meta["num_dn_group"], dn_meta["pad_size"], bbox_preds.device)
        matched = Matched.gather(indices, gt.targets(gt.labels))
        keys = layer_keys(len(cls_scores), prefix="dn_")
        return self.assigned_losses(cls_scores, bbox_preds, matched, gt.scales(bbox_preds), keys)

    def aux_losses(self, all_cls_scores: Tensor, all_bbox_preds: Tensor, targets: AuxTargets,
                   img_hw: Sequence[tuple[int, int]], head_index: int) -> dict[str, Tensor]:
        """The positive queries of auxiliary head ``head_index``: all_cls_scores [L, B, M, K],
        all_bbox_preds [L, B, M, 4] of every decoder layer, supervised by ``targets`` (no
        matching) -> ``loss_*_aux{k}`` / ``d{l}.loss_*_aux{k}``, times ``lambda_1``."""
        keys = layer_keys(len(all_cls_scores), suffix=f"_aux{head_index}")
        return self.assigned_losses(all_cls_scores, all_bbox_preds, targets.matched(),
                                    image_scales(img_hw, all_bbox_preds), keys, self.lambda_1)

    def assigned_losses(self, all_cls_scores: Tensor, all_bbox_preds: Tensor, matched: Matched, scales: Tensor,
                        keys: list[tuple[str, ...]], factor: float = 1.0) -> dict[str, Tensor]:
        """Every decoder layer ([L, B, Q, K] / [L, B, Q, 4]) of a group assigned in advance, times
        ``factor``, under its ``layer_keys``, in the official order."""
        losses = {}
        for names, logits, boxes in zip(keys, all_cls_scores, all_bbox_preds):
            terms = layer_losses(logits, boxes, matched, scales, self.class_loss, self.weights)
            losses.update(zip(names, (factor * term for term in terms)))
        return {key: losses[key] for key in in_official_order(keys)}


def co_deformable_detr_criterion(lambda_1: float = 1.0) -> CoDETRCriterion:
    """Co-Deformable-DETR: focal loss (alpha 0.25, gamma 2) weight 2, class-agnostic encoder,
    decoder layers matched before the encoder."""
    return CoDETRCriterion(FocalClassLoss(0.25, 2.0), LossWeights(cls=2.0), class_agnostic_encoder=True,
                           match_encoder_first=False, lambda_1=lambda_1)


def co_dino_criterion(lambda_1: float = 1.0) -> CoDETRCriterion:
    """Co-DINO: quality focal loss (beta 2) weight 1, encoder top-k with real labels, matched
    first."""
    return CoDETRCriterion(QualityFocalClassLoss(2.0), LossWeights(cls=1.0), class_agnostic_encoder=False,
                           match_encoder_first=True, lambda_1=lambda_1)
