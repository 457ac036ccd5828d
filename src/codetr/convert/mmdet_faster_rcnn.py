"""mmdet 2.x Faster R-CNN checkpoints -> codetr ``FasterRCNN``.

The official file is ``{'meta': {..., 'config': <mmcv config text>, 'CLASSES': (...)},
'state_dict': ...}``. The architecture comes from the config (``--config``, else the text in
``meta``, read without executing it by ``convert.mmcv_config``), else from
``FasterRCNNConfig``'s defaults (mmdet's ``faster_rcnn_r50_fpn_1x_coco``) with the number of
classes read off ``roi_head.bbox_head.fc_cls``. Anything the config asks for that codetr does
not build (other backbones, necks, heads, losses or NMS kinds, non-zero coder means, RPN
anchors cut at the image border) is refused, naming the config key and its value.

Key table (mmdet -> codetr):

    backbone.{conv1,bn1,layerS.B.*}      -> backbone.body.*  (BN num_batches_tracked dropped for frozen BN)
    neck.lateral_convs.i.conv.*          -> fpn.lateral.i.*
    neck.fpn_convs.i.conv.*              -> fpn.output.i.*  (extra convs: fpn.extra.*)
    rpn_head.{rpn_conv,rpn_cls,rpn_reg}.* -> rpn_head.*
    roi_head.bbox_head.{shared_fcs.0,shared_fcs.1,fc_cls,fc_reg}.* -> roi_head.bbox_head.*
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from torch import Tensor

from ..backbones import BackboneConfig
from ..data.coco_names import COCO_CATEGORIES
from ..detector import InputSpec
from ..necks.fpn import fpn_from_mmdet, mmdet_fpn_key_map
from ..rcnn.faster_rcnn import FasterRCNN, FasterRCNNConfig, official_input_spec
from ..rcnn.roi_head import box_loss_from_mmdet, extractor_from_mmdet, roi_test_from_mmdet
from ..rcnn.rpn import ProposalConfig
from ..sampling import AssignSampleConfig
from ..structures import ClassInfo
from .common import Rule, load_mapped, map_keys
from .mmcv_config import load_config_text

FC_CLS = "roi_head.bbox_head.fc_cls.weight"


def mmdet_config(ckpt: dict, args: dict) -> dict:
    """The official config: ``args`` when given, else ``meta['config']`` (text or dict), else {}."""
    if args:
        return args
    config = (ckpt.get("meta") or {}).get("config")
    if isinstance(config, str):
        return load_config_text(config, None)
    return dict(config or {})


def _require(section: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"mmdet config {section}={value!r} is not supported (supported: {list(allowed)})")


def backbone_from_mmdet(b: dict) -> BackboneConfig:
    """mmdet ``ResNet`` -> ``BackboneConfig``: ``base_channels`` is the res2 bottleneck width."""
    _require("backbone.type", b.get("type"), ("ResNet",))
    _require("backbone.out_indices", list(b.get("out_indices", (0, 1, 2, 3))), ([0, 1, 2, 3],))
    _require("backbone.norm_cfg.type", b.get("norm_cfg", {}).get("type", "BN"), ("BN", "SyncBN"))
    for key, default in (("num_stages", 4), ("strides", [1, 2, 2, 2]), ("dilations", [1, 1, 1, 1]),
                         ("deep_stem", False), ("avg_down", False), ("dcn", None), ("plugins", None)):
        value = b.get(key, default)
        _require(f"backbone.{key}", list(value) if isinstance(value, (list, tuple)) else value, (default,))
    depth, base = int(b.get("depth", 50)), int(b.get("base_channels", 64))
    return BackboneConfig(depth=depth, norm="frozen_bn" if b.get("norm_eval", True) else "bn",
                          frozen_stages=int(b.get("frozen_stages", -1)),
                          stem_channels=int(b.get("stem_channels", base)),
                          res2_channels=base * (1 if depth in (18, 34) else 4), width_per_group=base,
                          stride_in_1x1=b.get("style", "pytorch") == "caffe")


def _rpn_fields(rpn: dict) -> dict:
    _require("rpn_head.type", rpn.get("type"), ("RPNHead",))
    ag, coder = rpn["anchor_generator"], rpn.get("bbox_coder", {})
    _require("rpn_head.anchor_generator.type", ag.get("type"), ("AnchorGenerator",))
    _require("rpn_head.anchor_generator.center_offset", ag.get("center_offset", 0.0), (0, 0.0))
    _require("rpn_head.bbox_coder.target_means", list(coder.get("target_means", [0.0] * 4)), ([0.0] * 4,))
    _require("rpn_head.loss_cls", (rpn["loss_cls"]["type"], rpn["loss_cls"].get("use_sigmoid")),
             (("CrossEntropyLoss", True),))
    _require("rpn_head.loss_bbox.type", rpn["loss_bbox"]["type"], ("L1Loss",))
    scales = ag.get("scales") or [ag["octave_base_scale"] * 2 ** (i / ag["scales_per_octave"])
                                  for i in range(ag["scales_per_octave"])]
    return dict(rpn_channels=int(rpn["feat_channels"]), anchor_scales=tuple(float(s) for s in scales),
                anchor_ratios=tuple(float(r) for r in ag["ratios"]),
                anchor_strides=tuple(int(s) for s in ag["strides"]),
                rpn_stds=tuple(float(s) for s in coder.get("target_stds", (1.0,) * 4)),
                rpn_cls_weight=float(rpn["loss_cls"].get("loss_weight", 1.0)),
                rpn_box_weight=float(rpn["loss_bbox"].get("loss_weight", 1.0)))


def _roi_fields(roi: dict, rcnn_train: dict | None, rcnn_test: dict | None) -> dict:
    _require("roi_head.type", roi.get("type"), ("StandardRoIHead",))
    head = roi["bbox_head"]
    _require("roi_head.bbox_head.type", head.get("type"), ("Shared2FCBBoxHead",))
    coder = head.get("bbox_coder", {})
    _require("roi_head.bbox_head.bbox_coder.target_means", list(coder.get("target_means", [0.0] * 4)), ([0.0] * 4,))
    loss = box_loss_from_mmdet(head, rcnn_train)
    _require("train_cfg.rcnn.pos_weight", loss.pos_weight, (-1, -1.0))
    ext = extractor_from_mmdet(roi["bbox_roi_extractor"])
    out = dict(roi_strides=ext.strides, roi_size=ext.output_size, roi_sampling_ratio=ext.sampling_ratio,
               finest_scale=ext.finest_scale, fc_channels=int(head.get("fc_out_channels", 1024)),
               class_agnostic=bool(head.get("reg_class_agnostic", False)),
               roi_stds=tuple(float(s) for s in coder.get("target_stds", (0.1, 0.1, 0.2, 0.2))),
               roi_box_loss=loss.box_loss, cls_weight=loss.cls_weight, box_weight=loss.box_weight)
    if rcnn_test is not None:
        out["rcnn_test"] = roi_test_from_mmdet(rcnn_test)
    return out


def _fpn_fields(neck: dict, backbone: BackboneConfig, num_levels: int) -> dict:
    """mmdet ``FPN`` (checked by ``fpn_from_mmdet``) on C2..C5, ``num_levels`` outputs."""
    _require("neck.type", neck.get("type"), ("FPN",))
    fpn = fpn_from_mmdet(neck)
    _require("neck.in_channels", list(neck["in_channels"]), ([backbone.res2_channels * 2 ** i for i in range(4)],))
    _require("neck.num_outs", neck["num_outs"], (num_levels,))
    _require("neck.relu_before_extra_convs", fpn.relu_before_extra and len(fpn.extra) > 1, (False,))
    return dict(fpn_channels=int(neck["out_channels"]), fpn_extra_from=fpn.extra_from)


def _train_test_fields(train: dict | None, test: dict | None) -> dict:
    out: dict = {}
    if train is not None:
        _require("train_cfg.rpn.allowed_border", train["rpn"].get("allowed_border", -1), (-1,))
        out.update(rpn_sampling=AssignSampleConfig.from_mmdet(train["rpn"]),
                   rpn_train_proposals=ProposalConfig.from_mmdet(train["rpn_proposal"]),
                   rcnn_sampling=AssignSampleConfig.from_mmdet(train["rcnn"]))
    if test is not None:
        out["rpn_test_proposals"] = ProposalConfig.from_mmdet(test["rpn"])
    return out


def config_from_mmdet(config: dict, state: dict[str, Tensor]) -> FasterRCNNConfig:
    """mmdet config dict (``{'model': ...}``; empty: the defaults) + weights -> FasterRCNNConfig."""
    num_classes = int(state[FC_CLS].shape[0]) - 1
    model = config.get("model")
    if not model:
        return FasterRCNNConfig(num_classes=num_classes)
    _require("model.type", model.get("type"), ("FasterRCNN",))
    declared = model["roi_head"]["bbox_head"].get("num_classes", num_classes)
    if declared != num_classes:
        raise ValueError(f"mmdet config roi_head.bbox_head.num_classes={declared} but {FC_CLS} has "
                         f"{num_classes} + 1 rows")
    train, test = model.get("train_cfg") or config.get("train_cfg"), model.get("test_cfg") or config.get("test_cfg")
    backbone = backbone_from_mmdet(model["backbone"])
    rpn = _rpn_fields(model["rpn_head"])
    fpn = _fpn_fields(model["neck"], backbone, len(rpn["anchor_strides"]))
    for key, head in (("rpn_head", model["rpn_head"]), ("roi_head.bbox_head", model["roi_head"]["bbox_head"])):
        _require(f"{key}.in_channels", head.get("in_channels"), (fpn["fpn_channels"],))
    fields = dict(num_classes=num_classes, backbone=backbone, **rpn, **fpn, **_train_test_fields(train, test),
                  **_roi_fields(model["roi_head"], None if train is None else train["rcnn"],
                                None if test is None else test["rcnn"]))
    return FasterRCNNConfig(**fields)


def input_spec_from_mmdet(config: dict) -> InputSpec:
    """``img_norm_cfg`` (mean / std on [0, 255]; ``to_rgb`` False = BGR) and the test scale."""
    spec = official_input_spec()
    norm = config.get("img_norm_cfg")
    if norm:
        spec = replace(spec, mean=tuple(float(x) for x in norm["mean"]), std=tuple(float(x) for x in norm["std"]),
                       channel_order="RGB" if norm.get("to_rgb", True) else "BGR")
    pipeline = config.get("test_pipeline") or config.get("data", {}).get("test", {}).get("pipeline") or []
    for step in pipeline:
        if step.get("type") == "MultiScaleFlipAug" and step.get("img_scale"):
            long_side, short_side = step["img_scale"] if isinstance(step["img_scale"][0], int) else step["img_scale"][0]
            spec = replace(spec, min_size=int(min(long_side, short_side)), max_size=int(max(long_side, short_side)))
    return spec


def classes_from_meta(meta: dict | None, num_classes: int) -> ClassInfo:
    """``meta['CLASSES']``: COCO's 80 names -> COCO category ids; other names -> ids 0..K-1."""
    names = list((meta or {}).get("CLASSES") or [])
    coco = [COCO_CATEGORIES[i] for i in sorted(COCO_CATEGORIES)]
    if names == coco and num_classes == len(coco):
        return ClassInfo(sorted(COCO_CATEGORIES), coco)
    if len(names) == num_classes:
        return ClassInfo(list(range(num_classes)), [str(n) for n in names])
    return ClassInfo.anonymous(num_classes)


def key_rules(config: FasterRCNNConfig, num_fpn_extra_convs: int) -> list[Rule]:
    """The explicit mmdet -> codetr key table (module docstring) for this architecture."""
    drop_bn_counts = [(r"backbone\..*\.num_batches_tracked", None)] if config.backbone.norm == "frozen_bn" else []
    fpn = [(re.escape("neck." + k), "fpn." + v) for k, v in mmdet_fpn_key_map(4, num_fpn_extra_convs).items()]
    return drop_bn_counts + fpn + [
        (r"backbone\.((conv1|bn1|layer\d+\.\d+\.(conv\d|bn\d|downsample\.[01]))\.\w+)", r"backbone.body.\1"),
        (r"rpn_head\.((rpn_conv|rpn_cls|rpn_reg)\.(weight|bias))", r"rpn_head.\1"),
        (r"roi_head\.bbox_head\.((shared_fcs\.[01]|fc_cls|fc_reg)\.(weight|bias))", r"roi_head.bbox_head.\1"),
    ]


def convert(ckpt: dict, config: dict, strict: bool = True) -> FasterRCNN:
    """An mmdet Faster R-CNN checkpoint dict + its config dict -> a loaded ``FasterRCNN``."""
    state = ckpt["state_dict"]
    if FC_CLS not in state or not any(k.startswith("rpn_head.") for k in state):
        raise ValueError(f"not an mmdet Faster R-CNN checkpoint: expected 'rpn_head.*' and {FC_CLS!r} keys "
                         f"(first keys: {', '.join(list(state)[:5])})")
    model_config = config_from_mmdet(config, state)
    model = FasterRCNN(model_config, classes_from_meta(ckpt.get("meta"), model_config.num_classes),
                       input_spec_from_mmdet(config))
    mapped, unmapped = map_keys(state, key_rules(model_config, len(model.fpn.extra)))
    load_mapped(model, mapped, unmapped, "mmdet Faster R-CNN checkpoint", strict=strict,
                ignore_missing=lambda k: k.endswith("num_batches_tracked"))
    return model
