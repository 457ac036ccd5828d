"""Official dbolya/yolact checkpoints (a raw ``Yolact.state_dict()``) -> codetr Yolact.

The architecture comes from ``config``, the official cfg as a dict (the fixtures' ``config``;
keys such as ``num_classes`` (with background), ``max_size``, ``backbone`` {``args``,
``pred_scales``, ``pred_aspect_ratios``, ``use_square_anchors``}, ``fpn``, thresholds and loss
weights). Without it, what the weights tell is used: ResNet depth, DCN blocks, class count and
priors per location (9: YOLACT++ scales), at the official 550 px.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from torch import Tensor

from ..structures import ClassInfo
from ..yolact.yolact import Yolact, YolactConfig
from .common import Rule, coco_classes, load_mapped, map_keys

_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_PLUS_SCALES = [[s * 2 ** (j / 3.0) for j in range(3)] for s in (24, 48, 96, 192, 384)]


def key_rules(num_fpn_inputs: int = 3) -> list[Rule]:
    """Official key -> codetr key. The official FPN lists its lateral and output convs from the
    coarsest level down; codetr from the finest up."""
    rules: list[Rule] = [(r"backbone\.(conv1|bn1)\.(.*)", r"backbone.body.\1.\2")]
    rules += [(rf"backbone\.layers\.{s}\.(.*)", rf"backbone.body.layer{s + 1}.\1") for s in range(4)]
    for k in range(num_fpn_inputs):
        rules += [(rf"fpn\.lat_layers\.{k}\.(.*)", rf"fpn.lateral.{num_fpn_inputs - 1 - k}.\1"),
                  (rf"fpn\.pred_layers\.{k}\.(.*)", rf"fpn.output.{num_fpn_inputs - 1 - k}.\1")]
    rules += [
        (r"fpn\.downsample_layers\.(\d+)\.(.*)", r"fpn.extra.\1.\2"),
        # proto_net is conv, ReLU, conv, ReLU, conv, ReLU, upsample, ReLU, conv, ReLU, conv
        (r"proto_net\.0\.(.*)", r"proto_net.convs.0.\1"),
        (r"proto_net\.2\.(.*)", r"proto_net.convs.1.\1"),
        (r"proto_net\.4\.(.*)", r"proto_net.convs.2.\1"),
        (r"proto_net\.8\.(.*)", r"proto_net.after_upsample.\1"),
        (r"proto_net\.10\.(.*)", r"proto_net.out.\1"),
        (r"prediction_layers\.0\.(upfeature\.0|bbox_layer|conf_layer|mask_layer)\.(.*)", r"head.\1.\2"),
        (r"semantic_seg_conv\.(.*)", r"semantic_seg_conv.\1"),
    ]
    return rules


def _blocks_per_stage(state: dict[str, Tensor]) -> tuple[int, ...]:
    counts = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"backbone\.layers\.(\d)\.(\d+)\.", key)
        if m:
            counts[int(m[1])] = max(counts[int(m[1])], int(m[2]) + 1)
    return tuple(counts)


def _check_supported(cfg: dict) -> None:
    """Refuse official settings this port does not implement, naming the setting."""
    unsupported = {"mask_type": 1, "use_focal_loss": False, "use_prediction_module": False,
                   "share_prediction_module": True, "use_yolo_regressors": False, "mask_proto_bias": False,
                   "use_objectness_score": False, "mask_proto_prototypes_as_features": False}
    for key, expected in unsupported.items():
        if key in cfg and cfg[key] != expected:
            raise ValueError(f"official YOLACT config {key}={cfg[key]!r} is not supported (only {expected!r})")
    if cfg.get("use_maskiou"):
        raise ValueError("official YOLACT config use_maskiou=True (YOLACT++ mask re-scoring) is not supported")
    backbone = cfg.get("backbone", {})
    if backbone and (not backbone.get("use_pixel_scales", True) or backbone.get("preapply_sqrt", False)):
        raise ValueError("official YOLACT backbone config needs use_pixel_scales=True and preapply_sqrt=False")


def config_from_official(cfg: dict, state: dict[str, Tensor]) -> YolactConfig:
    """Official cfg dict (possibly empty) + weights -> YolactConfig."""
    _check_supported(cfg)
    blocks = _blocks_per_stage(state)
    if blocks not in _DEPTHS:
        raise ValueError(f"official YOLACT backbone has {blocks} blocks per stage; known ResNets: {list(_DEPTHS)}")
    backbone = cfg.get("backbone", {})
    args = list(backbone.get("args", [list(blocks)]))
    dcn_from_weights = [sum(f"backbone.layers.{s}.{b}.conv2.conv_offset_mask.weight" in state
                            for b in range(blocks[s])) for s in range(4)]
    dcn_layers = list(args[1]) if len(args) > 1 else dcn_from_weights
    dcn_interval = int(args[2]) if len(args) > 2 else (3 if blocks[2] == 23 and any(dcn_layers) else 1)
    conf_w = state["prediction_layers.0.conf_layer.weight"]
    num_priors = state["prediction_layers.0.bbox_layer.weight"].shape[0] // 4
    num_classes = int(cfg.get("num_classes", conf_w.shape[0] // num_priors)) - 1
    default = YolactConfig()
    plus = num_priors == 9
    fpn = cfg.get("fpn", {})
    if fpn and (fpn.get("num_downsample", 2) != 2 or not fpn.get("use_conv_downsample", True)):
        raise ValueError(f"official YOLACT fpn {fpn} is not supported (2 conv downsample layers only)")
    ratios = backbone.get("pred_aspect_ratios", [[default.aspect_ratios]])[0][0]
    return YolactConfig(
        num_classes=num_classes, max_size=int(cfg.get("max_size", 550)),
        backbone=replace(default.backbone, depth=_DEPTHS[blocks], dcn_layers=tuple(int(n) for n in dcn_layers),
                         dcn_interval=dcn_interval),
        fpn_features=int(fpn.get("num_features", state["fpn.lat_layers.0.weight"].shape[0])),
        pred_scales=[list(map(float, s)) for s in backbone.get("pred_scales", _PLUS_SCALES if plus
                                                                 else default.pred_scales)],
        aspect_ratios=[float(r) for r in ratios],
        square_anchors=bool(backbone.get("use_square_anchors", not plus)),
        num_prototypes=int(state["proto_net.10.weight"].shape[0]),
        pos_threshold=float(cfg.get("positive_iou_threshold", default.pos_threshold)),
        neg_threshold=float(cfg.get("negative_iou_threshold", default.neg_threshold)),
        crowd_threshold=float(cfg.get("crowd_iou_threshold", default.crowd_threshold)),
        negpos_ratio=int(cfg.get("ohem_negpos_ratio", default.negpos_ratio)),
        bbox_alpha=float(cfg.get("bbox_alpha", default.bbox_alpha)),
        conf_alpha=float(cfg.get("conf_alpha", default.conf_alpha)),
        mask_alpha=float(cfg.get("mask_alpha", default.mask_alpha)),
        semantic_alpha=float(cfg.get("semantic_segmentation_alpha", default.semantic_alpha)),
        masks_to_train=int(cfg.get("masks_to_train", default.masks_to_train)),
        top_k=int(cfg.get("nms_top_k", default.top_k)),
        conf_threshold=float(cfg.get("nms_conf_thresh", default.conf_threshold)),
        nms_threshold=float(cfg.get("nms_thresh", default.nms_threshold)),
        max_detections=int(cfg.get("max_num_detections", default.max_detections)),
    )


def official_classes(cfg: dict, num_classes: int) -> ClassInfo:
    """COCO's 80 categories (official label order = sorted COCO ids) or the config's names."""
    names = cfg.get("dataset", {}).get("class_names") if isinstance(cfg.get("dataset"), dict) else None
    if num_classes == 80 and not names:
        return coco_classes()
    if names and len(names) == num_classes:
        return ClassInfo(list(range(num_classes)), list(names))
    return ClassInfo.anonymous(num_classes)


def convert(state: dict[str, Tensor], cfg: dict | None = None, strict: bool = True) -> Yolact:
    if "prediction_layers.0.conf_layer.weight" not in state or "proto_net.10.weight" not in state:
        raise ValueError("not an official YOLACT state_dict: no 'prediction_layers.0.conf_layer.weight' / "
                         f"'proto_net.10.weight' (first keys: {', '.join(list(state)[:5])})")
    cfg = dict(cfg or {})
    config = config_from_official(cfg, state)
    model = Yolact(config, official_classes(cfg, config.num_classes))
    mapped, unmapped = map_keys(state, key_rules())
    load_mapped(model, mapped, unmapped, "YOLACT checkpoint", strict=strict)
    return model


def unwrap_state(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The official files are the bare state_dict; accept {'state_dict': ...} / {'model': ...} too."""
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    return ckpt
