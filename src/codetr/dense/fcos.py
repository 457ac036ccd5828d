"""FCOS (Tian et al., ICCV 2019) as the one-to-many baseline of the official DeFCN (cvpods).

    images -> ResNet (C3..C5) -> FPN (P3..P7, P6/P7 from P5) -> FCOS head (shared over levels)
    points: one per location; boxes: ltrb distances; quality: center-ness logit
    train: FCOS targets (center region, size range per level, smallest object wins):
           focal + center-ness weighted GIoU + center-ness BCE
    test:  per level the best (point, class) pairs by sigmoid(cls); score
           sqrt(sigmoid(cls) * sigmoid(center-ness)); per-class NMS

Also what FCOS and DeFCN share: ``PointConfig``, the cvpods backbone / FPN / input and the
point-based ``DenseParts``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import Tensor, nn

from ..backbones import BackboneConfig, build_backbone
from ..coders import ltrb_decode
from ..config_checks import COMMON_MINIMUMS, require_at_least
from ..detector import ClassLayout, InputSpec
from ..necks.fpn import FPN
from ..structures import ClassInfo
from .base import (DenseDetector, DenseParts, DenseTestConfig, OutputNames, ScoreComposition, check_fpn_strides,
                   class_only, geometric_mean)
from .criterion import FCOSCriterion
from .fcos_head import FCOSHead
from .points import PointGenerator

FCOS_SIZE_RANGES = [[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, math.inf]]


@dataclass(frozen=True)
class PointConfig:
    """The numbers FCOS and DeFCN share. Defaults: the official cvpods R-50 configs."""

    num_classes: int = 80
    # backbone (cvpods MODEL.RESNETS: FREEZE_AT=2 freezes stem + res2; MSRA R-50 weights) and FPN
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(stride_in_1x1=True))
    fpn_channels: int = 256
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    point_offset: float = 0.5
    # head
    num_convs: int = 4
    prior_prob: float = 0.01
    norm_reg_targets: bool = True
    # training
    center_sampling_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # inference
    score_threshold: float = 0.05
    topk_candidates: int = 1000           # per level
    nms_threshold: float | None = None    # None: no NMS
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        check_fpn_strides(type(self).__name__, self.strides)
        require_at_least(self, {**COMMON_MINIMUMS, "fpn_channels": 1, "num_convs": 0,  # 0 head convs: valid
                                "topk_candidates": 1, "detections_per_image": 1})

    def to_dict(self) -> dict:
        return asdict(self)

    def test_config(self) -> DenseTestConfig:
        return DenseTestConfig(self.score_threshold, self.topk_candidates, self.nms_threshold,
                               self.detections_per_image)


@dataclass(frozen=True)
class FCOSConfig(PointConfig):
    """FCOS of the DeFCN paper: center sampling, center-ness on the box tower, GIoU, NMS 0.6."""

    size_ranges: list[list[float]] = field(default_factory=lambda: [list(r) for r in FCOS_SIZE_RANGES])
    centerness_on_reg: bool = True
    nms_threshold: float | None = 0.6


def official_input_spec(min_size: int = 800, max_size: int = 1333) -> InputSpec:
    """cvpods: BGR in [0, 255], MSRA means, unit std, padded to a multiple of 32."""
    return InputSpec(mean=(103.53, 116.28, 123.675), std=(1.0, 1.0, 1.0), channel_order="BGR", scale_255=True,
                     min_size=min_size, max_size=max_size, size_divisibility=32)


def cvpods_backbone_and_fpn(config: PointConfig) -> tuple[nn.Module, FPN]:
    """ResNet C3..C5 and an FPN with P6 = conv(P5), P7 = conv(relu(P6)) (cvpods' top block)."""
    backbone = build_backbone(config.backbone, (2, 3, 4))
    fpn = FPN(backbone.out_channels, config.fpn_channels, num_extra=len(config.strides) - 3, extra_from="p5")
    return backbone, fpn


def decode_ltrb(points: Tensor, deltas: Tensor, hw: tuple[int, int]) -> Tensor:
    """points [M, 2], ltrb [M, 4] -> xyxy [M, 4], not clipped (cvpods clips in ``detect``)."""
    return ltrb_decode(points, deltas)


def point_parts(config: PointConfig, head: FCOSHead, names: OutputNames, criterion: object,
                scores: ScoreComposition) -> DenseParts:
    """``DenseParts`` of a cvpods point detector: points, ltrb boxes, final boxes clipped."""
    return DenseParts(head, names, PointGenerator(config.strides, config.point_offset), decode_ltrb, criterion,
                      scores, config.test_config(), clip_to_original=True)


class FCOS(DenseDetector):
    """Eval outputs: per level ``box_cls`` [B, K, H, W] logits, ``box_delta`` [B, 4, H, W] ltrb
    in input pixels, ``box_center`` [B, 1, H, W] center-ness logits."""

    family = "fcos"

    def __init__(self, config: FCOSConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        c = config
        backbone, fpn = cvpods_backbone_and_fpn(c)
        head = FCOSHead(c.fpn_channels, c.num_classes, c.strides, c.num_convs, c.prior_prob, c.norm_reg_targets,
                        "centerness", centerness_on_reg=c.centerness_on_reg)
        criterion = FCOSCriterion(c.num_classes, c.strides, [tuple(r) for r in c.size_ranges],
                                  c.center_sampling_radius, c.focal_alpha, c.focal_gamma)
        parts = point_parts(c, head, OutputNames("box_cls", "box_delta", "box_center"), criterion,
                            ScoreComposition(class_only, geometric_mean))
        super().__init__(c, classes, input_spec or official_input_spec(), backbone, fpn, parts)

    def class_layers(self) -> dict[str, ClassLayout]:
        """The classifier: one logit per class (sigmoid, no background)."""
        return self.parameters_of({"head.cls_score": ClassLayout(self.num_classes)})
