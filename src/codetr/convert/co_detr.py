"""Official Sense-X/Co-DETR checkpoints (mmdet 2.x) -> codetr ``CoDETR``.

The official file is ``{'meta': {..., 'config': <mmcv config text>, 'CLASSES': (...)},
'state_dict': ...}``. The architecture comes from the official config (a dict, a ``.py`` path or
its text; else the text in ``meta``, read without executing it) the way the official
``CoDETR.__init__`` distributes it:

* ``train_cfg`` / ``test_cfg`` are lists indexed by head: 0 the query head, 1 the RPN (``.rpn``,
  ``.rpn_proposal``) and the first RoI head (``.rcnn``), ``1 + i`` RoI head i, then
  ``1 + len(roi_head) + j`` ATSS head j;
* ``eval_module`` ('detr', 'one-stage', 'two-stage'), ``eval_index`` and ``with_attn_mask`` are
  ``CoDETR`` arguments (defaults 'detr', 0, True).

Key table (official -> codetr; ``qh`` = ``query_head``, ``tr`` = ``query_head.transformer``):

    backbone.*                                   -> backbone.body.*  (BN num_batches_tracked dropped)
    backbone.* (SwinTransformerV1)               -> backbone.*  (``backbones.swin.swin_from_official``)
    neck.*                                       -> neck.*  (same names)
    tr.level_embeds                              -> tr.encoder.level_embed
    tr.encoder.layers.i.attentions.0.*           -> tr.encoder.layers.i.self_attn.*
    tr.encoder.layers.i.norms.{0,1}              -> ....norm{1,2}
    tr.{encoder,decoder}.layers.i.ffns.0.layers.{0.0,1}  -> ....linear{1,2}  (decoder: tr.decoder.i.*)
    tr.decoder.layers.i.attentions.0.attn.*      -> tr.decoder.i.self_attn.*
    tr.decoder.layers.i.attentions.1.*           -> tr.decoder.i.cross_attn.*
    tr.decoder.layers.i.norms.{0,1,2}            -> tr.decoder.i.norm{2,1,3}
    tr.decoder.ref_point_head.{0,2}, tr.decoder.norm -> tr.ref_point_head.layers.{0,1}, tr.decoder_norm (Co-DINO)
    tr.query_embed                               -> tr.tgt_embed (Co-DINO)
    tr.{enc_output,enc_output_norm,pos_trans,pos_trans_norm}  -> same
    tr.{aux_pos_trans,aux_pos_trans_norm,pos_feats_trans,pos_feats_norm,head_pos_embed} -> qh.positive.*
    qh.reg_branches.i.{0,2,4}                    -> qh.reg_branches.i.layers.{0,1,2}
    qh.{cls_branches,downsample,query_embedding,label_embedding}  -> same
    rpn_head.*, roi_head.i.*                     -> aux_heads.rpn_head.*, aux_heads.roi_head.i.*
    bbox_head.j.* (ATSS)                         -> aux_heads.bbox_head.j.*  (``dense.atss.official_key_map``)
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any


from ..co_detr.co_detr import CoDETR
from ..co_detr.config import VARIANTS, CoDETRConfig
from ..backbones import BackboneConfig, SwinConfig
from ..dense.atss import official_key_map
from ..detector import InputSpec
from .common import Rule, load_mapped, map_keys
from .mmcv_config import load_config_text
from .mmdet import backbone_from_mmdet, classes_from_meta, input_spec_from_mmdet


def official_config(config: dict | None, meta: dict | None) -> dict:
    """The full official config: ``config`` when given (``load_official`` has read a file or
    text already), else ``meta['config']``, the mmcv text mmdet saves in every checkpoint."""
    if config:
        return dict(config)
    text = (meta or {}).get("config")
    if not text:
        raise ValueError("no Co-DETR config: pass config= (the official .py file) or a checkpoint whose "
                         "meta carries one")
    return load_config_text(text) if isinstance(text, str) else dict(text)


def _indexed(cfgs: Any, i: int) -> dict | None:
    """``train_cfg[i]`` / ``test_cfg[i]`` as the official code indexes them (None when absent)."""
    if cfgs is None or i >= len(cfgs):
        return None
    return cfgs[i]


def _backbone(cfg: dict) -> tuple[BackboneConfig, list[int]]:
    """mmdet ``ResNet`` or Co-DETR's ``SwinTransformerV1`` -> (BackboneConfig, stages 1 = C2 ..
    4 = C5). Co-DETR picks its stages by ``out_indices`` (Co-Deformable-DETR: C3-C5)."""
    stages = [int(i) + 1 for i in cfg.get("out_indices", (0, 1, 2, 3))]
    if cfg.get("type") == "SwinTransformerV1":
        return _swin(cfg), stages
    return backbone_from_mmdet(cfg, out_indices=None), stages


def _swin(cfg: dict) -> BackboneConfig:
    """``SwinTransformerV1`` (patch 4, MLP ratio 4, no absolute positions, patch norm, no frozen
    stages: every Co-DETR Swin) -> a Swin BackboneConfig; other values are refused."""
    for key, default in (("patch_size", 4), ("mlp_ratio", 4.0), ("ape", False), ("patch_norm", True),
                         ("frozen_stages", -1), ("qkv_bias", True), ("qk_scale", None), ("drop_rate", 0.0),
                         ("attn_drop_rate", 0.0)):
        if cfg.get(key, default) != default:
            raise ValueError(f"SwinTransformerV1 {key}={cfg[key]!r} is not supported (only {default!r})")
    swin = SwinConfig(embed_dims=int(cfg.get("embed_dim", 96)), depths=tuple(cfg.get("depths", (2, 2, 6, 2))),
                      num_heads=tuple(cfg.get("num_heads", (3, 6, 12, 24))), window_size=int(cfg.get("window_size", 7)),
                      drop_path_rate=float(cfg.get("drop_path_rate", 0.2)),
                      with_cp=bool(cfg.get("use_checkpoint", False)))
    return BackboneConfig(kind="swin", frozen_stages=-1, swin=swin)


def _layer_numbers(transformer: dict) -> dict:
    """Widths, depths and points of the encoder / decoder layers (mmcv layer configs)."""
    enc, dec = transformer["encoder"], transformer["decoder"]
    enc_layer, dec_layer = enc["transformerlayers"], dec["transformerlayers"]
    enc_attn = enc_layer["attn_cfgs"]
    self_attn, cross_attn = dec_layer["attn_cfgs"]
    if enc_layer["operation_order"] != ["self_attn", "norm", "ffn", "norm"] or \
            dec_layer["operation_order"] != ["self_attn", "norm", "cross_attn", "norm", "ffn", "norm"]:
        raise ValueError("only post-norm encoder / decoder layers are supported")
    ffn = enc_layer.get("ffn_cfgs", {})
    return dict(embed_dims=int(enc_attn.get("embed_dims", 256)), num_heads=int(self_attn.get("num_heads", 8)),
                enc_layers=int(enc["num_layers"]), dec_layers=int(dec["num_layers"]),
                ffn_dim=int(ffn.get("feedforward_channels", enc_layer.get("feedforward_channels", 1024))),
                dropout=float(self_attn.get("dropout", 0.0)), enc_checkpoint_layers=max(int(enc.get("with_cp", -1)), 0),
                enc_points=int(enc_attn.get("num_points", 4)),
                dec_points=int(cross_attn.get("num_points", 4)))


def _query_losses(head: dict, assigner: dict | None) -> dict:
    cls, out = head["loss_cls"], {}
    out["cls_loss"] = {"FocalLoss": "focal", "QualityFocalLoss": "qfl"}[cls["type"]]
    out.update(cls_weight=float(cls.get("loss_weight", 1.0)), focal_alpha=float(cls.get("alpha", 0.25)),
               focal_gamma=float(cls.get("gamma", 2.0)), qfl_beta=float(cls.get("beta", 2.0)),
               bbox_weight=float(head["loss_bbox"].get("loss_weight", 5.0)),
               giou_weight=float(head["loss_iou"].get("loss_weight", 2.0)))
    if assigner is not None:
        out.update(cost_class=float(assigner["cls_cost"]["weight"]), cost_bbox=float(assigner["reg_cost"]["weight"]),
                   cost_giou=float(assigner["iou_cost"]["weight"]))
    return out


def _query_head(head: dict, train: dict | None, test: dict | None) -> dict:
    """The query head's numbers (``CoDeformDETRHead`` / ``CoDINOHead`` and their transformer)."""
    if head["type"] not in VARIANTS:
        raise ValueError(f"query head {head['type']} is not supported (supported: {sorted(VARIANTS)})")
    if not (head.get("as_two_stage") and head.get("with_box_refine")):
        raise ValueError("only two-stage query heads with box refinement are supported (all official configs)")
    variant, tr = VARIANTS[head["type"]], head["transformer"]
    pe = head.get("positional_encoding", {})
    if not pe.get("normalize", False):
        raise ValueError("only normalized sine positional encodings are supported")
    dn = (head.get("dn_cfg") or {})
    group = dn.get("group_cfg", {"dynamic": True, "num_dn_queries": 100})
    if variant == "dino" and not group.get("dynamic", True):
        raise ValueError("only dynamic denoising groups (num_dn_queries) are supported")
    test = test or {}
    out = dict(variant=variant, num_classes=int(head["num_classes"]), num_levels=int(tr.get("num_feature_levels", 4)),
               num_queries=int(head.get("num_query", 300)), mixed_selection=bool(head.get("mixed_selection", False)),
               look_forward_twice=bool(tr["decoder"].get("look_forward_twice", variant == "dino")),
               pe_num_feats=int(pe.get("num_feats", 128)), pe_temperature=float(pe.get("temperature", 10000)),
               pe_offset=-float(pe.get("offset", 0.0)), num_co_heads=int(tr.get("num_co_heads", 1)),
               with_pos_coord=bool(tr.get("with_pos_coord", True)), with_coord_feat=bool(tr.get("with_coord_feat", True)),
               max_pos_coords=int(head.get("max_pos_coords", 300)), lambda_1=float(head.get("lambda_1", 1.0)),
               dn_label_noise=float(dn.get("noise_scale", {}).get("label", 0.5)),
               dn_box_noise=float(dn.get("noise_scale", {}).get("box", 0.4)),
               dn_num_queries=int(group.get("num_dn_queries", 100)),
               max_per_img=int(test.get("max_per_img", head.get("num_query", 300))),
               score_thr=float(test.get("score_thr", 0.0)), nms=dict(test["nms"]) if test.get("nms") else None,
               **_layer_numbers(tr), **_query_losses(head, (train or {}).get("assigner")))
    return out


def _aux_heads(model: dict, train_cfg: Any, test_cfg: Any) -> dict:
    """RPN, RoI and ATSS heads with their train / test configs, indexed as ``CoDETR.__init__``."""
    rois = [r for r in model.get("roi_head", [None]) if r]
    out: dict = {"rpn": None, "roi_heads": [], "atss_heads": []}
    if model.get("rpn_head"):
        train, test = _indexed(train_cfg, 1), _indexed(test_cfg, 1)
        out["rpn"] = {"head": dict(model["rpn_head"]), "train": train and train.get("rpn"),
                      "proposal": train and train.get("rpn_proposal"), "test": test["rpn"]}
    for i, roi in enumerate(rois):
        train, test = _indexed(train_cfg, 1 + i), _indexed(test_cfg, 1 + i)
        out["roi_heads"].append({"head": dict(roi), "train": train and train.get("rcnn"), "test": test["rcnn"]})
    for j, atss in enumerate(b for b in model.get("bbox_head", [None]) if b):
        k = 1 + len(rois) + j
        out["atss_heads"].append({"head": dict(atss), "train": _indexed(train_cfg, k), "test": _indexed(test_cfg, k)})
    return out


def config_from_mmdet(model: dict) -> CoDETRConfig:
    """The official ``cfg.model`` dict (type 'CoDETR') -> CoDETRConfig; unsupported options raise."""
    if model.get("type") != "CoDETR":
        raise ValueError(f"not a Co-DETR model config (type {model.get('type')!r})")
    neck = model["neck"]
    if neck.get("type") != "ChannelMapper":
        raise ValueError(f"only the ChannelMapper neck is supported, got {neck.get('type')}")
    backbone, stages = _backbone(model["backbone"])
    train_cfg, test_cfg = model.get("train_cfg"), model.get("test_cfg")
    head = _query_head(model["query_head"], _indexed(train_cfg, 0), _indexed(test_cfg, 0))
    if head["num_levels"] != neck.get("num_outs", len(neck["in_channels"])):
        raise ValueError(f"the neck gives {neck.get('num_outs')} levels, the transformer expects {head['num_levels']}")
    return CoDETRConfig(backbone=backbone, backbone_stages=stages, neck_kernel_size=int(neck.get("kernel_size", 3)), **head,
                        **_aux_heads(model, train_cfg, test_cfg),
                        eval_module=model.get("eval_module", "detr"), eval_index=int(model.get("eval_index", 0)),
                        with_attn_mask=bool(model.get("with_attn_mask", True)))


_TR = r"query_head\.transformer\."
_ENC, _DEC = _TR + r"encoder\.layers\.(\d+)\.", _TR + r"decoder\.layers\.(\d+)\."
_FFN = r"ffns\.0\.layers\.(?:0\.0|1)\."


def input_spec(config: dict) -> InputSpec:
    """mmdet's normalisation and test scale (``input_spec_from_mmdet``) with the test pipeline's
    ``Pad`` divisor (Co-DETR: 1), or its square ``size`` (LSJ: 1024 / 1280, a divisor as large
    as the resized image)."""
    spec = input_spec_from_mmdet(config)
    pipeline = config.get("test_pipeline") or config.get("data", {}).get("test", {}).get("pipeline") or []
    steps = [s for step in pipeline for s in [step, *step.get("transforms", [])]]
    pads = [int(s.get("size_divisor") or max(s["size"])) for s in steps
            if s.get("type") == "Pad" and (s.get("size_divisor") or s.get("size"))]
    return replace(spec, size_divisibility=pads[0]) if pads else spec


def key_rules(config: CoDETRConfig) -> list[Rule]:
    """The explicit official -> codetr key table (module docstring) for this architecture."""
    tr = "query_head.transformer."
    rules: list[Rule] = [] if config.backbone.kind == "swin" else [  # Swin: ``convert`` maps its names
        (r"backbone\..*\.num_batches_tracked", None),
        (r"backbone\.(.*)", r"backbone.body.\1"),
    ]
    rules += [
        (r"neck\.((convs|extra_convs)\.\d+\.(conv|gn)\.\w+)", r"neck.\1"),
        (_TR + "level_embeds", tr + "encoder.level_embed"),
        (_ENC + r"attentions\.0\.(\w+\.\w+)", tr + r"encoder.layers.\1.self_attn.\2"),
        (_ENC + r"norms\.0\.(\w+)", tr + r"encoder.layers.\1.norm1.\2"),
        (_ENC + r"norms\.1\.(\w+)", tr + r"encoder.layers.\1.norm2.\2"),
        (_DEC + r"attentions\.0\.attn\.(.*)", tr + r"decoder.\1.self_attn.\2"),
        (_DEC + r"attentions\.1\.(\w+\.\w+)", tr + r"decoder.\1.cross_attn.\2"),
        (_DEC + r"norms\.0\.(\w+)", tr + r"decoder.\1.norm2.\2"),
        (_DEC + r"norms\.1\.(\w+)", tr + r"decoder.\1.norm1.\2"),
        (_DEC + r"norms\.2\.(\w+)", tr + r"decoder.\1.norm3.\2"),
        (_TR + r"decoder\.ref_point_head\.0\.(\w+)", tr + r"ref_point_head.layers.0.\1"),
        (_TR + r"decoder\.ref_point_head\.2\.(\w+)", tr + r"ref_point_head.layers.1.\1"),
        (_TR + r"decoder\.norm\.(\w+)", tr + r"decoder_norm.\1"),
        (_TR + r"query_embed\.weight", tr + "tgt_embed.weight"),
        (_TR + r"((enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.\w+)", tr + r"\1"),
        (_TR + r"((aux_pos_trans|aux_pos_trans_norm|pos_feats_trans|pos_feats_norm)\.\d+\.\w+|head_pos_embed\.weight)",
         r"query_head.positive.\1"),
        (r"query_head\.reg_branches\.(\d+)\.0\.(\w+)", r"query_head.reg_branches.\1.layers.0.\2"),
        (r"query_head\.reg_branches\.(\d+)\.2\.(\w+)", r"query_head.reg_branches.\1.layers.1.\2"),
        (r"query_head\.reg_branches\.(\d+)\.4\.(\w+)", r"query_head.reg_branches.\1.layers.2.\2"),
        (r"query_head\.((cls_branches\.\d+|downsample\.[01]|query_embedding|label_embedding)\.\w+)", r"query_head.\1"),
        (r"rpn_head\.((rpn_conv|rpn_cls|rpn_reg)\.\w+)", r"aux_heads.rpn_head.\1"),
        (r"roi_head\.(\d+)\.(bbox_head\.(shared_fcs\.[01]|fc_cls|fc_reg)\.\w+)", r"aux_heads.roi_head.\1.\2"),
    ]
    for lin, ours in (("0.0", "linear1"), ("1", "linear2")):
        rules.append((_ENC + r"ffns\.0\.layers\." + re.escape(lin) + r"\.(\w+)", tr + rf"encoder.layers.\1.{ours}.\2"))
        rules.append((_DEC + r"ffns\.0\.layers\." + re.escape(lin) + r"\.(\w+)", tr + rf"decoder.\1.{ours}.\2"))
    for j, atss in enumerate(config.atss_heads):
        head = atss["head"]
        table = official_key_map(head.get("stacked_convs", 4), len(head["anchor_generator"]["strides"]))
        rules += [(re.escape(f"bbox_head.{j}.{k}"), f"aux_heads.bbox_head.{j}.{v}") for k, v in table.items()]
    return rules


def convert(ckpt: dict, config: Any = None, strict: bool = True) -> CoDETR:
    """An official Co-DETR checkpoint dict + its config (see ``official_config``) -> a loaded
    ``CoDETR``; every unmapped or missing key is named (an error with ``strict``)."""
    state = ckpt.get("state_dict")
    if state is None or not any(k.startswith("query_head.transformer.") for k in state):
        raise ValueError("not an official Co-DETR checkpoint: expected {'meta', 'state_dict'} with "
                         f"'query_head.transformer.*' keys (keys: {', '.join(list(state or ckpt)[:5])})")
    full = official_config(config, ckpt.get("meta"))
    model_dict = full.get("model", full)
    model_config = config_from_mmdet(model_dict)
    model = CoDETR(model_config, classes_from_meta(ckpt.get("meta"), model_config.num_classes), input_spec(full))
    if list(model_dict["neck"]["in_channels"]) != list(model.backbone.out_channels):
        raise ValueError(f"neck.in_channels {model_dict['neck']['in_channels']} do not match the backbone's output "
                         f"channels {model.backbone.out_channels}")
    mapped, unmapped = map_keys(state, key_rules(model_config))
    if model_config.backbone.kind == "swin":
        mapped.update(swin_backbone(state, model))
        unmapped = [k for k in unmapped if not k.startswith("backbone.")]
    load_mapped(model, mapped, unmapped, "official Co-DETR checkpoint", strict=strict)
    return model


def swin_backbone(state: dict, model: CoDETR) -> dict:
    """The official ``backbone.*`` Swin weights under the model's names (``swin_from_official``:
    strict, every official name and every model weight accounted for). timm loads here, not on import."""
    from ..backbones.swin import swin_from_official

    official = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    mapped = swin_from_official(official, model.backbone.state_dict().keys())
    return {f"backbone.{k}": v for k, v in mapped.items()}
