"""Official DeFCN / FCOS (Megvii-BaseDetection/DeFCN on cvpods) checkpoints -> codetr DeFCN or FCOS.

The official file is ``{'model': state_dict}``; the architecture comes from the cvpods config
(a nested dict of its names, as the fixtures' ``config``: ``MODEL.RESNETS.DEPTH``, ...), and
the variant from the weights: ``head.max3d.*`` = 3D max filtering, ``head.centerness.*`` = FCOS.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import Tensor

from ..dense.defcn import DeFCN, DeFCNConfig
from ..dense.fcos import FCOS, FCOSConfig, PointConfig, official_input_spec
from ..structures import ClassInfo
from .common import Rule, coco_classes, load_mapped, map_keys

_BODY = r"backbone\.bottom_up\."
KEY_RULES: list[Rule] = [
    (_BODY + r"stem\.conv1\.weight", r"backbone.body.conv1.weight"),
    (_BODY + r"stem\.conv1\.norm\.(.*)", r"backbone.body.bn1.\1"),
    (_BODY + r"res2\.(\d+)\.conv(\d)\.weight", r"backbone.body.layer1.\1.conv\2.weight"),
    (_BODY + r"res3\.(\d+)\.conv(\d)\.weight", r"backbone.body.layer2.\1.conv\2.weight"),
    (_BODY + r"res4\.(\d+)\.conv(\d)\.weight", r"backbone.body.layer3.\1.conv\2.weight"),
    (_BODY + r"res5\.(\d+)\.conv(\d)\.weight", r"backbone.body.layer4.\1.conv\2.weight"),
    (_BODY + r"res2\.(\d+)\.conv(\d)\.norm\.(.*)", r"backbone.body.layer1.\1.bn\2.\3"),
    (_BODY + r"res3\.(\d+)\.conv(\d)\.norm\.(.*)", r"backbone.body.layer2.\1.bn\2.\3"),
    (_BODY + r"res4\.(\d+)\.conv(\d)\.norm\.(.*)", r"backbone.body.layer3.\1.bn\2.\3"),
    (_BODY + r"res5\.(\d+)\.conv(\d)\.norm\.(.*)", r"backbone.body.layer4.\1.bn\2.\3"),
    (_BODY + r"res2\.0\.shortcut\.weight", r"backbone.body.layer1.0.downsample.0.weight"),
    (_BODY + r"res3\.0\.shortcut\.weight", r"backbone.body.layer2.0.downsample.0.weight"),
    (_BODY + r"res4\.0\.shortcut\.weight", r"backbone.body.layer3.0.downsample.0.weight"),
    (_BODY + r"res5\.0\.shortcut\.weight", r"backbone.body.layer4.0.downsample.0.weight"),
    (_BODY + r"res2\.0\.shortcut\.norm\.(.*)", r"backbone.body.layer1.0.downsample.1.\1"),
    (_BODY + r"res3\.0\.shortcut\.norm\.(.*)", r"backbone.body.layer2.0.downsample.1.\1"),
    (_BODY + r"res4\.0\.shortcut\.norm\.(.*)", r"backbone.body.layer3.0.downsample.1.\1"),
    (_BODY + r"res5\.0\.shortcut\.norm\.(.*)", r"backbone.body.layer4.0.downsample.1.\1"),
    (r"backbone\.fpn_lateral3\.(.*)", r"fpn.lateral.0.\1"),
    (r"backbone\.fpn_lateral4\.(.*)", r"fpn.lateral.1.\1"),
    (r"backbone\.fpn_lateral5\.(.*)", r"fpn.lateral.2.\1"),
    (r"backbone\.fpn_output3\.(.*)", r"fpn.output.0.\1"),
    (r"backbone\.fpn_output4\.(.*)", r"fpn.output.1.\1"),
    (r"backbone\.fpn_output5\.(.*)", r"fpn.output.2.\1"),
    (r"backbone\.top_block\.p6\.(.*)", r"fpn.extra.0.\1"),
    (r"backbone\.top_block\.p7\.(.*)", r"fpn.extra.1.\1"),
    (r"head\.((cls_subnet|bbox_subnet)\.\d+|cls_score|bbox_pred|centerness|filter|max3d\.(conv|norm)|scales\.\d+)"
     r"\.(weight|bias|scale)", r"head.\1.\4"),
]


def _get(config: dict, path: str, default: Any = None) -> Any:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _require(config: dict, path: str, allowed: tuple, default: Any) -> None:
    value = _get(config, path, default)
    if value not in allowed:
        raise ValueError(f"official config {path}={value!r} is not supported (supported: {list(allowed)})")


def _float(x: Any) -> float:
    return math.inf if x in ("inf", float("inf")) else float(x)


def _point_fields(config: dict, state: dict[str, Tensor], is_fcos: bool) -> dict:
    """The ``PointConfig`` fields of a cvpods config (FCOS and DeFCN alike)."""
    d = PointConfig()
    r, f = (lambda k, v: _get(config, "MODEL.RESNETS." + k, v)), (lambda k, v: _get(config, "MODEL.FCOS." + k, v))
    radius = f("CENTER_SAMPLING_RADIUS", 1.5) if is_fcos else _get(config, "MODEL.POTO.CENTER_SAMPLING_RADIUS", 1.5)
    return dict(
        num_classes=int(state["head.cls_score.weight"].shape[0]) if "head.cls_score.weight" in state
        else int(f("NUM_CLASSES", 80)),
        backbone=replace(d.backbone, depth=int(r("DEPTH", 50)),
                         frozen_stages=int(_get(config, "MODEL.BACKBONE.FREEZE_AT", 2)) - 1,
                         stem_channels=int(r("STEM_OUT_CHANNELS", 64)), res2_channels=int(r("RES2_OUT_CHANNELS", 256)),
                         width_per_group=int(r("WIDTH_PER_GROUP", 64)), stride_in_1x1=bool(r("STRIDE_IN_1X1", True))),
        fpn_channels=int(_get(config, "MODEL.FPN.OUT_CHANNELS", d.fpn_channels)),
        strides=[int(s) for s in f("FPN_STRIDES", d.strides)],
        point_offset=float(_get(config, "MODEL.SHIFT_GENERATOR.OFFSET", d.point_offset)),
        num_convs=int(f("NUM_CONVS", d.num_convs)), prior_prob=float(f("PRIOR_PROB", d.prior_prob)),
        norm_reg_targets=bool(f("NORM_REG_TARGETS", d.norm_reg_targets)), center_sampling_radius=float(radius),
        focal_alpha=float(f("FOCAL_LOSS_ALPHA", d.focal_alpha)), focal_gamma=float(f("FOCAL_LOSS_GAMMA", d.focal_gamma)),
        score_threshold=float(f("SCORE_THRESH_TEST", d.score_threshold)),
        topk_candidates=int(f("TOPK_CANDIDATES_TEST", d.topk_candidates)),
        detections_per_image=int(_get(config, "TEST.DETECTIONS_PER_IMAGE", d.detections_per_image)),
    )


def config_from_official(config: dict, state: dict[str, Tensor]) -> DeFCNConfig | FCOSConfig:
    """cvpods config values + the weights -> DeFCNConfig, or FCOSConfig when the head has
    center-ness weights."""
    for path, allowed, default in [("MODEL.RESNETS.NUM_GROUPS", (1,), 1), ("MODEL.RESNETS.DEEP_STEM", (False,), False),
                                   ("MODEL.RESNETS.RES5_DILATION", (1,), 1), ("MODEL.RESNETS.NORM", ("FrozenBN",), "FrozenBN"),
                                   ("MODEL.FPN.NORM", ("",), ""), ("MODEL.FPN.FUSE_TYPE", ("sum",), "sum"),
                                   ("MODEL.FPN.BLOCK_IN_FEATURES", ("p5",), "p5"),
                                   ("MODEL.FCOS.IOU_LOSS_TYPE", ("giou",), "giou"),
                                   ("MODEL.SHIFT_GENERATOR.NUM_SHIFTS", (1,), 1)]:
        _require(config, path, allowed, default)
    if any(float(w) != 1.0 for w in _get(config, "MODEL.FCOS.BBOX_REG_WEIGHTS", [1, 1, 1, 1])):
        raise ValueError("official config MODEL.FCOS.BBOX_REG_WEIGHTS other than (1, 1, 1, 1) is not supported")
    f, p = (lambda k, v: _get(config, "MODEL.FCOS." + k, v)), (lambda k, v: _get(config, "MODEL.POTO." + k, v))
    is_fcos = "head.centerness.weight" in state
    nms_threshold = float(f("NMS_THRESH_TEST", 0.6))
    no_nms = _get(config, "MODEL.NMS_TYPE", "normal") is None or nms_threshold >= 1.0
    fields = dict(_point_fields(config, state, is_fcos), nms_threshold=None if no_nms else nms_threshold)
    if is_fcos:
        d = FCOSConfig()
        return FCOSConfig(**fields, size_ranges=[[_float(a), _float(b)] for a, b in
                                                 f("OBJECT_SIZES_OF_INTEREST", d.size_ranges)],
                          centerness_on_reg=bool(f("CENTERNESS_ON_REG", d.centerness_on_reg)))
    d = DeFCNConfig()
    aux = p("AUX_TOPK", None)
    return DeFCNConfig(**fields, max_filter="head.max3d.conv.weight" in state,
                       filter_kernel_size=int(p("FILTER_KERNEL_SIZE", d.filter_kernel_size)),
                       filter_tau=int(p("FILTER_TAU", d.filter_tau)), poto_alpha=float(p("ALPHA", d.poto_alpha)),
                       aux_topk=None if aux is None else int(aux), reg_weight=float(f("REG_WEIGHT", d.reg_weight)))


def input_spec_from_official(config: dict):
    """Test-time resize (ResizeShortestEdge) and pixel statistics of a cvpods config."""
    spec = official_input_spec()
    for name, args in _get(config, "INPUT.AUG.TEST_PIPELINES", []) or []:
        if name == "ResizeShortestEdge":
            short = args.get("short_edge_length", spec.min_size)
            spec.min_size = int(short[0] if isinstance(short, (list, tuple)) else short)
            spec.max_size = int(args.get("max_size", spec.max_size))
    spec.mean = tuple(float(x) for x in _get(config, "MODEL.PIXEL_MEAN", spec.mean))
    spec.std = tuple(float(x) for x in _get(config, "MODEL.PIXEL_STD", spec.std))
    spec.channel_order = "RGB" if _get(config, "INPUT.FORMAT", "BGR") == "RGB" else "BGR"
    return spec


def convert(state: dict[str, Tensor], config: dict, strict: bool = True) -> DeFCN | FCOS:
    if not any(k.startswith("backbone.bottom_up.") for k in state) or "head.cls_score.weight" not in state:
        raise ValueError("not a cvpods DeFCN/FCOS checkpoint: expected 'backbone.bottom_up.*' and "
                         f"'head.cls_score.weight' keys (first keys: {', '.join(list(state)[:5])})")
    model_config = config_from_official(config, state)
    family = FCOS if isinstance(model_config, FCOSConfig) else DeFCN
    coco, n = coco_classes(), model_config.num_classes  # cvpods COCO heads: the 80 categories in id order
    classes = coco if n == len(coco) else ClassInfo.anonymous(n)
    model = family(model_config, classes, input_spec_from_official(config))
    mapped, unmapped = map_keys(state, KEY_RULES)
    load_mapped(model, mapped, unmapped, f"{family.__name__} checkpoint", strict=strict)
    return model
