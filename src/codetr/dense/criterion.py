"""Targets and losses of DeFCN (POTO + auxiliary one-to-many loss) and FCOS.

Inputs are the head's per-level outputs flattened over levels (``points.flatten_levels``):
cls [B, R, K] logits, deltas [B, R, 4] ltrb pixels, quality [B, R, 1] logits (DeFCN filter or
FCOS centerness) or None; ``points`` are the per-level [R_l, 2] point positions. Loss
normalisers (numbers of positives) are averaged over ranks, as official
(``codetr.distributed.mean_count_over_ranks``). Terms are unweighted; each criterion's
``weight_dict`` names the losses and their weights, the other terms are logs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed as du
from ..assign.fcos import center_region_mask, fcos_assign, inside_boxes
from ..assign.poto import aux_topk_assign, pairwise_iou, poto_assign, poto_quality
from ..coders import ltrb_decode, ltrb_encode
from ..losses import focal_loss_on_probs, sigmoid_focal_loss
from ..structures import Target
from .losses import ltrb_giou_loss


@dataclass
class Assignment:
    """matched [B, R] object index per point (-1: background), and the targets it implies:
    labels [B, R] (``num_classes`` = background, the official convention) and ltrb deltas
    [B, R, 4] (zero at background)."""

    matched: Tensor
    labels: Tensor
    deltas: Tensor

    @property
    def foreground(self) -> Tensor:
        return self.matched >= 0


def make_assignment(matched: list[Tensor], targets: list[Target], points: Tensor, num_classes: int) -> Assignment:
    labels, deltas = [], []
    for m, t in zip(matched, targets):
        fg = m >= 0
        lab = torch.full_like(m, num_classes)
        lab[fg] = t.labels[m[fg]]
        d = points.new_zeros(len(m), 4)
        d[fg] = ltrb_encode(points[fg], t.boxes[m[fg]])
        labels.append(lab)
        deltas.append(d)
    return Assignment(torch.stack(matched), torch.stack(labels), torch.stack(deltas))


def one_hot_targets(labels: Tensor, num_classes: int) -> Tensor:
    """[...] labels with background ``num_classes`` -> [..., num_classes] {0, 1}."""
    return F.one_hot(labels, num_classes + 1)[..., :num_classes].float()


class DeFCNCriterion:
    """POTO one-to-one targets -> focal loss on the score sigmoid(cls) * sigmoid(filter) and
    GIoU on the matched points (weight ``reg_weight``); optional auxiliary one-to-many focal loss
    on sigmoid(cls). Logs: positives per object, ``num_fg_per_gt`` (and ``_aux``)."""

    def __init__(self, num_classes: int, strides: list[int], alpha: float = 0.8, center_radius: float = 1.5,
                 aux_topk: int | None = 9, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 reg_weight: float = 2.0) -> None:
        self.num_classes, self.strides = num_classes, list(strides)
        self.alpha, self.center_radius, self.aux_topk = alpha, center_radius, aux_topk
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.weight_dict = {"loss_cls": 1.0, "loss_box_reg": reg_weight, **({"loss_cls_aux": 1.0} if aux_topk else {})}

    def quality(self, prob: Tensor, deltas: Tensor, points: Tensor, target: Target) -> Tensor:
        """[G, R] Q of one image: prob [R, K] scores, deltas [R, 4]."""
        iou = pairwise_iou(target.boxes, ltrb_decode(points, deltas))
        return poto_quality(prob[:, target.labels].t(), iou, self.alpha)

    @torch.no_grad()
    def poto_targets(self, prob: Tensor, deltas: Tensor, points: list[Tensor],
                     targets: list[Target]) -> Assignment:
        all_points = torch.cat(points)
        matched = []
        for p, d, t in zip(prob, deltas, targets):
            quality = self.quality(p, d, all_points, t)
            gt_idx, point_idx = poto_assign(quality, center_region_mask(points, self.strides, t.boxes, self.center_radius))
            m = torch.full((len(all_points),), -1, dtype=torch.long, device=all_points.device)
            m[point_idx] = gt_idx
            matched.append(m)
        return make_assignment(matched, targets, all_points, self.num_classes)

    @torch.no_grad()
    def aux_targets(self, prob: Tensor, deltas: Tensor, points: list[Tensor], targets: list[Target]) -> Assignment:
        all_points, sizes = torch.cat(points), [len(p) for p in points]
        matched = [aux_topk_assign(self.quality(p, d, all_points, t), sizes, self.aux_topk,
                                   inside_boxes(all_points, t.boxes))
                   for p, d, t in zip(prob, deltas, targets)]
        return make_assignment(matched, targets, all_points, self.num_classes)

    def __call__(self, cls: Tensor, deltas: Tensor, quality: Tensor | None, points: list[Tensor],
                 targets: list[Target]) -> dict[str, Tensor]:
        prob = cls.sigmoid() * quality.sigmoid() if quality is not None else cls.sigmoid()
        assign = self.poto_targets(prob.detach(), deltas.detach(), points, targets)
        fg = assign.foreground
        num_fg = du.mean_count_over_ranks(fg.sum())
        out = {
            "loss_cls": focal_loss_on_probs(prob, one_hot_targets(assign.labels, self.num_classes),
                                            self.focal_alpha, self.focal_gamma).sum() / num_fg,
            "loss_box_reg": ltrb_giou_loss(deltas[fg], assign.deltas[fg]).sum() / num_fg,
        }
        num_gt = max(1, sum(len(t) for t in targets))
        out["num_fg_per_gt"] = fg.sum().float() / num_gt
        if self.aux_topk:
            aux = self.aux_targets(cls.detach().sigmoid(), deltas.detach(), points, targets)
            aux_fg = aux.foreground
            out["loss_cls_aux"] = sigmoid_focal_loss(cls, one_hot_targets(aux.labels, self.num_classes),
                                                     self.focal_alpha, self.focal_gamma).sum() / \
                du.mean_count_over_ranks(aux_fg.sum())
            out["num_fg_per_gt_aux"] = aux_fg.sum().float() / num_gt
        return out


class FCOSCriterion:
    """FCOS: focal loss on sigmoid(cls), GIoU weighted by the center-ness target, and BCE on
    the center-ness logits, over points assigned by ``fcos_assign``; all weights 1."""

    def __init__(self, num_classes: int, strides: list[int], size_ranges: list[tuple[float, float]],
                 center_radius: float = 1.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        self.num_classes, self.strides, self.size_ranges = num_classes, list(strides), size_ranges
        self.center_radius, self.focal_alpha, self.focal_gamma = center_radius, focal_alpha, focal_gamma
        self.weight_dict = {"loss_cls": 1.0, "loss_box_reg": 1.0, "loss_centerness": 1.0}

    @torch.no_grad()
    def targets(self, points: list[Tensor], targets: list[Target]) -> Assignment:
        matched = [fcos_assign(points, self.strides, t.boxes, self.size_ranges, self.center_radius) for t in targets]
        return make_assignment(matched, targets, torch.cat(points), self.num_classes)

    @staticmethod
    def centerness(deltas: Tensor) -> Tensor:
        """FCOS Eq. 3: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of ltrb [N, 4]."""
        lr, tb = deltas[:, [0, 2]], deltas[:, [1, 3]]
        return torch.sqrt((lr.amin(1) / lr.amax(1)).clamp(min=0) * (tb.amin(1) / tb.amax(1)).clamp(min=0))

    def __call__(self, cls: Tensor, deltas: Tensor, quality: Tensor | None, points: list[Tensor],
                 targets: list[Target]) -> dict[str, Tensor]:
        assign = self.targets(points, targets)
        fg = assign.foreground
        num_fg = du.mean_count_over_ranks(fg.sum())
        ctr_target = self.centerness(assign.deltas[fg])
        reg = ltrb_giou_loss(deltas[fg], assign.deltas[fg])
        return {
            "loss_cls": sigmoid_focal_loss(cls, one_hot_targets(assign.labels, self.num_classes),
                                           self.focal_alpha, self.focal_gamma).sum() / num_fg,
            "loss_box_reg": (reg * ctr_target).sum() / du.mean_count_over_ranks(ctr_target.sum()),
            "loss_centerness": F.binary_cross_entropy_with_logits(
                quality[fg][:, 0], ctr_target, reduction="sum") / num_fg,
            "num_fg_per_gt": fg.sum().float() / max(1, sum(len(t) for t in targets)),
        }
