"""mmdet 2.x ATSS checkpoints -> codetr ``ATSS``.

The official file is ``{'meta': {..., 'config': <mmcv config text>, 'CLASSES': (...)},
'state_dict': ...}``. The architecture comes from the config (``--config``, else the text in
``meta``, read without executing it), else from ``ATSSConfig``'s defaults (mmdet's
``atss_r50_fpn_1x_coco``) with the class count read off ``bbox_head.atss_cls``. What codetr does
not build (other necks or heads, other losses, anchors cut at the image border, non-ResNet
backbones) is refused, naming the config key and its value.

Key table (mmdet -> codetr):

    backbone.{conv1,bn1,layerS.B.*}               -> backbone.body.*  (num_batches_tracked dropped: frozen BN)
    neck.lateral_convs.i.conv.*                   -> fpn.lateral.i.*
    neck.fpn_convs.i.conv.*                       -> fpn.output.i.* (i < 3), fpn.extra.(i - 3).*
    bbox_head.{cls_convs,reg_convs}.i.{conv,gn}.* -> head.{cls_tower,reg_tower}.i.{0,1}.*
    bbox_head.{atss_cls,atss_reg,atss_centerness}.* -> head.{cls_logits,box_deltas,centerness}.*
    bbox_head.scales.l.scale                      -> head.scales.l.value
"""
from __future__ import annotations

import re

from torch import Tensor

from ..dense.atss import official_key_map
from ..dense.atss_detector import ATSS, ATSSConfig
from ..necks.fpn import mmdet_fpn_key_map
from .common import Rule
from .mmdet import (backbone_from_mmdet, backbone_key_rules, classes_from_meta, input_spec_from_mmdet,
                    load_mmdet_state, require)

ATSS_CLS = "bbox_head.atss_cls.weight"
_NECK_EXTRA = ("on_output",)


def _neck_fields(neck: dict, backbone_channels: list[int]) -> dict:
    """mmdet ``FPN`` from C3 (start_level 1), extra convs on the P5 output, no ReLU before them."""
    require("neck.type", neck.get("type"), ("FPN",))
    require("neck.start_level", neck.get("start_level", 0), (1,))
    require("neck.end_level", neck.get("end_level", -1), (-1,))
    require("neck.add_extra_convs", neck.get("add_extra_convs", False), _NECK_EXTRA)
    require("neck.relu_before_extra_convs", neck.get("relu_before_extra_convs", False), (False,))
    for key in ("norm_cfg", "act_cfg"):
        require(f"neck.{key}", neck.get(key), (None,))
    require("neck.in_channels", list(neck["in_channels"])[1:], (backbone_channels,))
    return dict(fpn_channels=int(neck["out_channels"]))


def _head_fields(head: dict) -> dict:
    require("bbox_head.type", head.get("type"), ("ATSSHead",))
    require("bbox_head.reg_decoded_bbox", head.get("reg_decoded_bbox", True), (True,))
    anchors, coder = head["anchor_generator"], head.get("bbox_coder", {})
    require("bbox_head.anchor_generator.type", anchors.get("type"), ("AnchorGenerator",))
    require("bbox_head.anchor_generator.center_offset", anchors.get("center_offset", 0.0), (0, 0.0))
    require("bbox_head.bbox_coder.type", coder.get("type", "DeltaXYWHBBoxCoder"), ("DeltaXYWHBBoxCoder",))
    cls, box, ctr = head["loss_cls"], head["loss_bbox"], head.get("loss_centerness", {})
    require("bbox_head.loss_cls", (cls["type"], cls.get("use_sigmoid", True)), (("FocalLoss", True),))
    require("bbox_head.loss_bbox.type", box["type"], ("GIoULoss",))
    require("bbox_head.loss_centerness", (ctr.get("type", "CrossEntropyLoss"), ctr.get("use_sigmoid", True)),
            (("CrossEntropyLoss", True),))
    return dict(
        feat_channels=int(head.get("feat_channels", 256)), stacked_convs=int(head.get("stacked_convs", 4)),
        strides=[int(s) for s in anchors["strides"]], octave_base_scale=int(anchors["octave_base_scale"]),
        scales_per_octave=int(anchors["scales_per_octave"]), anchor_ratios=[float(r) for r in anchors["ratios"]],
        target_means=[float(x) for x in coder.get("target_means", [0.0] * 4)],
        target_stds=[float(x) for x in coder.get("target_stds", [1.0] * 4)],
        focal_alpha=float(cls.get("alpha", 0.25)), focal_gamma=float(cls.get("gamma", 2.0)),
        cls_weight=float(cls.get("loss_weight", 1.0)), giou_weight=float(box.get("loss_weight", 1.0)),
        centerness_weight=float(ctr.get("loss_weight", 1.0)))


def _train_test_fields(train: dict | None, test: dict | None) -> dict:
    out: dict = {}
    if train is not None:
        require("train_cfg.assigner.type", train["assigner"].get("type"), ("ATSSAssigner",))
        require("train_cfg.allowed_border", train.get("allowed_border", -1), (-1,))
        out["topk"] = int(train["assigner"].get("topk", 9))
    if test is not None:
        nms = test.get("nms") or {}
        require("test_cfg.nms.type", nms.get("type", "nms"), ("nms",))
        iou = nms.get("iou_threshold", nms.get("iou_thr"))  # mmdet < 2.4 says iou_thr
        out.update(score_threshold=float(test.get("score_thr", 0.05)), topk_candidates=int(test.get("nms_pre", 1000)),
                   nms_threshold=None if iou is None else float(iou),
                   detections_per_image=int(test.get("max_per_img", 100)))
    return out


def config_from_mmdet(config: dict, state: dict[str, Tensor]) -> ATSSConfig:
    """mmdet config dict (``{'model': ...}``; empty: the defaults) + weights -> ATSSConfig."""
    model = config.get("model")
    if not model:
        return ATSSConfig(num_classes=int(state[ATSS_CLS].shape[0]))
    require("model.type", model.get("type"), ("ATSS",))
    head = _head_fields(model["bbox_head"])
    rows, anchors = int(state[ATSS_CLS].shape[0]), len(head["anchor_ratios"]) * head["scales_per_octave"]
    num_classes = int(model["bbox_head"].get("num_classes", rows // anchors))
    if num_classes * anchors != rows:
        raise ValueError(f"mmdet config bbox_head.num_classes={num_classes} with {anchors} anchors per location, "
                         f"but {ATSS_CLS} has {rows} rows")
    backbone = backbone_from_mmdet(model["backbone"])
    channels = [backbone.res2_channels * 2 ** i for i in range(1, 4)]
    require("neck.num_outs", model["neck"].get("num_outs"), (len(head["strides"]),))
    train, test = model.get("train_cfg") or config.get("train_cfg"), model.get("test_cfg") or config.get("test_cfg")
    return ATSSConfig(num_classes=num_classes, backbone=backbone, **_neck_fields(model["neck"], channels), **head,
                      **_train_test_fields(train, test))


def key_rules(config: ATSSConfig) -> list[Rule]:
    """The explicit mmdet -> codetr key table (module docstring) for this architecture."""
    fpn = [(re.escape("neck." + k), "fpn." + v) for k, v in mmdet_fpn_key_map(3, len(config.strides) - 3).items()]
    head = [(re.escape("bbox_head." + k), "head." + v)
            for k, v in official_key_map(config.stacked_convs, len(config.strides)).items()]
    return backbone_key_rules(config.backbone) + fpn + head


def convert(ckpt: dict, config: dict, strict: bool = True) -> ATSS:
    """An mmdet ATSS checkpoint dict + its config dict -> a loaded ``ATSS``."""
    state = ckpt["state_dict"]
    if ATSS_CLS not in state or not any(k.startswith("backbone.") for k in state):
        raise ValueError(f"not an mmdet ATSS checkpoint: expected 'backbone.*' and {ATSS_CLS!r} keys "
                         f"(first keys: {', '.join(list(state)[:5])})")
    model_config = config_from_mmdet(config, state)
    model = ATSS(model_config, classes_from_meta(ckpt.get("meta"), model_config.num_classes),
                 input_spec_from_mmdet(config))
    return load_mmdet_state(model, state, key_rules(model_config), "mmdet ATSS checkpoint", strict)
