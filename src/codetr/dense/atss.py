"""The ATSS head (Zhang et al., CVPR 2020) as Co-DETR's auxiliary ``CoATSSHead`` (mmdet 2.25.3).

    P_l [B, C, H, W] -> cls tower (n x [3x3 conv no bias, GN(32), ReLU]) -> cls_logits [B, A*K, H, W]
                     -> reg tower (same, own weights) -> scale_l * deltas  [B, A*4, H, W] (DeltaXYWH)
                                                      -> centerness       [B, A, H, W] logits

Anchors: mmdet ``AnchorGenerator`` (``codetr.anchors``), valid where their cell lies inside the
image's padded shape. Targets (``reg_decoded_bbox``): ATSS assignment (``codetr.assign.atss``)
on the valid anchors; the regression target is the assigned box itself, compared with the
decoded prediction. Losses, per level, as mmdet:

* focal (Lin et al. 2017) over every valid anchor x class / N_pos, N_pos = the mean over ranks of
  sum_img max(#pos_img, 1), at least 1;
* GIoU of decoded positives weighted by their centerness target / (the mean over ranks of the
  sum of those targets, at least 1);
* centerness BCE (FCOS, Tian et al. 2019, Eq. 3 target) on positives / N_pos;

mmdet's ``avg_factor`` reduction divides by ``factor + float32 eps`` (the GIoU by ``1 + eps``
before the centerness normaliser): ``losses.reduce_by_avg_factor`` on the per-level sums.
Test (mmdet ``BaseDenseHead._get_bboxes_single``): per level the ``nms_pre`` best (anchor, class)
pairs by sigmoid(cls) over ``score_thr``, decoded and clipped to the image, rescaled to original
pixels, scores x sigmoid(centerness), class-aware NMS, ``max_per_img`` kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as du
from ..anchors import AnchorGenerator
from ..assign.atss import atss_assign
from ..boxes import MMDET_EPS, elementwise_generalized_box_iou
from ..coders import delta_xywh_decode
from ..losses import reduce_by_avg_factor, sigmoid_focal_loss
from .base import keep_top, per_prior, top_candidates


class ScalarScale(nn.Module):
    """A learnable 0-dim multiplier (mmcv ``Scale``; a 0-dim parameter, unlike FCOS's [1])."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.value


def conv_gn_relu(in_channels: int, out_channels: int, groups: int = 32) -> nn.Sequential:
    """3x3 conv without bias (a norm follows), GroupNorm, ReLU: mmcv ``ConvModule`` with GN."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, out_channels), nn.ReLU())


@dataclass(frozen=True)
class ATSSLossConfig:
    """Loss weights (Co-DETR: ``num_dec_layer * lambda_2`` scaled) and focal constants."""

    cls_weight: float = 1.0
    giou_weight: float = 2.0
    centerness_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass(frozen=True)
class ATSSTestConfig:
    nms_pre: int = 1000
    score_thr: float = 0.0
    nms_iou: float = 0.6
    max_per_img: int = 100


@dataclass
class ATSSOutputs:
    """Raw head outputs, one tensor per level: ``cls_logits`` [B, A*K, H, W], ``deltas``
    [B, A*4, H, W] (already times the level's scale), ``centerness`` [B, A, H, W] logits."""

    cls_logits: list[Tensor]
    deltas: list[Tensor]
    centerness: list[Tensor]

    @property
    def featmap_sizes(self) -> list[tuple[int, int]]:
        return [tuple(x.shape[-2:]) for x in self.cls_logits]


class PosCoords(NamedTuple):
    """What Co-DETR turns into positive queries (the official ``pos_coords`` tuple): per image
    ``anchors`` [N, 4] (zero rows for invalid anchors), ``labels`` [N] (K = background),
    ``targets`` [N, 4] assigned boxes xyxy (zero rows elsewhere), and the tag ``'atss'``."""

    anchors: list[Tensor]
    labels: list[Tensor]
    targets: list[Tensor]
    kind: str = "atss"


@dataclass
class ATSSTargets:
    """Over the batch, all anchors of all levels: ``anchors`` [B, N, 4] (zero rows where
    invalid), ``labels`` [B, N] long (``num_classes`` = background or invalid), ``boxes``
    [B, N, 4] assigned boxes, ``valid`` [B, N] bool, ``level_sizes`` anchors per level."""

    anchors: Tensor
    labels: Tensor
    boxes: Tensor
    valid: Tensor
    level_sizes: list[int]
    num_classes: int

    @property
    def positive(self) -> Tensor:
        return self.labels < self.num_classes

    def pos_coords(self) -> PosCoords:
        return PosCoords(list(self.anchors.unbind(0)), list(self.labels.unbind(0)), list(self.boxes.unbind(0)))


class ATSSTrainOutput(NamedTuple):
    """``losses``: official names -> per-level weighted losses; ``pos_coords``: see PosCoords."""

    losses: dict[str, list[Tensor]]
    pos_coords: PosCoords


# -- targets ------------------------------------------------------------------------------

def image_targets(anchors: Tensor, valid: Tensor, level_sizes: list[int], gt_boxes: Tensor, gt_labels: Tensor,
                  num_classes: int, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """One image: anchors [N, 4] of all levels, valid [N] bool -> (anchors [N, 4] with zero
    rows where invalid, labels [N] (``num_classes`` = background), boxes [N, 4] assigned box
    or zeros). ATSS runs on the valid anchors only (mmdet ``_get_target_single`` + ``unmap``)."""
    inside = valid.nonzero()[:, 0]  # [V]
    valid_per_level = [int(v.sum()) for v in valid.split(level_sizes)]
    res = atss_assign(anchors[inside], valid_per_level, gt_boxes, gt_labels, topk=topk)
    pos = inside[res.positive]  # [P] anchor indices
    matched = res.gt_inds[res.positive] - 1  # [P] box indices
    labels = torch.full((anchors.shape[0],), num_classes, dtype=torch.long, device=anchors.device)
    labels[pos] = gt_labels[matched]
    boxes = torch.zeros_like(anchors)
    boxes[pos] = gt_boxes[matched].to(anchors.dtype)
    return torch.where(valid[:, None], anchors, torch.zeros_like(anchors)), labels, boxes  # +0.0 rows


def centerness_target(anchors: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness (Tian et al. 2019, Eq. 3) of the anchor centres in their boxes:
    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)); anchors, boxes [P, 4] -> [P]."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    l, t, r, b = cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy
    ratio_x = torch.minimum(l, r) / torch.maximum(l, r)
    ratio_y = torch.minimum(t, b) / torch.maximum(t, b)
    return torch.sqrt(ratio_x * ratio_y)


def per_level_sum(values: Tensor, level_ids: Tensor, num_levels: int) -> Tensor:
    """values [M] with the level of each in level_ids [M] -> [num_levels] sums (0 if none)."""
    return values.new_zeros(num_levels).index_add(0, level_ids, values)


# -- losses -------------------------------------------------------------------------------

def flatten_outputs(out: ATSSOutputs, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-level maps -> cls [B, N, K], deltas [B, N, 4], centerness [B, N] (float32),
    N = sum_l H_l W_l A: [B, A*K, H, W] -> [B, H, W, A*K] -> [B, HWA, K], level by level."""
    b = out.cls_logits[0].shape[0]
    cls = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, num_classes) for x in out.cls_logits], 1)
    deltas = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in out.deltas], 1)
    ctr = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1) for x in out.centerness], 1)
    return cls.float(), deltas.float(), ctr.float()


def atss_losses(out: ATSSOutputs, tg: ATSSTargets, stds: Sequence[float], means: Sequence[float],
                cfg: ATSSLossConfig) -> dict[str, list[Tensor]]:
    """The three weighted per-level losses (module docstring) under their official names."""
    k, num_levels = tg.num_classes, len(tg.level_sizes)
    cls, deltas, ctr = flatten_outputs(out, k)
    level_of = torch.repeat_interleave(torch.arange(num_levels, device=cls.device),
                                       torch.tensor(tg.level_sizes, device=cls.device))  # [N]
    num_pos = sum(max(int(p.sum()), 1) for p in tg.positive)  # per image at least 1
    norm = du.mean_count_over_ranks(float(num_pos))
    onehot = F.one_hot(tg.labels, k + 1)[..., :k].to(cls.dtype)  # [B, N, K]
    focal = sigmoid_focal_loss(cls, onehot, cfg.focal_alpha, cfg.focal_gamma).sum(-1) * tg.valid  # [B, N]
    loss_cls = reduce_by_avg_factor(per_level_sum(focal.sum(0), level_of, num_levels), norm, summed=True)
    pos = tg.positive  # [B, N]
    img, idx = pos.nonzero(as_tuple=True)  # [P] each
    anchors, boxes, lvl = tg.anchors[img, idx], tg.boxes[img, idx], level_of[idx]
    ctr_t = centerness_target(anchors, boxes)  # [P]
    pred = delta_xywh_decode(anchors, deltas[img, idx], means, stds)  # [P, 4], no clipping
    giou = elementwise_generalized_box_iou(pred, boxes, eps=MMDET_EPS, clamp=True)
    loss_giou = reduce_by_avg_factor(per_level_sum((1 - giou) * ctr_t, lvl, num_levels), 1.0, summed=True)
    ctr_norm = du.mean_count_over_ranks(per_level_sum(ctr_t.detach(), lvl, num_levels).sum())
    bce = F.binary_cross_entropy_with_logits(ctr[img, idx], ctr_t, reduction="none")
    loss_ctr = reduce_by_avg_factor(per_level_sum(bce, lvl, num_levels), norm, summed=True)
    tie = 0 * (deltas.sum() + ctr.sum())  # levels without positives stay in the graph
    return {"loss_cls": list((cfg.cls_weight * loss_cls).unbind(0)),
            "loss_bbox": list((cfg.giou_weight * loss_giou / ctr_norm + tie).unbind(0)),
            "loss_centerness": list((cfg.centerness_weight * loss_ctr + tie).unbind(0))}


# -- the head -----------------------------------------------------------------------------

class ATSSHead(nn.Module):
    """Towers, predictors and per-level scales (module docstring), with the anchors, ATSS
    targets, losses (``loss``) and detections (``predict``) of mmdet's ``ATSSHead``.
    ``strides`` name the levels (one feature map each, finest first)."""

    def __init__(self, num_classes: int, in_channels: int, strides: Sequence[int], feat_channels: int = 256,
                 stacked_convs: int = 4, octave_base_scale: int = 8, scales_per_octave: int = 1,
                 ratios: Sequence[float] = (1.0,), target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                 target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2), topk: int = 9,
                 loss_cfg: ATSSLossConfig = ATSSLossConfig(), test_cfg: ATSSTestConfig = ATSSTestConfig(),
                 prior_prob: float = 0.01) -> None:
        super().__init__()
        self.num_classes, self.topk = num_classes, topk
        self.target_means, self.target_stds = tuple(target_means), tuple(target_stds)
        self.loss_cfg, self.test_cfg = loss_cfg, test_cfg
        self.anchor_generator = AnchorGenerator(strides, ratios, octave_base_scale=octave_base_scale,
                                                scales_per_octave=scales_per_octave)
        a = self.anchor_generator.num_base_anchors[0]
        self.cls_tower = nn.ModuleList(conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels)
                                       for i in range(stacked_convs))
        self.reg_tower = nn.ModuleList(conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels)
                                       for i in range(stacked_convs))
        self.cls_logits = nn.Conv2d(feat_channels, a * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(feat_channels, a * 4, 3, padding=1)
        self.centerness = nn.Conv2d(feat_channels, a, 3, padding=1)
        self.scales = nn.ModuleList(ScalarScale(1.0) for _ in strides)
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        """mmdet's init: every conv N(0, 0.01) with zero bias; the cls bias at the prior."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> ATSSOutputs:
        """feats: per level [B, C, H_l, W_l], one per stride."""
        if len(feats) != len(self.scales):
            raise ValueError(f"{len(feats)} feature maps for a head of {len(self.scales)} levels")
        cls, deltas, ctr = [], [], []
        for x, scale in zip(feats, self.scales):
            c, r = x, x
            for conv in self.cls_tower:
                c = conv(c)
            for conv in self.reg_tower:
                r = conv(r)
            cls.append(self.cls_logits(c))
            deltas.append(scale(self.box_deltas(r)).float())  # no exp: ATSS regresses deltas
            ctr.append(self.centerness(r))
        return ATSSOutputs(cls, deltas, ctr)

    def targets(self, out: ATSSOutputs, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                pad_shapes: Sequence[tuple[int, int]]) -> ATSSTargets:
        """ATSS targets of every image; ``pad_shapes`` (h, w) bound the valid anchors."""
        sizes, device = out.featmap_sizes, out.cls_logits[0].device
        per_level = self.anchor_generator.grid_anchors(sizes, device)
        anchors, level_sizes = torch.cat(per_level), [len(x) for x in per_level]  # [N, 4]
        rows, valids = [], []
        for boxes, labels, hw in zip(gt_boxes, gt_labels, pad_shapes):
            valids.append(torch.cat(self.anchor_generator.valid_flags(sizes, tuple(hw[:2]), device)))  # [N]
            rows.append(image_targets(anchors, valids[-1], level_sizes, boxes, labels, self.num_classes, self.topk))
        a, l, b = (torch.stack(t) for t in zip(*rows))
        return ATSSTargets(a, l, b, torch.stack(valids), level_sizes, self.num_classes)

    def loss(self, out: ATSSOutputs, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
             pad_shapes: Sequence[tuple[int, int]]) -> ATSSTrainOutput:
        """Weighted per-level losses (official names) and Co-DETR's ``pos_coords``."""
        tg = self.targets(out, gt_boxes, gt_labels, pad_shapes)
        losses = atss_losses(out, tg, self.target_stds, self.target_means, self.loss_cfg)
        return ATSSTrainOutput(losses, tg.pos_coords())

    @torch.no_grad()
    def predict(self, out: ATSSOutputs, img_shapes: Sequence[tuple[int, int]],
                scale_factors: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per image (dets [M, 5] xyxy + score, labels [M]); boxes clipped to ``img_shapes``
        (h, w) and, when given, divided by ``scale_factors`` [B, 4] (w, h, w, h)."""
        per_level = self.anchor_generator.grid_anchors(out.featmap_sizes, out.cls_logits[0].device)
        results = []
        for i, hw in enumerate(img_shapes):
            maps = [[m[i] for m in out.cls_logits], [m[i] for m in out.deltas], [m[i] for m in out.centerness]]
            sf = None if scale_factors is None else scale_factors[i]
            results.append(self._predict_image(*maps, per_level, tuple(hw[:2]), sf))
        return results

    def _level_candidates(self, cls: Tensor, deltas: Tensor, ctr: Tensor, anchors: Tensor,
                          hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One level of one image: cls [A*K, H, W], deltas [A*4, H, W], ctr [A, H, W] -> the
        ``nms_pre`` best (anchor, class) pairs over ``score_thr``: boxes [M, 4] (decoded,
        clipped), scores [M], labels [M], centerness [M] (mmdet ``filter_scores_and_topk``)."""
        scores = per_prior(cls[None], self.num_classes)[0].sigmoid()  # [HWA, K]
        ranked, idx, labels = top_candidates(scores, self.test_cfg.nms_pre, self.test_cfg.score_thr)
        box_deltas = per_prior(deltas[None], 4)[0][idx]
        boxes = delta_xywh_decode(anchors[idx], box_deltas, self.target_means, self.target_stds, max_shape=hw)
        centerness = per_prior(ctr[None], 1)[0, idx, 0].sigmoid()
        return boxes, ranked, labels, centerness

    def _predict_image(self, cls: list[Tensor], deltas: list[Tensor], ctr: list[Tensor], anchors: list[Tensor],
                       hw: tuple[int, int], scale_factor: Tensor | None) -> tuple[Tensor, Tensor]:
        levels = [self._level_candidates(*maps, hw) for maps in zip(cls, deltas, ctr, anchors)]
        boxes, scores, labels, centerness = (torch.cat(t) for t in zip(*levels))
        if scale_factor is not None:
            boxes = boxes / torch.as_tensor(scale_factor, dtype=boxes.dtype, device=boxes.device)
        scores = scores * centerness  # the score the NMS ranks by (mmdet: no sqrt)
        boxes, scores, labels = keep_top(boxes, scores, labels, self.test_cfg.nms_iou, self.test_cfg.max_per_img)
        return torch.cat([boxes, scores[:, None]], 1), labels


# -- official configuration and weights ---------------------------------------------------

def atss_head_from_mmdet(head_cfg: dict, train_cfg: dict, test_cfg: dict) -> ATSSHead:
    """Build the head from an mmdet ``ATSSHead``/``CoATSSHead`` config dict and its train /
    test configs, reading every number from them (mmdet's defaults where a key is absent)."""
    anchors, coder = head_cfg["anchor_generator"], head_cfg.get("bbox_coder", {})
    cls_cfg, giou_cfg = head_cfg["loss_cls"], head_cfg["loss_bbox"]
    if cls_cfg["type"] != "FocalLoss" or giou_cfg["type"] != "GIoULoss" or not head_cfg.get("reg_decoded_bbox", True):
        raise ValueError("only the focal + GIoU (reg_decoded_bbox) ATSS head is implemented")
    if train_cfg.get("allowed_border", -1) >= 0 or train_cfg["assigner"].get("ignore_iof_thr", -1) > 0:
        raise ValueError("allowed_border >= 0 and ignore boxes are not wired into the head")
    loss = ATSSLossConfig(cls_weight=cls_cfg.get("loss_weight", 1.0), giou_weight=giou_cfg.get("loss_weight", 1.0),
                          centerness_weight=head_cfg.get("loss_centerness", {}).get("loss_weight", 1.0),
                          focal_alpha=cls_cfg.get("alpha", 0.25), focal_gamma=cls_cfg.get("gamma", 2.0))
    test = ATSSTestConfig(nms_pre=test_cfg.get("nms_pre", -1), score_thr=test_cfg["score_thr"],
                          nms_iou=test_cfg["nms"]["iou_threshold"], max_per_img=test_cfg["max_per_img"])
    return ATSSHead(head_cfg["num_classes"], head_cfg["in_channels"], anchors["strides"],
                    feat_channels=head_cfg.get("feat_channels", 256), stacked_convs=head_cfg.get("stacked_convs", 4),
                    octave_base_scale=anchors["octave_base_scale"], scales_per_octave=anchors["scales_per_octave"],
                    ratios=anchors["ratios"], target_means=coder.get("target_means", (0.0,) * 4),
                    target_stds=coder.get("target_stds", (1.0,) * 4), topk=train_cfg["assigner"]["topk"],
                    loss_cfg=loss, test_cfg=test)


def official_key_map(stacked_convs: int, num_levels: int) -> dict[str, str]:
    """mmdet ATSS head key (without the ``bbox_head.0.`` prefix) -> ours."""
    keys = {f"{p}.weight": f"{q}.weight" for p, q in
            (("atss_cls", "cls_logits"), ("atss_reg", "box_deltas"), ("atss_centerness", "centerness"))}
    keys.update({f"{p}.bias": f"{q}.bias" for p, q in
                 (("atss_cls", "cls_logits"), ("atss_reg", "box_deltas"), ("atss_centerness", "centerness"))})
    for ours, theirs in (("cls_tower", "cls_convs"), ("reg_tower", "reg_convs")):
        for i in range(stacked_convs):
            keys[f"{theirs}.{i}.conv.weight"] = f"{ours}.{i}.0.weight"
            keys[f"{theirs}.{i}.gn.weight"] = f"{ours}.{i}.1.weight"
            keys[f"{theirs}.{i}.gn.bias"] = f"{ours}.{i}.1.bias"
    keys.update({f"scales.{l}.scale": f"scales.{l}.value" for l in range(num_levels)})
    return keys


def load_official_weights(head: ATSSHead, state_dict: dict[str, Tensor], prefix: str = "bbox_head.0.") -> None:
    """Strictly load the official head weights under ``prefix``; every unmapped key raises."""
    keys = official_key_map(len(head.cls_tower), len(head.scales))
    theirs = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    unknown = sorted(set(theirs) - set(keys))
    if unknown:
        raise KeyError(f"unmapped official ATSS keys: {unknown}")
    head.load_state_dict({keys[k]: v for k, v in theirs.items()}, strict=True)
