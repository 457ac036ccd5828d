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

from torch import Tensor

from ..backbones import BackboneConfig
from ..necks.fpn import fpn_from_mmdet, mmdet_fpn_key_map
from ..rcnn.faster_rcnn import FasterRCNN, FasterRCNNConfig
from ..rcnn.roi_head import box_loss_from_mmdet, extractor_from_mmdet, roi_test_from_mmdet
from ..rcnn.rpn import ProposalConfig
from ..sampling import AssignSampleConfig
from .common import Rule
from .mmdet import (backbone_from_mmdet, backbone_key_rules, classes_from_meta, input_spec_from_mmdet,
                    load_mmdet_state, require)

FC_CLS = "roi_head.bbox_head.fc_cls.weight"


def _rpn_fields(rpn: dict) -> dict:
    require("rpn_head.type", rpn.get("type"), ("RPNHead",))
    ag, coder = rpn["anchor_generator"], rpn.get("bbox_coder", {})
    require("rpn_head.anchor_generator.type", ag.get("type"), ("AnchorGenerator",))
    require("rpn_head.anchor_generator.center_offset", ag.get("center_offset", 0.0), (0, 0.0))
    require("rpn_head.bbox_coder.target_means", list(coder.get("target_means", [0.0] * 4)), ([0.0] * 4,))
    require("rpn_head.loss_cls", (rpn["loss_cls"]["type"], rpn["loss_cls"].get("use_sigmoid")),
            (("CrossEntropyLoss", True),))
    require("rpn_head.loss_bbox.type", rpn["loss_bbox"]["type"], ("L1Loss",))
    scales = ag.get("scales") or [ag["octave_base_scale"] * 2 ** (i / ag["scales_per_octave"])
                                  for i in range(ag["scales_per_octave"])]
    return dict(rpn_channels=int(rpn["feat_channels"]), anchor_scales=tuple(float(s) for s in scales),
                anchor_ratios=tuple(float(r) for r in ag["ratios"]),
                anchor_strides=tuple(int(s) for s in ag["strides"]),
                rpn_stds=tuple(float(s) for s in coder.get("target_stds", (1.0,) * 4)),
                rpn_cls_weight=float(rpn["loss_cls"].get("loss_weight", 1.0)),
                rpn_box_weight=float(rpn["loss_bbox"].get("loss_weight", 1.0)))


def _roi_fields(roi: dict, rcnn_train: dict | None, rcnn_test: dict | None) -> dict:
    require("roi_head.type", roi.get("type"), ("StandardRoIHead",))
    head = roi["bbox_head"]
    require("roi_head.bbox_head.type", head.get("type"), ("Shared2FCBBoxHead",))
    coder = head.get("bbox_coder", {})
    require("roi_head.bbox_head.bbox_coder.target_means", list(coder.get("target_means", [0.0] * 4)), ([0.0] * 4,))
    loss = box_loss_from_mmdet(head, rcnn_train)
    require("train_cfg.rcnn.pos_weight", loss.pos_weight, (-1, -1.0))
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
    require("neck.type", neck.get("type"), ("FPN",))
    fpn = fpn_from_mmdet(neck)
    require("neck.in_channels", list(neck["in_channels"]), ([backbone.res2_channels * 2 ** i for i in range(4)],))
    require("neck.num_outs", neck["num_outs"], (num_levels,))
    require("neck.relu_before_extra_convs", fpn.relu_before_extra and len(fpn.extra) > 1, (False,))
    return dict(fpn_channels=int(neck["out_channels"]), fpn_extra_from=fpn.extra_from)


def _train_test_fields(train: dict | None, test: dict | None) -> dict:
    out: dict = {}
    if train is not None:
        require("train_cfg.rpn.allowed_border", train["rpn"].get("allowed_border", -1), (-1,))
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
    require("model.type", model.get("type"), ("FasterRCNN",))
    declared = model["roi_head"]["bbox_head"].get("num_classes", num_classes)
    if declared != num_classes:
        raise ValueError(f"mmdet config roi_head.bbox_head.num_classes={declared} but {FC_CLS} has "
                         f"{num_classes} + 1 rows")
    train, test = model.get("train_cfg") or config.get("train_cfg"), model.get("test_cfg") or config.get("test_cfg")
    backbone = backbone_from_mmdet(model["backbone"])
    rpn = _rpn_fields(model["rpn_head"])
    fpn = _fpn_fields(model["neck"], backbone, len(rpn["anchor_strides"]))
    for key, head in (("rpn_head", model["rpn_head"]), ("roi_head.bbox_head", model["roi_head"]["bbox_head"])):
        require(f"{key}.in_channels", head.get("in_channels"), (fpn["fpn_channels"],))
    fields = dict(num_classes=num_classes, backbone=backbone, **rpn, **fpn, **_train_test_fields(train, test),
                  **_roi_fields(model["roi_head"], None if train is None else train["rcnn"],
                                None if test is None else test["rcnn"]))
    return FasterRCNNConfig(**fields)


def key_rules(config: FasterRCNNConfig, num_fpn_extra_convs: int) -> list[Rule]:
    """The explicit mmdet -> codetr key table (module docstring) for this architecture."""
    fpn = [(re.escape("neck." + k), "fpn." + v) for k, v in mmdet_fpn_key_map(4, num_fpn_extra_convs).items()]
    return backbone_key_rules(config.backbone) + fpn + [
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
    return load_mmdet_state(model, state, key_rules(model_config, len(model.fpn.extra)),
                            "mmdet Faster R-CNN checkpoint", strict)
