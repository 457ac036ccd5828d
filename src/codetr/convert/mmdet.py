"""What the mmdet 2.x converters (``mmdet_faster_rcnn``, ``mmdet_atss``, ``co_detr``) read alike:
the official config, its ResNet backbone, its input normalisation and test scale, the class
names in ``meta``, and the backbone's key rules. Anything codetr does not build is refused by
``require``, naming the config key and its value.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from torch import Tensor, nn

from ..backbones import BackboneConfig
from ..detector import InputSpec, mmdet_input_spec
from ..structures import ClassInfo
from .common import Rule, coco_classes, load_mapped, map_keys
from .mmcv_config import load_config_text


def require(key: str, value: Any, allowed: tuple) -> None:
    """Refuse config ``key`` unless its ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"mmdet config {key}={value!r} is not supported (supported: {list(allowed)})")


def mmdet_config(ckpt: dict, args: dict) -> dict:
    """The official config: ``args`` when given, else ``meta['config']`` (text or dict), else {}."""
    if args:
        return args
    config = (ckpt.get("meta") or {}).get("config")
    if isinstance(config, str):
        return load_config_text(config, None)
    return dict(config or {})


def backbone_from_mmdet(b: dict, out_indices: Sequence[int] | None = (0, 1, 2, 3)) -> BackboneConfig:
    """mmdet ``ResNet`` -> ``BackboneConfig``: ``base_channels`` is the res2 bottleneck width.
    ``out_indices``: the stages (0 = C2 .. 3 = C5) the caller builds on, refused otherwise; None
    when the caller reads ``b['out_indices']`` itself."""
    require("backbone.type", b.get("type"), ("ResNet",))
    if out_indices is not None:
        require("backbone.out_indices", list(b.get("out_indices", (0, 1, 2, 3))), (list(out_indices),))
    require("backbone.norm_cfg.type", b.get("norm_cfg", {}).get("type", "BN"), ("BN", "SyncBN"))
    for key, default in (("num_stages", 4), ("strides", [1, 2, 2, 2]), ("dilations", [1, 1, 1, 1]),
                         ("deep_stem", False), ("avg_down", False), ("dcn", None), ("plugins", None)):
        value = b.get(key, default)
        require(f"backbone.{key}", list(value) if isinstance(value, (list, tuple)) else value, (default,))
    depth, base = int(b.get("depth", 50)), int(b.get("base_channels", 64))
    return BackboneConfig(depth=depth, norm="frozen_bn" if b.get("norm_eval", True) else "bn",
                          frozen_stages=int(b.get("frozen_stages", -1)),
                          stem_channels=int(b.get("stem_channels", base)),
                          res2_channels=base * (1 if depth in (18, 34) else 4), width_per_group=base,
                          stride_in_1x1=b.get("style", "pytorch") == "caffe")


def backbone_key_rules(backbone: BackboneConfig) -> list[Rule]:
    """mmdet ``backbone.{conv1,bn1,layerS.B.*}`` -> ``backbone.body.*``; BN ``num_batches_tracked``
    dropped for a frozen BN."""
    drop_bn_counts = [(r"backbone\..*\.num_batches_tracked", None)] if backbone.norm == "frozen_bn" else []
    return drop_bn_counts + [
        (r"backbone\.((conv1|bn1|layer\d+\.\d+\.(conv\d|bn\d|downsample\.[01]))\.\w+)", r"backbone.body.\1")]


def load_mmdet_state(model: nn.Module, state: dict[str, Tensor], rules: list[Rule], source: str,
                     strict: bool) -> nn.Module:
    """Load ``state`` renamed by ``rules`` into ``model`` (``common.load_mapped``); BN
    ``num_batches_tracked`` buffers the checkpoint lacks (``backbone_key_rules`` drops them for
    a frozen BN) are not missing."""
    mapped, unmapped = map_keys(state, rules)
    load_mapped(model, mapped, unmapped, source, strict=strict,
                ignore_missing=lambda k: k.endswith("num_batches_tracked"))
    return model


def input_spec_from_mmdet(config: dict) -> InputSpec:
    """``img_norm_cfg`` (mean / std on [0, 255]; ``to_rgb`` False = BGR) and the test scale."""
    spec = mmdet_input_spec()
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
    coco = coco_classes()
    if names == coco.names and num_classes == len(coco):
        return coco
    if len(names) == num_classes:
        return ClassInfo(list(range(num_classes)), [str(n) for n in names])
    return ClassInfo.anonymous(num_classes)
