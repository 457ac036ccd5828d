"""DeFCN (Wang et al., "End-to-End Object Detection with Fully Convolutional Network", CVPR
2021) and its one-to-many baseline FCOS (Tian et al. 2019), as in the official cvpods code.

    images -> ResNet (C3..C5) -> FPN (P3..P7, P6/P7 from P5) -> FCOS head (shared over levels)
      DeFCN: box tower -> 3D max filter -> filter logit;  score = sigmoid(cls) * sigmoid(filter)
             train: POTO one-to-one targets (+ auxiliary one-to-many focal loss on cls)
             test:  per-level top-k above a threshold, top detections per image, no NMS
      FCOS:  centerness logit; score = sqrt(sigmoid(cls) * sigmoid(centerness)); train with
             FCOS targets; test with per-class NMS
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from ..backbones import BackboneConfig, build_backbone
from ..config_checks import COMMON_MINIMUMS, require_at_least
from ..detector import Detector, InputSpec, LossOutput
from ..necks.fpn import FPN
from ..structures import ClassInfo, Detections, Target
from .criterion import DeFCNCriterion, FCOSCriterion
from .fcos_head import FCOSHead
from ..boxes import ltrb_decode
from .points import flatten_levels, points_per_level

FCOS_SIZE_RANGES = [[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, math.inf]]


@dataclass(frozen=True)
class DeFCNConfig:
    """Every number the model is built from. Defaults: the official POTO + 3DMF + aux R-50."""

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
    # "poto" (DeFCN) or "fcos" (one-to-many baseline with center-ness)
    assigner: str = "poto"
    max_filter: bool = True               # 3DMF (DeFCN); ignored by "fcos"
    filter_kernel_size: int = 3
    filter_tau: int = 2
    poto_alpha: float = 0.8
    center_sampling_radius: float = 1.5
    aux_topk: int | None = 9              # None / 0: no auxiliary loss
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_weight: float = 2.0
    fcos_size_ranges: list[list[float]] = field(default_factory=lambda: [list(r) for r in FCOS_SIZE_RANGES])
    centerness_on_reg: bool = True
    # inference
    score_threshold: float = 0.05
    topk_candidates: int = 1000           # per level
    nms_threshold: float | None = None    # None: no NMS (DeFCN); FCOS: 0.6
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        if self.assigner not in ("poto", "fcos"):
            raise ValueError(f"DeFCNConfig.assigner must be 'poto' or 'fcos', got {self.assigner!r}")
        # 0 head convs, a 3DMF window of one level (tau 0) and aux_topk 0 (no aux loss) are valid
        require_at_least(self, {**COMMON_MINIMUMS, "fpn_channels": 1, "num_convs": 0,
                                "filter_kernel_size": 1, "filter_tau": 0, "aux_topk": 0, "topk_candidates": 1,
                                "detections_per_image": 1})

    def to_dict(self) -> dict:
        return asdict(self)


def official_input_spec(min_size: int = 800, max_size: int = 1333) -> InputSpec:
    """cvpods: BGR in [0, 255], MSRA means, unit std, padded to a multiple of 32."""
    return InputSpec(mean=(103.53, 116.28, 123.675), std=(1.0, 1.0, 1.0), channel_order="BGR", scale_255=True,
                     min_size=min_size, max_size=max_size, size_divisibility=32)


class DeFCN(Detector):
    family = "defcn"

    def __init__(self, config: DeFCNConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__(classes or ClassInfo.anonymous(config.num_classes), input_spec or official_input_spec())
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{len(self.classes)} classes given for num_classes={config.num_classes}")
        self.config = c = config
        self.backbone = build_backbone(c.backbone, (2, 3, 4))
        self.fpn = FPN(self.backbone.out_channels, c.fpn_channels, num_extra=len(c.strides) - 3, extra_from="p5")
        is_fcos = c.assigner == "fcos"
        quality = "centerness" if is_fcos else ("filter" if c.max_filter else None)
        self.head = FCOSHead(c.fpn_channels, c.num_classes, c.strides, c.num_convs, c.prior_prob, c.norm_reg_targets,
                             quality, c.filter_kernel_size, c.filter_tau, c.centerness_on_reg)
        if is_fcos:
            self.criterion = FCOSCriterion(c.num_classes, c.strides, [tuple(r) for r in c.fcos_size_ranges],
                                           c.center_sampling_radius, c.focal_alpha, c.focal_gamma)
        else:
            self.criterion = DeFCNCriterion(c.num_classes, c.strides, c.poto_alpha, c.center_sampling_radius,
                                            c.aux_topk, c.focal_alpha, c.focal_gamma, c.reg_weight)

    @property
    def quality_key(self) -> str | None:
        return {"filter": "box_filter", "centerness": "box_center"}.get(self.head.quality)

    # -- forward ---------------------------------------------------------------------------
    def features(self, images: Tensor) -> list[Tensor]:
        """P3..P7 of ``images`` zero-padded at bottom/right to a multiple of the largest
        backbone stride (32), as cvpods' ImageList."""
        div = self.backbone.strides[-1]
        pad_h, pad_w = -images.shape[-2] % div, -images.shape[-1] % div
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return self.fpn(self.backbone(images))

    def points(self, outputs: dict) -> list[Tensor]:
        """Per-level [H_l * W_l, 2] (x, y) point positions of the head outputs."""
        shapes = [tuple(x.shape[-2:]) for x in outputs["box_cls"]]
        return points_per_level(shapes, self.config.strides, self.config.point_offset, outputs["box_cls"][0].device)

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        """Train: the weighted losses and logs. Eval: the official raw outputs, lists over
        levels: ``box_cls`` [B, K, H_l, W_l] logits, ``box_delta`` [B, 4, H_l, W_l] ltrb in input
        pixels, ``box_filter`` (DeFCN 3DMF) or ``box_center`` (FCOS) [B, 1, H_l, W_l] logits."""
        outputs = self.head(self.features(images))
        if not self.training:
            return outputs
        if targets is None:
            raise ValueError("DeFCN in train mode needs targets")
        quality = flatten_levels(outputs[self.quality_key]) if self.quality_key else None
        terms = self.float32_loss(self.criterion, flatten_levels(outputs["box_cls"]),
                                  flatten_levels(outputs["box_delta"]), quality, self.points(outputs),
                                  [t.non_crowd() for t in targets])
        return LossOutput.weigh(terms, self.criterion.weight_dict)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Per image and level: the ``topk_candidates`` best (point, class) scores above
        ``score_threshold``; then (FCOS) per-class NMS; the best ``detections_per_image``.
        Boxes xyxy in the input frame, not clipped."""
        points = self.points(outputs)
        quality = outputs.get(self.quality_key) if self.quality_key else None
        results = []
        for i in range(len(sizes)):
            per_level = [self._level_candidates(outputs["box_cls"][l][i], outputs["box_delta"][l][i],
                                                quality[l][i] if quality is not None else None, points[l])
                         for l in range(len(points))]
            boxes, scores, labels = (torch.cat(x) for x in zip(*per_level))
            if self.config.nms_threshold is not None:
                keep = batched_nms(boxes, scores, labels, self.config.nms_threshold)
            else:
                keep = scores.argsort(descending=True)
            keep = keep[: self.config.detections_per_image]
            results.append(Detections(boxes[keep], scores[keep], labels[keep]))
        return results

    def _level_candidates(self, cls: Tensor, delta: Tensor, quality: Tensor | None,
                          points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """cls [K, H, W], delta [4, H, W], quality [1, H, W] -> candidate boxes, scores, labels."""
        K = cls.shape[0]
        prob = cls.flatten(1).t().sigmoid()  # [HW, K]
        fcos = self.config.assigner == "fcos"
        if quality is not None and not fcos:
            prob = prob * quality.flatten(1).t().sigmoid()
        scores, idx = prob.flatten().topk(min(self.config.topk_candidates, len(points)))
        keep = scores > self.config.score_threshold
        scores, idx = scores[keep], idx[keep]
        point_idx, labels = idx // K, idx % K
        boxes = ltrb_decode(points[point_idx], delta.flatten(1).t()[point_idx])
        if fcos:
            scores = torch.sqrt(scores * quality.flatten()[point_idx].sigmoid())
        return boxes, scores, labels

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: Tensor, orig_sizes: list[tuple[int, int]]) -> list[Detections]:
        """As ``Detector.detect``, then clipped to the original image and boxes with a side
        <= 0 dropped (cvpods' ``detector_postprocess``)."""
        out = []
        for det, (h, w) in zip(super().detect(images, sizes, orig_sizes), orig_sizes):
            boxes = torch.stack([det.boxes[:, 0].clamp(0, w), det.boxes[:, 1].clamp(0, h),
                                 det.boxes[:, 2].clamp(0, w), det.boxes[:, 3].clamp(0, h)], dim=1)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append(Detections(boxes[keep], det.scores[keep], det.labels[keep]))
        return out
