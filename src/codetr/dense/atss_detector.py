"""ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection", CVPR 2020) as mmdet's standalone ``ATSS`` detector.

    images -> ResNet (C3..C5) -> FPN (P3..P7; P6 = conv(P5 output), P7 = conv(P6), no ReLU:
              mmdet ``add_extra_convs='on_output'``) -> ATSS head (``codetr.dense.atss``)
    priors: one square anchor of 8 strides per location; boxes: delta-xywh (stds .1 .1 .2 .2)
    train: ATSS assignment on the valid anchors, focal + centerness-weighted GIoU + centerness
           BCE (the head's ``loss``; crowd boxes ignored)
    test:  per level the best (anchor, class) pairs by sigmoid(cls) over the threshold,
           decoded and clipped to the image, score x sigmoid(centerness), class-aware NMS

Defaults: mmdet v2 ``configs/atss/atss_r50_fpn_1x_coco.py`` (39.4 box AP on COCO val).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor

from ..backbones import BackboneConfig, build_backbone
from ..coders import delta_xywh_decode
from ..config_checks import COMMON_MINIMUMS, require_at_least
from ..detector import ClassLayout, InputSpec, mmdet_input_spec
from ..necks.fpn import FPN
from ..structures import ClassInfo, Target
from .atss import ATSSHead, ATSSLossConfig, ATSSOutputs
from .base import (DenseDetector, DenseParts, DenseTestConfig, OutputNames, ScoreComposition, check_fpn_strides,
                   class_only, pad_shapes, times_quality)


@dataclass(frozen=True)
class ATSSConfig:
    """Every number the model is built from (mmdet names in comments)."""

    num_classes: int = 80
    # pytorch-style ResNet-50, stem + res2 frozen (frozen_stages=1), BatchNorm frozen (norm_eval)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256                        # neck.out_channels = head in_channels
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])  # anchor_generator.strides
    # head
    feat_channels: int = 256
    stacked_convs: int = 4
    octave_base_scale: int = 8
    scales_per_octave: int = 1
    anchor_ratios: list[float] = field(default_factory=lambda: [1.0])
    target_means: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    target_stds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    prior_prob: float = 0.01
    # training
    topk: int = 9                                  # train_cfg.assigner.topk
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls_weight: float = 1.0
    giou_weight: float = 2.0
    centerness_weight: float = 1.0
    # inference (test_cfg)
    score_threshold: float = 0.05                  # score_thr, on sigmoid(cls)
    topk_candidates: int = 1000                    # nms_pre, per level
    nms_threshold: float | None = 0.6              # nms.iou_threshold; None: no NMS
    detections_per_image: int = 100                # max_per_img

    def __post_init__(self) -> None:
        check_fpn_strides("ATSSConfig", self.strides)
        require_at_least(self, {**COMMON_MINIMUMS, "fpn_channels": 1, "feat_channels": 1, "stacked_convs": 0,
                                "octave_base_scale": 1, "scales_per_octave": 1, "topk": 1, "topk_candidates": 1,
                                "detections_per_image": 1})
        for name in ("target_means", "target_stds"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"ATSSConfig.{name} needs 4 values (x, y, w, h), got {getattr(self, name)}")
        if self.feat_channels % 32:
            raise ValueError(f"ATSSConfig.feat_channels must be a multiple of 32 (GroupNorm of 32 groups), "
                             f"got {self.feat_channels}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AnchorDecoder:
    """Delta-xywh deltas of anchors -> boxes clipped to the image (mmdet ``DeltaXYWHBBoxCoder``)."""

    means: tuple[float, ...]
    stds: tuple[float, ...]

    def __call__(self, anchors: Tensor, deltas: Tensor, hw: tuple[int, int]) -> Tensor:
        return delta_xywh_decode(anchors, deltas, self.means, self.stds, max_shape=hw)


class ATSSCriterion:
    """The head's ATSS targets and losses (built with unit loss weights), per-level terms
    summed, under mmdet's names; ``weight_dict`` holds the weights. Log: ``num_fg_per_gt``."""

    def __init__(self, head: ATSSHead, cls_weight: float, giou_weight: float, centerness_weight: float) -> None:
        unit = (head.loss_cfg.cls_weight, head.loss_cfg.giou_weight, head.loss_cfg.centerness_weight)
        if unit != (1.0, 1.0, 1.0):
            raise ValueError(f"ATSSCriterion needs a head with unit loss weights, got {unit}")
        self.head = head
        self.weight_dict = {"loss_cls": cls_weight, "loss_bbox": giou_weight, "loss_centerness": centerness_weight}

    def __call__(self, outputs: dict[str, list[Tensor]], targets: list[Target],
                 shapes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """outputs: per-level ``cls_scores``, ``bbox_preds``, ``centernesses``; ``shapes``: each
        image's padded (h, w), which bounds its valid anchors."""
        maps = ATSSOutputs(outputs["cls_scores"], outputs["bbox_preds"], outputs["centernesses"])
        res = self.head.loss(maps, [t.boxes for t in targets], [t.labels for t in targets], shapes)
        terms = {name: sum(per_level) for name, per_level in res.losses.items()}
        num_fg = sum(int((labels < self.head.num_classes).sum()) for labels in res.pos_coords.labels)
        terms["num_fg_per_gt"] = maps.cls_logits[0].new_tensor(num_fg / max(1, sum(len(t) for t in targets)))
        return terms


class ATSS(DenseDetector):
    """Eval outputs, mmdet's names, per level: ``cls_scores`` [B, A*K, H, W] logits,
    ``bbox_preds`` [B, A*4, H, W] delta-xywh (times the level's scale), ``centernesses``
    [B, A, H, W] logits."""

    family = "atss"

    def __init__(self, config: ATSSConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        c = config
        backbone = build_backbone(c.backbone, (2, 3, 4))
        fpn = FPN(backbone.out_channels, c.fpn_channels, len(c.strides) - 3, "p5", relu_before_extra=False)
        head = ATSSHead(c.num_classes, c.fpn_channels, c.strides, c.feat_channels, c.stacked_convs,
                        c.octave_base_scale, c.scales_per_octave, c.anchor_ratios, c.target_means, c.target_stds,
                        c.topk, ATSSLossConfig(1.0, 1.0, 1.0, c.focal_alpha, c.focal_gamma), prior_prob=c.prior_prob)
        parts = DenseParts(
            head, OutputNames("cls_scores", "bbox_preds", "centernesses"), head.anchor_generator.grid_anchors,
            AnchorDecoder(tuple(c.target_means), tuple(c.target_stds)),
            ATSSCriterion(head, c.cls_weight, c.giou_weight, c.centerness_weight),
            ScoreComposition(class_only, times_quality),
            DenseTestConfig(c.score_threshold, c.topk_candidates, c.nms_threshold, c.detections_per_image))
        super().__init__(c, classes, input_spec or mmdet_input_spec(), backbone, fpn, parts)

    def class_layers(self) -> dict[str, ClassLayout]:
        return self.parameters_of(atss_class_layouts("head", self.head))

    def head_outputs(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        out = self.head(feats)
        return {"cls_scores": out.cls_logits, "bbox_preds": out.deltas, "centernesses": out.centerness}

    def loss_inputs(self, outputs: dict[str, list[Tensor]], priors: list[Tensor], targets: list[Target],
                    sizes: Tensor) -> tuple:
        """The head builds its own anchors (the same generator) and valid flags."""
        return outputs, targets, pad_shapes(sizes, self.pad_divisor)


def atss_class_layouts(prefix: str, head: ATSSHead) -> dict[str, ClassLayout]:
    """An mmdet ATSS head's classifier at ``prefix``: per anchor, one logit per class (sigmoid,
    no background)."""
    return {f"{prefix}.cls_logits": ClassLayout(head.num_classes, groups=head.anchor_generator.num_base_anchors[0])}
