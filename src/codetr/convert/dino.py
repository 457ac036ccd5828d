"""Official IDEA-Research/DINO checkpoints -> codetr DINO.

The official file is ``{'model': state_dict, 'args': Namespace, ...}`` (plus ``'ema_model'``
when trained with EMA); the architecture is read from ``args`` (the merged official config)
or from an explicit ``config`` dict of the same names. Label i is COCO category id i, as the
official heads have one slot per id.
"""
from __future__ import annotations

from torch import Tensor

from ..backbones import BackboneConfig
from ..detr.dino import DINO, DINOConfig
from .common import Rule, load_mapped, map_keys
from .deformable_detr import coco_id_slots

KEY_RULES: list[Rule] = [
    (r"backbone\.0\.body\.(.*)", r"backbone.body.\1"),
    (r"transformer\.encoder\.layers\.(\d+)\.(.*)", r"transformer.encoder.layers.\1.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(.*)", r"transformer.decoder.\1.\2"),
    (r"transformer\.decoder\.norm\.(.*)", r"transformer.decoder_norm.\1"),
    (r"transformer\.decoder\.ref_point_head\.(.*)", r"transformer.ref_point_head.\1"),
    # the decoder's heads alias the detector's class_embed / bbox_embed
    (r"transformer\.decoder\.(class_embed|bbox_embed)\..*", None),
    (r"transformer\.enc_out_class_embed\.(.*)", r"enc_class_embed.\1"),
    (r"transformer\.enc_out_bbox_embed\.(.*)", r"enc_bbox_embed.\1"),
    (r"transformer\.level_embed", r"transformer.encoder.level_embed"),
    (r"transformer\.(tgt_embed|enc_output|enc_output_norm)\.(.*)", r"transformer.\1.\2"),
    (r"(class_embed|bbox_embed|input_proj|label_enc)\.(.*)", r"\1.\2"),
]

# official options this implementation does not have, with the value it requires
_REQUIRED = {"two_stage_type": "standard", "decoder_sa_type": "sa", "num_patterns": 0,
             "two_stage_add_query_num": 0, "two_stage_pat_embed": 0, "two_stage_learn_wh": False,
             "two_stage_keep_all_tokens": False, "dec_layer_number": None, "decoder_layer_noise": False,
             "use_deformable_box_attn": False, "add_channel_attention": False, "masks": False,
             "transformer_activation": "relu", "pre_norm": False, "embed_init_tgt": True,
             "decoder_module_seq": ["sa", "ca", "ffn"], "unic_layers": 0, "query_dim": 4}


def check_supported(args: dict) -> None:
    unsupported = [f"{k}={args[k]!r} (supported: {v!r})" for k, v in _REQUIRED.items()
                   if k in args and args[k] != v]
    if unsupported:
        raise ValueError("official DINO options not supported: " + ", ".join(unsupported))


def config_from_official(args: dict, state: dict[str, Tensor]) -> DINOConfig:
    """Official config values -> DINOConfig. Class count and label-book size are read from the
    weights (class_embed rows, label_enc rows - 1); everything else from ``args``, falling
    back to the official DINO_4scale values."""
    check_supported(args)
    backbone = str(args.get("backbone", "resnet50"))
    if not backbone.startswith("resnet"):
        raise ValueError(f"official backbone {backbone!r} is not a ResNet (only ResNets are supported)")
    d = DINOConfig()

    def get(name: str, default, cast=lambda v: v):
        return cast(args[name]) if args.get(name) is not None else default

    num_classes = int(state["class_embed.0.weight"].shape[0]) if "class_embed.0.weight" in state \
        else get("num_classes", d.num_classes, int)
    labelbook = int(state["label_enc.weight"].shape[0]) - 1 if "label_enc.weight" in state \
        else get("dn_labelbook_size", num_classes, int)
    return DINOConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(depth=int(backbone[len("resnet"):]),
                                frozen_stages=1 if get("lr_backbone", 1e-5, float) > 0 else 4,
                                dilation=get("dilation", False, bool)),
        return_interm_indices=get("return_interm_indices", d.return_interm_indices, list),
        num_feature_levels=get("num_feature_levels", d.num_feature_levels, int),
        hidden_dim=get("hidden_dim", d.hidden_dim, int), num_heads=get("nheads", d.num_heads, int),
        enc_layers=get("enc_layers", d.enc_layers, int), dec_layers=get("dec_layers", d.dec_layers, int),
        ffn_dim=get("dim_feedforward", d.ffn_dim, int), dropout=get("dropout", d.dropout, float),
        enc_points=get("enc_n_points", d.enc_points, int), dec_points=get("dec_n_points", d.dec_points, int),
        num_queries=get("num_queries", d.num_queries, int),
        pe_temperature_h=get("pe_temperatureH", d.pe_temperature_h, float),
        pe_temperature_w=get("pe_temperatureW", d.pe_temperature_w, float),
        dec_pred_class_embed_share=get("dec_pred_class_embed_share", True, bool),
        dec_pred_bbox_embed_share=get("dec_pred_bbox_embed_share", True, bool),
        two_stage_class_embed_share=get("two_stage_class_embed_share", False, bool),
        two_stage_bbox_embed_share=get("two_stage_bbox_embed_share", False, bool),
        use_detached_boxes_dec_out=get("use_detached_boxes_dec_out", False, bool),
        dn_number=get("dn_number", d.dn_number, int) if get("use_dn", True, bool) else 0,
        dn_box_noise_scale=get("dn_box_noise_scale", d.dn_box_noise_scale, float),
        dn_label_noise_ratio=get("dn_label_noise_ratio", d.dn_label_noise_ratio, float),
        dn_labelbook_size=labelbook,
        cost_class=get("set_cost_class", d.cost_class, float), cost_bbox=get("set_cost_bbox", d.cost_bbox, float),
        cost_giou=get("set_cost_giou", d.cost_giou, float),
        cls_loss_coef=get("cls_loss_coef", d.cls_loss_coef, float),
        bbox_loss_coef=get("bbox_loss_coef", d.bbox_loss_coef, float),
        giou_loss_coef=get("giou_loss_coef", d.giou_loss_coef, float),
        interm_loss_coef=get("interm_loss_coef", d.interm_loss_coef, float),
        no_interm_box_loss=get("no_interm_box_loss", False, bool),
        focal_alpha=get("focal_alpha", d.focal_alpha, float),
        num_select=get("num_select", d.num_select, int),
        nms_iou_threshold=get("nms_iou_threshold", d.nms_iou_threshold, float),
    )


def convert(state: dict[str, Tensor], args: dict, strict: bool = True) -> DINO:
    if not any(k.startswith("transformer.") for k in state):
        raise ValueError("not a DINO checkpoint: no 'transformer.*' keys "
                         f"(first keys: {', '.join(list(state)[:5])})")
    if "label_enc.weight" not in state or not any(k.startswith("transformer.decoder.ref_point_head") for k in state):
        hint = " (it looks like a Deformable DETR checkpoint: use load_official('deformable_detr', ...))" \
            if any(k.startswith("transformer.pos_trans") or k.startswith("transformer.reference_points")
                   for k in state) else ""
        raise ValueError("not a DINO checkpoint: no 'label_enc.weight' / "
                         f"'transformer.decoder.ref_point_head.*' keys{hint}")
    config = config_from_official(args, state)
    model = DINO(config, coco_id_slots(config.num_classes))
    mapped, unmapped = map_keys(state, KEY_RULES)
    load_mapped(model, mapped, unmapped, "DINO checkpoint", strict=strict)
    return model
