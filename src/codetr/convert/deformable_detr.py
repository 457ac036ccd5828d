"""Official fundamentalvision/Deformable-DETR checkpoints -> codetr DeformableDETR.

The official file is ``{'model': state_dict, 'args': Namespace, ...}``; the architecture is
read from ``args`` (main.py's flags) or from an explicit ``config`` dict of the same names.
"""
from __future__ import annotations

from torch import Tensor

from ..backbones import BackboneConfig
from ..data.coco_names import COCO_CATEGORIES
from ..detr.deformable_detr import DeformableDETR, DeformableDETRConfig
from ..structures import ClassInfo
from .common import Rule, load_mapped, map_keys

KEY_RULES: list[Rule] = [
    (r"backbone\.0\.body\.(.*)", r"backbone.body.\1"),
    (r"transformer\.encoder\.layers\.(\d+)\.(.*)", r"transformer.encoder.layers.\1.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(.*)", r"transformer.decoder.\1.\2"),
    # the decoder's heads alias the detector's class_embed / bbox_embed
    (r"transformer\.decoder\.(class_embed|bbox_embed)\..*", None),
    (r"transformer\.level_embed", r"transformer.encoder.level_embed"),
    (r"transformer\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm|reference_points)\.(.*)",
     r"transformer.\1.\2"),
    (r"(class_embed|bbox_embed|input_proj|query_embed)\.(.*)", r"\1.\2"),
]


def config_from_official(args: dict, state: dict[str, Tensor]) -> DeformableDETRConfig:
    """Official main.py values -> DeformableDETRConfig. The class count is read from the
    weights (the official code derives it from the dataset name)."""
    backbone = str(args.get("backbone", "resnet50"))
    if not backbone.startswith("resnet"):
        raise ValueError(f"official backbone {backbone!r} is not a ResNet")
    num_classes = int(state["class_embed.0.weight"].shape[0]) if "class_embed.0.weight" in state else 91
    d = DeformableDETRConfig()
    return DeformableDETRConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(depth=int(backbone[len("resnet"):]),
                                frozen_stages=1 if float(args.get("lr_backbone", 2e-5)) > 0 else 4,
                                dilation=bool(args.get("dilation", False))),
        hidden_dim=int(args.get("hidden_dim", d.hidden_dim)), num_heads=int(args.get("nheads", d.num_heads)),
        enc_layers=int(args.get("enc_layers", d.enc_layers)), dec_layers=int(args.get("dec_layers", d.dec_layers)),
        ffn_dim=int(args.get("dim_feedforward", d.ffn_dim)), dropout=float(args.get("dropout", d.dropout)),
        num_feature_levels=int(args.get("num_feature_levels", d.num_feature_levels)),
        enc_points=int(args.get("enc_n_points", d.enc_points)), dec_points=int(args.get("dec_n_points", d.dec_points)),
        num_queries=int(args.get("num_queries", d.num_queries)),
        with_box_refine=bool(args.get("with_box_refine", False)), two_stage=bool(args.get("two_stage", False)),
        cost_class=float(args.get("set_cost_class", d.cost_class)), cost_bbox=float(args.get("set_cost_bbox", d.cost_bbox)),
        cost_giou=float(args.get("set_cost_giou", d.cost_giou)),
        cls_loss_coef=float(args.get("cls_loss_coef", d.cls_loss_coef)),
        bbox_loss_coef=float(args.get("bbox_loss_coef", d.bbox_loss_coef)),
        giou_loss_coef=float(args.get("giou_loss_coef", d.giou_loss_coef)),
        focal_alpha=float(args.get("focal_alpha", d.focal_alpha)), aux_loss=bool(args.get("aux_loss", True)),
        num_select=100,  # hard-coded in the official PostProcess
    )


def coco_id_slots(num_classes: int) -> ClassInfo:
    """Official COCO heads have one slot per COCO category id (0..90); label i is id i."""
    return ClassInfo(list(range(num_classes)), [COCO_CATEGORIES.get(i, "") for i in range(num_classes)])


def convert(state: dict[str, Tensor], args: dict, strict: bool = True) -> DeformableDETR:
    if not any(k.startswith("transformer.") for k in state):
        raise ValueError("not a Deformable DETR checkpoint: no 'transformer.*' keys "
                         f"(first keys: {', '.join(list(state)[:5])})")
    if any(k.startswith("transformer.decoder.ref_point_head") or k.startswith("label_enc") for k in state):
        raise ValueError("this looks like a DINO checkpoint: use load_official('dino', ...)")
    config = config_from_official(args, state)
    model = DeformableDETR(config, coco_id_slots(config.num_classes))
    mapped, unmapped = map_keys(state, KEY_RULES)
    load_mapped(model, mapped, unmapped, "Deformable DETR checkpoint", strict=strict)
    return model
