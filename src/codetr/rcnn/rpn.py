"""Region proposal network (Faster R-CNN, Ren et al. 2015), mmdet 2.25.3 ``RPNHead`` semantics.

Head: ``relu(conv3x3(x))`` -> ``rpn_cls`` (1x1, one sigmoid objectness logit per anchor) and
``rpn_reg`` (1x1, delta-xywh per anchor), shared over levels; parameter names match mmdet's
``rpn_head.*``.

Targets (per image, on the anchors inside the padded image only, ``valid_flags``): Max-IoU
assignment, random sampling, objectness label 1 for sampled positives and 0 for sampled
negatives (weight 1 on both, 0 elsewhere), delta targets on positives.

Loss, per level ``l``: ``w_cls * sum(BCE * weight) / (n + eps)`` and ``w_box * sum(|d - t| *
weight) / (n + eps)``, ``n = sum_images(max(#pos, 1) + max(#neg, 1))`` (not all-reduced),
``eps`` the float32 machine epsilon (mmdet's avg_factor rule, ``losses.reduce_by_avg_factor``).

Proposals, per image: per level the top ``nms_pre`` sigmoid scores (descending sort), decode
with clipping to ``img_shape``, drop boxes with ``w`` or ``h <= min_bbox_size``, NMS per level
(``batched_nms`` with the level as the group), keep ``max_per_img``: ``[M, 5]`` (x1, y1, x2, y2,
score), detached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codetr.anchors import AnchorGenerator
from codetr.assign.max_iou import MaxIoUAssignment
from codetr.coders import delta_xywh_decode, delta_xywh_encode
from codetr.losses import reduce_by_avg_factor
from codetr.ops.nms import batched_nms
from codetr.sampling import AssignSampleConfig, Sample, assign_and_sample


@dataclass(frozen=True)
class ProposalConfig:
    """mmdet ``rpn_proposal`` (train: nms_pre 4000) / ``test_cfg.rpn`` (test: 1000)."""

    nms_pre: int = 1000
    max_per_img: int = 1000
    iou_threshold: float = 0.7
    min_bbox_size: float = 0.0

    @classmethod
    def from_mmdet(cls, section: dict) -> "ProposalConfig":
        """From mmdet 2.x ``train_cfg.rpn_proposal`` / ``test_cfg.rpn`` (``nms=dict(type='nms',
        iou_threshold=...)``; the older ``nms_thr`` / ``max_num`` and ``nms_across_levels`` are refused)."""
        nms = section.get("nms")
        if not isinstance(nms, dict) or nms.get("type") != "nms" or section.get("nms_across_levels", False):
            raise ValueError(f"RPN proposals: only per-level plain NMS (nms=dict(type='nms', ...)) is implemented, "
                             f"got {section}")
        return cls(int(section["nms_pre"]), int(section["max_per_img"]), float(nms["iou_threshold"]),
                   float(section.get("min_bbox_size", 0)))


@dataclass
class ImageTargets:
    """Over all anchors of one image, levels concatenated (N): ``labels`` [N] (0 object,
    1 background), ``label_weights`` [N], ``box_targets`` [N, 4], ``box_weights`` [N, 4];
    ``assignment`` / ``sample`` index the image's VALID anchors."""

    labels: Tensor
    label_weights: Tensor
    box_targets: Tensor
    box_weights: Tensor
    assignment: MaxIoUAssignment
    sample: Sample


def rpn_image_targets(anchors: Tensor, valid: Tensor, gt_boxes: Tensor, cfg: AssignSampleConfig,
                      stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                      means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> ImageTargets:
    """anchors [N, 4], valid [N] bool, gt_boxes [G, 4] -> ``ImageTargets`` (module docstring)."""
    inside = torch.nonzero(valid).reshape(-1)  # [V] anchor index of each valid anchor
    candidates = anchors[inside]
    sample = assign_and_sample(candidates, gt_boxes, cfg)
    n = len(anchors)
    pos, neg = inside[sample.pos_inds], inside[sample.neg_inds]
    labels = torch.ones(n, dtype=torch.long, device=anchors.device)
    labels[pos] = 0
    label_weights = anchors.new_zeros(n)
    label_weights[pos] = 1.0
    label_weights[neg] = 1.0
    box_targets, box_weights = anchors.new_zeros(n, 4), anchors.new_zeros(n, 4)
    if len(pos):
        box_targets[pos] = delta_xywh_encode(sample.pos_boxes, sample.pos_gt_boxes, means, stds)
        box_weights[pos] = 1.0
    return ImageTargets(labels, label_weights, box_targets, box_weights, sample.assignment, sample)


def _flat_levels(maps: list[Tensor], width: int) -> list[Tensor]:
    """Per level [B, A*width, H, W] -> [B, H*W*A, width] (position-major, anchor-minor)."""
    return [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, width) for m in maps]


def _per_level(targets: list[ImageTargets], name: str, sizes: list[int]) -> list[Tensor]:
    """One target field, per image [N, ...] -> per level [B * N_l, ...] (image-major)."""
    stacked = torch.stack([getattr(t, name) for t in targets])  # [B, N, ...]
    return [x.reshape(-1, *stacked.shape[2:]) for x in stacked.split(sizes, dim=1)]


def rpn_losses(cls_scores: list[Tensor], bbox_preds: list[Tensor], targets: list[ImageTargets],
               cls_weight: float, box_weight: float) -> dict[str, list[Tensor]]:
    """cls_scores per level [B, A, H, W], bbox_preds per level [B, 4A, H, W], one
    ``ImageTargets`` per image -> ``{'loss_rpn_cls': [L], 'loss_rpn_bbox': [L]}`` scalars."""
    n = sum(max(len(t.sample.pos_inds), 1) + max(len(t.sample.neg_inds), 1) for t in targets)
    sizes = [m.shape[1] * m.shape[2] * m.shape[3] for m in cls_scores]  # anchors per level
    labels, label_w = _per_level(targets, "labels", sizes), _per_level(targets, "label_weights", sizes)
    box_t, box_w = _per_level(targets, "box_targets", sizes), _per_level(targets, "box_weights", sizes)
    out: dict[str, list[Tensor]] = {"loss_rpn_cls": [], "loss_rpn_bbox": []}
    for l, (logit, delta) in enumerate(zip(_flat_levels(cls_scores, 1), _flat_levels(bbox_preds, 4))):
        objectness = (labels[l] == 0).to(logit.dtype)  # [B*N_l]
        bce = F.binary_cross_entropy_with_logits(logit.reshape(-1), objectness, reduction="none")
        out["loss_rpn_cls"].append(cls_weight * reduce_by_avg_factor(bce * label_w[l], n))
        l1 = (delta.reshape(-1, 4) - box_t[l]).abs()
        out["loss_rpn_bbox"].append(box_weight * reduce_by_avg_factor(l1 * box_w[l], n))
    return out


def _top_per_level(scores: Tensor, deltas: Tensor, anchors: Tensor, nms_pre: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``nms_pre`` highest scores [N] of one level with their deltas [N, 4], anchors [N, 4]."""
    if not 0 < nms_pre < len(scores):
        return scores, deltas, anchors
    ranked, order = scores.sort(descending=True)
    order = order[:nms_pre]
    return ranked[:nms_pre], deltas[order], anchors[order]


def rpn_proposals(cls_maps: list[Tensor], reg_maps: list[Tensor], anchors: list[Tensor],
                  img_shape: Sequence[int], cfg: ProposalConfig,
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> Tensor:
    """One image: cls_maps per level [A, H, W], reg_maps [4A, H, W], anchors [H*W*A, 4],
    img_shape (h, w[, c]) -> proposals [M <= max_per_img, 5] (module docstring)."""
    picked = []
    for level, (c, r, a) in enumerate(zip(cls_maps, reg_maps, anchors)):
        scores = c.detach().permute(1, 2, 0).reshape(-1).sigmoid()  # [H*W*A]
        deltas = r.detach().permute(1, 2, 0).reshape(-1, 4)
        s, d, a = _top_per_level(scores, deltas, a, cfg.nms_pre)
        picked.append((s, d, a, torch.full_like(s, level, dtype=torch.long)))
    scores, deltas, priors, level_ids = (torch.cat(x) for x in zip(*picked))
    boxes = delta_xywh_decode(priors, deltas, means, stds, max_shape=img_shape)
    if cfg.min_bbox_size >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        big = (wh > cfg.min_bbox_size).all(dim=1)
        boxes, scores, level_ids = boxes[big], scores[big], level_ids[big]
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5)
    dets, _ = batched_nms(boxes, scores, level_ids, {"type": "nms", "iou_threshold": cfg.iou_threshold})
    return dets[:cfg.max_per_img]


class RPNHead(nn.Module):
    """RPN head plus its anchors; ``forward`` gives the raw maps, ``targets`` / ``loss`` /
    ``proposals`` the training and test computations (module docstring).

    Args: in_channels / feat_channels of the shared conv; ``anchors`` the anchor generator
    (its levels must match the feature maps); ``cls_weight`` / ``box_weight`` the loss weights
    (Co-DETR: ``num_dec_layer * lambda_2`` each); ``stds`` / ``means`` the delta coder's.
    """

    def __init__(self, in_channels: int, feat_channels: int, anchors: AnchorGenerator,
                 cls_weight: float = 1.0, box_weight: float = 1.0,
                 stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> None:
        super().__init__()
        a = anchors.num_base_anchors[0]
        if any(n != a for n in anchors.num_base_anchors):
            raise ValueError("a shared RPN head needs the same number of anchors on every level")
        self.anchors = anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, a, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, 4 * a, 1)
        self.cls_weight, self.box_weight = float(cls_weight), float(box_weight)
        self.stds, self.means = tuple(stds), tuple(means)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):  # mmdet: Normal(std=0.01)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """feats per level [B, C, H, W] -> (objectness logits [B, A, H, W], deltas [B, 4A, H, W])."""
        hidden = [F.relu(self.rpn_conv(x)) for x in feats]
        return [self.rpn_cls(h) for h in hidden], [self.rpn_reg(h) for h in hidden]

    def grid(self, cls_scores: list[Tensor]) -> list[Tensor]:
        """Anchors per level [H*W*A, 4] for maps [B, A, H, W]."""
        return self.anchors.grid_anchors([tuple(m.shape[-2:]) for m in cls_scores], cls_scores[0].device)

    def targets(self, cls_scores: list[Tensor], gt_boxes: list[Tensor], pad_shapes: list[Sequence[int]],
                cfg: AssignSampleConfig) -> list[ImageTargets]:
        """Per image targets; ``pad_shapes`` (h, w[, c]) bound the valid anchors."""
        sizes = [tuple(m.shape[-2:]) for m in cls_scores]
        anchors = torch.cat(self.grid(cls_scores))
        device = cls_scores[0].device
        return [rpn_image_targets(anchors, torch.cat(self.anchors.valid_flags(sizes, tuple(pad[:2]), device)),
                                  gt, cfg, self.stds, self.means)
                for gt, pad in zip(gt_boxes, pad_shapes)]

    def loss(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], gt_boxes: list[Tensor],
             pad_shapes: list[Sequence[int]], cfg: AssignSampleConfig) -> dict[str, list[Tensor]]:
        """Per-level weighted losses (mmdet keys ``loss_rpn_cls``, ``loss_rpn_bbox``)."""
        targets = self.targets(cls_scores, gt_boxes, pad_shapes, cfg)
        return rpn_losses(cls_scores, bbox_preds, targets, self.cls_weight, self.box_weight)

    def proposals(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                  img_shapes: list[Sequence[int]], cfg: ProposalConfig) -> list[Tensor]:
        """Per image proposals [M, 5] in input pixels, detached."""
        anchors = self.grid(cls_scores)
        return [rpn_proposals([c[i] for c in cls_scores], [r[i] for r in bbox_preds], anchors,
                              img_shapes[i], cfg, self.stds, self.means)
                for i in range(len(img_shapes))]


def rpn_from_mmdet(head: dict) -> RPNHead:
    """An mmdet ``RPNHead`` dict (sigmoid CE + L1 on deltas) -> ``RPNHead``."""
    if head.get("type") != "RPNHead" or head["loss_cls"]["type"] != "CrossEntropyLoss" or \
            not head["loss_cls"].get("use_sigmoid", False) or head["loss_bbox"]["type"] != "L1Loss":
        raise ValueError("only the RPNHead with sigmoid cross-entropy and L1 losses is supported")
    ag, coder = head["anchor_generator"], head.get("bbox_coder", {})
    anchors = AnchorGenerator(ag["strides"], ag["ratios"], octave_base_scale=ag["octave_base_scale"],
                              scales_per_octave=ag["scales_per_octave"])
    return RPNHead(head["in_channels"], head.get("feat_channels", head["in_channels"]), anchors,
                   head["loss_cls"].get("loss_weight", 1.0), head["loss_bbox"].get("loss_weight", 1.0),
                   stds=coder.get("target_stds", (1.0,) * 4), means=coder.get("target_means", (0.0,) * 4))
