"""Faster R-CNN (Ren et al., NeurIPS 2015) with FPN (Lin et al., CVPR 2017), as mmdet 2.25.3's
``faster_rcnn_r50_fpn_1x_coco`` (37.4 box AP on COCO val).

    images -> ResNet (C2..C5) -> FPN (P2..P5, P6 = max-pool(P5, 1, stride 2))
           -> RPN (3 anchors per position and level): objectness + deltas
                train: Max-IoU targets on sampled anchors; losses; proposals (2000 per level -> NMS 0.7 -> 1000)
                test:  proposals (1000 per level -> NMS 0.7 -> 1000)
           -> RoI head on P2..P5 (one level per RoI by its size): RoIAlign 7x7 -> 2 fc -> class + deltas
                train: proposals + gts, Max-IoU (0.5), 512 sampled RoIs (1/4 positive); CE + L1 on deltas
                test:  softmax, class-specific boxes clipped to the image, score > 0.05, per-class NMS 0.5, 100

The parts live in ``codetr.rcnn`` (``rpn``, ``roi_extractor``, ``bbox_head``, ``roi_head``) and
``codetr.anchors`` / ``coders`` / ``sampling``; this file composes them. Training ignores crowd
boxes (mmdet's ``gt_bboxes_ignore``, unused with ``ignore_iof_thr=-1``) and boxes without area
(the data pipeline drops them; a gt of zero width would give infinite delta targets).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from codetr.anchors import AnchorGenerator
from codetr.backbones import BackboneConfig, build_backbone
from codetr.config_checks import COMMON_MINIMUMS, require_at_least
from codetr.detector import ClassLayout, Detector, InputSpec, LossOutput, mmdet_input_spec
from codetr.necks.fpn import EXTRA_SOURCES, FPN
from codetr.sampling import RCNN_SAMPLING, RPN_SAMPLING, AssignSampleConfig
from codetr.structures import ClassInfo, Detections, Target

from .bbox_head import BoxLossConfig, RoITestConfig, Shared2FCBBoxHead
from .roi_extractor import RoIExtractor
from .roi_head import RoIHead, boxes_to_rois
from .rpn import ProposalConfig, RPNHead

BACKBONE_STRIDES = (4, 8, 16, 32)  # C2..C5


@dataclass(frozen=True)
class FasterRCNNConfig:
    """Every number the model is built from. Defaults: mmdet ``faster_rcnn_r50_fpn_1x_coco``
    (``configs/_base_/models/faster_rcnn_r50_fpn.py``). The backbone is the pytorch-style R50
    (stride in the 3x3 conv) with frozen BatchNorm and a frozen stem + res2 (``frozen_stages=1``);
    mmdet's ``norm_eval=True`` keeps its BN statistics fixed but still trains the BN affine
    weights, which ``"frozen_bn"`` freezes too (as detectron2 and torchvision do)."""

    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # FPN: one level per anchor stride; the levels past C5 come from ``fpn_extra_from``
    # ("pool": mmdet's add_extra_convs=False, P6 = max_pool(P5, 1, stride 2))
    fpn_channels: int = 256
    fpn_extra_from: str = "pool"
    # RPN
    rpn_channels: int = 256
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    rpn_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    rpn_sampling: AssignSampleConfig = RPN_SAMPLING
    rpn_train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_img=1000, iou_threshold=0.7)
    rpn_test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_img=1000, iou_threshold=0.7)
    rpn_cls_weight: float = 1.0
    rpn_box_weight: float = 1.0
    # RoI head
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)
    roi_size: int = 7
    roi_sampling_ratio: int = 0
    finest_scale: float = 56.0
    fc_channels: int = 1024
    class_agnostic: bool = False
    roi_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    roi_box_loss: str = "l1"              # "l1" on encoded deltas, or "giou" on decoded boxes
    cls_weight: float = 1.0
    box_weight: float = 1.0
    rcnn_sampling: AssignSampleConfig = RCNN_SAMPLING
    rcnn_test: RoITestConfig = RoITestConfig(score_thr=0.05, nms_iou=0.5, max_per_img=100)

    def __post_init__(self) -> None:
        require_at_least(self, {**COMMON_MINIMUMS, "fpn_channels": 1, "rpn_channels": 1, "roi_size": 1,
                                "roi_sampling_ratio": 0, "fc_channels": 1})
        for name, minimums in (("rpn_train_proposals", {"nms_pre": 1, "max_per_img": 1}),
                               ("rpn_test_proposals", {"nms_pre": 1, "max_per_img": 1}),
                               ("rpn_sampling", {"num": 1}), ("rcnn_sampling", {"num": 1}),
                               ("rcnn_test", {"max_per_img": 1})):
            try:
                require_at_least(getattr(self, name), minimums)
            except ValueError as e:
                raise ValueError(f"FasterRCNNConfig.{name}: {e}") from None
        self._check_levels()
        self._check_values()

    def _check_levels(self) -> None:
        """Anchor strides: C2..C5's, then doubling (one per FPN level); RoI strides a prefix."""
        n = len(self.anchor_strides)
        expected = tuple(4 * 2 ** i for i in range(max(n, len(BACKBONE_STRIDES))))
        if self.anchor_strides != expected[:n] or n < len(BACKBONE_STRIDES):
            raise ValueError(f"FasterRCNNConfig.anchor_strides must be {expected[:max(n, 4)]} (C2..C5, then one "
                             f"per extra FPN level), got {self.anchor_strides}")
        if not self.roi_strides or self.roi_strides != self.anchor_strides[:len(self.roi_strides)]:
            raise ValueError(f"FasterRCNNConfig.roi_strides must be a prefix of anchor_strides "
                             f"{self.anchor_strides}, got {self.roi_strides}")
        if self.fpn_extra_from not in EXTRA_SOURCES:
            raise ValueError(f"FasterRCNNConfig.fpn_extra_from must be one of {EXTRA_SOURCES}, "
                             f"got {self.fpn_extra_from!r}")

    def _check_values(self) -> None:
        for name in ("anchor_scales", "anchor_ratios", "rpn_stds", "roi_stds"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise ValueError(f"FasterRCNNConfig.{name} must be positive numbers, got {values}")
        for name in ("rpn_stds", "roi_stds"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"FasterRCNNConfig.{name} needs 4 values, got {getattr(self, name)}")
        if self.finest_scale <= 0:
            raise ValueError(f"FasterRCNNConfig.finest_scale must be > 0, got {self.finest_scale}")
        if self.roi_box_loss not in ("l1", "giou"):
            raise ValueError(f"FasterRCNNConfig.roi_box_loss must be 'l1' or 'giou', got {self.roi_box_loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def training_target(target: Target) -> Target:
    """The boxes a training step learns from: not crowd, positive width and height."""
    t = target.non_crowd()
    wh = t.boxes[:, 2:] - t.boxes[:, :2]  # [N, 2]
    return t.select((wh > 0).all(dim=1))


class FasterRCNN(Detector):
    family = "faster_rcnn"

    def __init__(self, config: FasterRCNNConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__(classes or ClassInfo.anonymous(config.num_classes), input_spec or mmdet_input_spec())
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{len(self.classes)} classes given for num_classes={config.num_classes}")
        self.config = c = config
        self.backbone = build_backbone(c.backbone, (1, 2, 3, 4))
        if tuple(self.backbone.strides) != BACKBONE_STRIDES:
            raise ValueError(f"FasterRCNN needs C2..C5 at strides {BACKBONE_STRIDES}, the backbone gives "
                             f"{self.backbone.strides} (backbone.dilation is not supported)")
        self.fpn = FPN(self.backbone.out_channels, c.fpn_channels, len(c.anchor_strides) - len(BACKBONE_STRIDES),
                       c.fpn_extra_from, relu_before_extra=False)
        anchors = AnchorGenerator(c.anchor_strides, c.anchor_ratios, scales=c.anchor_scales)
        self.rpn_head = RPNHead(c.fpn_channels, c.rpn_channels, anchors, stds=c.rpn_stds)
        box_head = Shared2FCBBoxHead(c.fpn_channels, c.num_classes, c.roi_size, c.fc_channels, c.class_agnostic,
                                     stds=c.roi_stds, loss_cfg=BoxLossConfig(box_loss=c.roi_box_loss),
                                     test_cfg=c.rcnn_test)
        extractor = RoIExtractor(c.roi_strides, c.roi_size, c.finest_scale, c.roi_sampling_ratio)
        self.roi_head = RoIHead(extractor, box_head, c.rcnn_sampling)
        # the heads return unweighted terms; ``acc`` is a log
        self.weight_dict = {"loss_rpn_cls": c.rpn_cls_weight, "loss_rpn_bbox": c.rpn_box_weight,
                            "loss_cls": c.cls_weight, "loss_bbox": c.box_weight}

    def class_layers(self) -> dict[str, ClassLayout]:
        """The RoI head's classifier and box regressor; the RPN is class-agnostic."""
        return self.parameters_of(roi_class_layouts("roi_head.bbox_head", self.roi_head.bbox_head))

    # -- forward ---------------------------------------------------------------------------
    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        """Train: ``LossOutput`` with losses ``loss_rpn_cls``, ``loss_rpn_bbox`` (summed over
        levels), ``loss_cls``, ``loss_bbox`` and the log ``acc`` (mmdet's names).

        Eval: the raw outputs (mmdet's ``simple_test`` intermediates), boxes in input pixels:
        ``rpn_cls_score`` per level [B, A, H_l, W_l] objectness logits, ``rpn_bbox_pred`` per
        level [B, 4A, H_l, W_l] deltas, ``proposals`` per image [M_i, 5] (x1, y1, x2, y2,
        objectness), ``rois`` [sum M_i, 5] (image index, x1, y1, x2, y2), ``cls_score`` [sum M_i,
        K+1] logits (column K = background), ``bbox_pred`` [sum M_i, 4K] class-specific deltas."""
        feats = self.fpn(self.backbone(images))  # P2..P6, each [B, C, H_l, W_l]
        rpn_cls, rpn_reg = self.rpn_head(feats)
        img_shapes = [tuple(s) for s in sizes.tolist()]
        if not self.training:
            proposals = self.proposals(rpn_cls, rpn_reg, img_shapes, self.config.rpn_test_proposals)
            fwd = self.roi_head(feats, boxes_to_rois(proposals).to(images.device))
            return {"rpn_cls_score": rpn_cls, "rpn_bbox_pred": rpn_reg, "proposals": proposals, "rois": fwd.rois,
                    "cls_score": fwd.cls_score, "bbox_pred": fwd.bbox_pred}
        if targets is None:
            raise ValueError("FasterRCNN in train mode needs targets")
        gts = [training_target(t) for t in targets]
        gt_boxes = [t.boxes.float() for t in gts]
        terms = self.float32_loss(self.rpn_loss, rpn_cls, rpn_reg, gt_boxes, self.pad_shapes(sizes, images))
        proposals = self.proposals(rpn_cls, rpn_reg, img_shapes, self.config.rpn_train_proposals)
        terms.update(self.roi_head.loss(feats, proposals, gt_boxes, [t.labels for t in gts]).losses)
        return LossOutput.weigh(terms, self.weight_dict)

    def pad_shapes(self, sizes: Tensor, images: Tensor) -> list[tuple[int, int]]:
        """Each image's size padded to ``size_divisibility`` (mmdet's ``pad_shape``, which bounds
        the valid anchors), within the batch."""
        d = self.input_spec.size_divisibility
        h, w = images.shape[-2:]
        return [(min(-(-sh // d) * d, h), min(-(-sw // d) * d, w)) for sh, sw in sizes.tolist()]

    def rpn_loss(self, rpn_cls: list[Tensor], rpn_reg: list[Tensor], gt_boxes: list[Tensor],
                 pad_shapes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """The RPN's per-level losses summed over levels (mmdet's ``_parse_losses``)."""
        per_level = self.rpn_head.loss(rpn_cls, rpn_reg, gt_boxes, pad_shapes, self.config.rpn_sampling)
        return {name: torch.stack(values).sum() for name, values in per_level.items()}

    def proposals(self, rpn_cls: list[Tensor], rpn_reg: list[Tensor], img_shapes: list[tuple[int, int]],
                  cfg: ProposalConfig) -> list[Tensor]:
        """Per image [M_i, 5] detached proposals, decoded in float32."""
        return self.rpn_head.proposals([m.detach().float() for m in rpn_cls], [m.detach().float() for m in rpn_reg],
                                       img_shapes, cfg)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Per image: softmax scores, every class's box decoded and clipped to the image,
        candidates scoring above ``rcnn_test.score_thr``, per-class NMS, the best
        ``rcnn_test.max_per_img``. Boxes xyxy in the input frame (mmdet rescales to the original
        image before NMS; ``Detector.detect`` rescales after it, which differs only when the
        two axes are scaled differently)."""
        counts = [len(p) for p in outputs["proposals"]]
        parts = zip(outputs["rois"].split(counts), outputs["cls_score"].split(counts),
                    outputs["bbox_pred"].split(counts), sizes.tolist())
        results = []
        for rois, cls_score, bbox_pred, size in parts:
            dets, labels = self.roi_head.bbox_head.detections(rois, cls_score, bbox_pred, size)
            results.append(Detections(dets[:, :4], dets[:, 4], labels))
        return results


def roi_class_layouts(prefix: str, head: Shared2FCBBoxHead) -> dict[str, ClassLayout]:
    """The class-dependent layers of an mmdet box head at ``prefix``: the softmax classifier
    (background the last row) and, unless class-agnostic, the regressor's 4 deltas per class."""
    k = head.num_classes
    layouts = {f"{prefix}.fc_cls": ClassLayout(k, trailing=1)}
    if head.fc_reg.out_features == 4 * k:
        layouts[f"{prefix}.fc_reg"] = ClassLayout(k, per_class=4)
    return layouts
