"""YOLACT (Bolya et al., ICCV 2019) and YOLACT++'s deformable backbone (TPAMI 2020).

    image (square, ``max_size``) -> ResNet C3..C5 -> FPN P3..P7
        -> shared head per level: box offsets, class logits (+ background), mask coefficients
        -> protonet on P3: k prototypes at 1/4 resolution
    inference: decode -> Fast NMS -> masks = sigmoid(prototypes x coefficients), cropped
        to the box, upsampled to the original image, > 0.5
    training: prior matching, smooth-L1 boxes, OHEM cross-entropy, box-normalised mask BCE,
        semantic segmentation on P3 (see ``loss.py``)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from ..backbones import BackboneConfig, build_backbone
from ..coders import ssd_decode
from ..config_checks import COMMON_MINIMUMS, require_at_least
from ..detector import ClassLayout, Detector, InputSpec, LossOutput
from ..structures import ClassInfo, Detections, Target
from .fast_nms import NMSResult, cross_class_fast_nms, fast_nms
from .fpn import YolactFPN
from .head import PredictionHead
from .loss import LossTargets, YolactLoss
from .masks import final_masks, sanitize_coordinates
from .priors import make_priors
from .protonet import Protonet

# ImageNet statistics on 0-255 RGB values, as the official transform uses them
YOLACT_MEAN = (123.68, 116.78, 103.94)
YOLACT_STD = (58.40, 57.12, 57.38)


def official_input_spec(max_size: int) -> InputSpec:
    return InputSpec(mean=YOLACT_MEAN, std=YOLACT_STD, scale_255=True, min_size=max_size, max_size=max_size,
                     square=True)


@dataclass(frozen=True)
class YolactConfig:
    """Every number the model is built from. Defaults: official ``yolact_base`` on R50
    (``yolact_resnet50_config``), 80 COCO classes."""

    num_classes: int = 80                 # foreground classes (the head adds background)
    max_size: int = 550                   # square network input
    # official: BatchNorm, trained (freeze_bn False); YOLACT++: dcn_layers (0, 4, 6, 3)
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(norm="bn", frozen_stages=-1))
    fpn_features: int = 256
    pred_scales: list[list[float]] = field(default_factory=lambda: [[24], [48], [96], [192], [384]])
    aspect_ratios: list[float] = field(default_factory=lambda: [1, 0.5, 2])
    square_anchors: bool = True           # official YOLACT (a kept bug); YOLACT++: False
    num_prototypes: int = 32
    # training
    pos_threshold: float = 0.5
    neg_threshold: float = 0.4
    crowd_threshold: float = 0.7
    negpos_ratio: int = 3
    bbox_alpha: float = 1.5
    conf_alpha: float = 1.0
    mask_alpha: float = 6.125
    semantic_alpha: float = 1.0
    masks_to_train: int = 100
    soft_mask_targets: bool = False       # official: binarised GT masks at prototype resolution
    # inference
    top_k: int = 200
    conf_threshold: float = 0.05
    nms_threshold: float = 0.5
    max_detections: int = 100
    cross_class_nms: bool = False
    crop_masks: bool = True
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        require_at_least(self, {**COMMON_MINIMUMS, "max_size": 1, "fpn_features": 1,
                                "num_prototypes": 1, "negpos_ratio": 1, "masks_to_train": 1, "top_k": 1,
                                "max_detections": 1})

    def to_dict(self) -> dict:
        return asdict(self)


class Yolact(Detector):
    family = "yolact"

    def __init__(self, config: YolactConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__(classes or ClassInfo.anonymous(config.num_classes),
                         input_spec or official_input_spec(config.max_size))
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{len(self.classes)} classes given for num_classes={config.num_classes}")
        self.config = c = config
        if len({len(s) for s in c.pred_scales}) != 1:
            raise ValueError(f"every level needs the same number of scales (one shared head), got {c.pred_scales}")
        self.backbone = build_backbone(c.backbone, (2, 3, 4))
        self.fpn = YolactFPN(self.backbone.out_channels, c.fpn_features, num_extra=2)
        self.proto_net = Protonet(c.fpn_features, c.fpn_features, c.num_prototypes)
        num_priors = len(c.pred_scales[0]) * len(c.aspect_ratios)
        self.head = PredictionHead(c.fpn_features, num_priors, c.num_classes + 1, c.num_prototypes)
        self.semantic_seg_conv = nn.Conv2d(c.fpn_features, c.num_classes, 1)
        self.criterion = YolactLoss(c.pos_threshold, c.neg_threshold, c.crowd_threshold, c.negpos_ratio,
                                    c.bbox_alpha, c.conf_alpha, c.mask_alpha, c.semantic_alpha, c.masks_to_train,
                                    c.soft_mask_targets)
        self._init_weights()

    def _init_weights(self) -> None:
        """Official ``init_weights``: every conv outside the backbone xavier-uniform, zero bias."""
        for module in [self.fpn, self.proto_net, self.head, self.semantic_seg_conv]:
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def class_layers(self) -> dict[str, ClassLayout]:
        """The head's class conv: per prior, the background logit first, then one per class
        (channels = priors x (classes + 1)); the semantic segmentation conv: one map per class."""
        k = self.num_classes
        return self.parameters_of({"head.conf_layer": ClassLayout(k, leading=1, groups=self.head.num_priors),
                                   "semantic_seg_conv": ClassLayout(k)})

    # -- forward ---------------------------------------------------------------------------
    def forward_raw(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> official outputs with ``conf`` as logits: ``loc`` [B, P, 4],
        ``conf`` [B, P, C+1], ``mask`` [B, P, k] (tanh), ``priors`` [P, 4] relative cxcywh,
        ``proto`` [B, 2H/8, 2W/8, k] and, in train mode, ``segm`` [B, C, H/8, W/8] (semantic
        logits from P3)."""
        c = self.config
        feats = self.fpn(self.backbone(images))
        outs = [self.head(f) for f in feats]
        loc, conf, mask = (torch.cat(parts, 1) for parts in zip(*outs))
        sizes = [tuple(f.shape[-2:]) for f in feats]
        priors = make_priors(sizes, c.pred_scales, c.aspect_ratios, c.max_size, c.square_anchors, images.device)
        out = {"loc": loc, "conf": conf, "mask": mask, "priors": priors.to(loc.dtype), "proto": self.proto_net(feats[0])}
        if self.training:  # the semantic segmentation head only feeds a loss
            out["segm"] = self.semantic_seg_conv(feats[0])
        return out

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        """Train mode: the weighted losses. Eval mode: ``loc``, ``conf`` (softmax, background in
        column 0), ``mask``, ``priors``, ``proto`` as the official model passes them to ``Detect``."""
        out = self.forward_raw(images)
        if not self.training:
            out["conf"] = out["conf"].softmax(-1)
            return out
        if targets is None:
            raise ValueError("Yolact in train mode needs targets")
        losses = self.float32_loss(self.criterion, out, loss_targets(targets, images.shape[-2:]))
        return LossOutput.weigh(losses, self.criterion.weight_dict)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def nms(self, outputs: dict[str, Tensor]) -> list[NMSResult | None]:
        """The official ``Detect``: per image decode, drop priors whose best foreground score is
        <= ``conf_threshold``, Fast NMS. None for an image with no candidate."""
        c = self.config
        results: list[NMSResult | None] = []
        for loc, conf, coeffs in zip(outputs["loc"], outputs["conf"], outputs["mask"]):
            scores = conf[:, 1:].t()                                        # [C, P]
            keep = scores.max(0).values > c.conf_threshold
            if not bool(keep.any()):
                results.append(None)
                continue
            boxes = ssd_decode(loc[keep], outputs["priors"][keep])
            if c.cross_class_nms:
                results.append(cross_class_fast_nms(boxes, coeffs[keep], scores[:, keep], c.nms_threshold, c.top_k))
            else:
                results.append(fast_nms(boxes, coeffs[keep], scores[:, keep], c.nms_threshold, c.top_k,
                                        c.max_detections))
        return results

    def detections_at(self, result: NMSResult | None, proto: Tensor, hw: tuple[int, int]) -> Detections:
        """The official ``postprocess`` for one image at size ``hw`` = (h, w): score threshold,
        masks assembled / cropped / upsampled / binarised, boxes to absolute pixels (ordered,
        clamped to the image; kept as floats, the official code truncates them to integers)."""
        c = self.config
        h, w = hw
        if result is None:
            return empty_detections(proto.device, hw)
        if c.score_threshold > 0:
            keep = result.scores > c.score_threshold
            result = NMSResult(result.boxes[keep], result.coeffs[keep], result.labels[keep], result.scores[keep])
        masks = final_masks(proto, result.coeffs, result.boxes, hw, c.crop_masks)
        x1, x2 = sanitize_coordinates(result.boxes[:, 0], result.boxes[:, 2], w)
        y1, y2 = sanitize_coordinates(result.boxes[:, 1], result.boxes[:, 3], h)
        return Detections(torch.stack([x1, y1, x2, y2], 1), result.scores, result.labels, masks)

    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Detections in the network input frame (``sizes``: each image's (h, w), the full input)."""
        return [self.detections_at(r, p, tuple(s.tolist()))
                for r, p, s in zip(self.nms(outputs), outputs["proto"], sizes)]

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: Tensor, orig_sizes: Sequence[tuple[int, int]],
               amp: torch.dtype | None = None) -> list[Detections]:
        """As official: the network sees each image resized to the full (square) input, and the
        relative boxes and the masks go straight to the original size (no intermediate frame)."""
        full = torch.tensor(images.shape[-2:], device=sizes.device)
        if not bool((sizes == full).all()):
            raise ValueError(f"Yolact needs unpadded inputs (each image resized to the {tuple(full.tolist())} "
                             f"input, as Yolact.prepare and the square data pipeline do); got sizes {sizes.tolist()}")
        outputs = self.eval_forward(images, sizes, amp)
        return [self.detections_at(result, proto, tuple(orig))
                for result, proto, orig in zip(self.nms(outputs), outputs["proto"], orig_sizes)]


def empty_detections(device: torch.device, hw: tuple[int, int]) -> Detections:
    return Detections(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                      torch.zeros(0, dtype=torch.long, device=device),
                      torch.zeros(0, *hw, dtype=torch.bool, device=device))


def loss_targets(targets: list[Target], image_hw: Sequence[int]) -> list[LossTargets]:
    """codetr Targets (absolute xyxy in each image's frame, top-left aligned in the batch) ->
    relative boxes of the padded batch frame, masks padded to it, crowds apart."""
    H, W = int(image_hw[0]), int(image_hw[1])
    out = []
    for t in targets:
        scale = t.boxes.new_tensor([W, H, W, H])
        crowd = t.iscrowd.bool()
        objects = t.select(~crowd)
        if objects.masks is None:
            raise ValueError(f"Yolact needs instance masks in the targets (image id {t.image_id}); "
                             "build the dataset with masks (data.masks=true)")
        masks = objects.masks.new_zeros(len(objects), H, W)
        masks[:, : objects.masks.shape[1], : objects.masks.shape[2]] = objects.masks
        crowd_boxes = t.boxes[crowd] / scale if bool(crowd.any()) else None
        out.append(LossTargets(objects.boxes / scale, objects.labels, masks.float(), crowd_boxes))
    return out
