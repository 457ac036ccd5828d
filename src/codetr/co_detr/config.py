"""``CoDETRConfig``: every number a Co-DETR model (Co-Deformable-DETR or Co-DINO) is built from.
``codetr.convert.co_detr.config_from_mmdet`` reads it from an official mmcv config.

The auxiliary heads (RPN, RoI, ATSS) are kept as their official config dicts: their builders
(``rcnn.roi_head_from_mmdet``, ``dense.atss_head_from_mmdet``, ``co_detr.aux_heads.rpn_from_mmdet``)
are the one place that reads them, so the numbers are not parsed twice. ``official_aux_heads``
writes them for the zoo from the official configs' numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..backbones import BackboneConfig

EVAL_MODULES = ("detr", "one-stage", "two-stage")
VARIANTS = {"CoDeformDETRHead": "deformable", "CoDINOHead": "dino"}


@dataclass(frozen=True)
class CoDETRConfig:
    """Defaults: official ``co_dino_5scale_r50_1x_coco.py``. ``variant``: 'deformable'
    (Co-Deformable-DETR) or 'dino' (Co-DINO)."""

    variant: str = "dino"
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    backbone_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # 1 = C2 .. 4 = C5
    neck_kernel_size: int = 1
    num_levels: int = 5          # neck outputs = encoder levels (plus one ``downsample`` level for the aux heads)
    embed_dims: int = 256
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.0
    enc_checkpoint_layers: int = 4  # official ``with_cp``: the first this many encoder layers recompute in backward
    enc_points: int = 4
    dec_points: int = 4
    num_queries: int = 900
    mixed_selection: bool = True
    look_forward_twice: bool = True  # Co-Deformable-DETR's decoder option; Co-DINO's decoder always does
    # sine positions, codetr's convention: offset 0.5 = mmdet's offset -0.5
    pe_num_feats: int = 128
    pe_temperature: float = 20.0
    pe_offset: float = 0.0
    # customised positive queries (Sec. 3.3)
    num_co_heads: int = 2
    with_pos_coord: bool = True
    with_coord_feat: bool = False
    max_pos_coords: int = 300
    lambda_1: float = 1.0
    # Co-DINO denoising (CdnQueryGenerator, dynamic groups)
    dn_label_noise: float = 0.5
    dn_box_noise: float = 1.0
    dn_num_queries: int = 100
    # query-head losses and Hungarian costs (for the criterion)
    cls_loss: str = "qfl"        # 'focal' (Co-Deformable-DETR) or 'qfl' (Co-DINO)
    cls_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    qfl_beta: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    # query-head test: top ``max_per_img`` (``num_queries`` before an NMS), then ``nms`` (mmcv cfg) if set
    max_per_img: int = 300
    score_thr: float = 0.0
    nms: dict | None = field(default_factory=lambda: {"type": "soft_nms", "iou_threshold": 0.8})
    # auxiliary heads, official dicts: rpn {'head', 'train', 'proposal', 'test'}; each roi / atss {'head', 'train', 'test'}
    rpn: dict | None = None
    roi_heads: list[dict] = field(default_factory=list)
    atss_heads: list[dict] = field(default_factory=list)
    eval_module: str = "detr"
    eval_index: int = 0
    with_attn_mask: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS.values():
            raise ValueError(f"variant must be one of {sorted(VARIANTS.values())}, got {self.variant!r}")
        if self.eval_module not in EVAL_MODULES:
            raise ValueError(f"eval_module must be one of {EVAL_MODULES}, got {self.eval_module!r}")
        heads = {"one-stage": self.atss_heads, "two-stage": self.roi_heads}.get(self.eval_module)
        if heads is not None and not 0 <= self.eval_index < len(heads):
            raise ValueError(f"eval_index {self.eval_index} names no {self.eval_module} head ({len(heads)} built)")
        if self.eval_module == "two-stage" and self.rpn is None:
            raise ValueError("eval_module 'two-stage' needs the RPN")
        if self.embed_dims % 2 or self.num_levels < len(self.backbone_stages):
            raise ValueError(f"embed_dims must be even and num_levels >= {len(self.backbone_stages)} backbone levels")
        if 2 * self.pe_num_feats != self.embed_dims:
            raise ValueError(f"pe_num_feats must be embed_dims / 2 = {self.embed_dims // 2}, got {self.pe_num_feats}")

    def to_dict(self) -> dict:
        return asdict(self)


def official_aux_heads(c: CoDETRConfig, lambda_2: float = 2.0, fc_channels: int = 1024,
                       finest_scale: float = 56.0, rois_per_image: int = 512, train_proposals: int = 1000,
                       train_nms_pre: int = 4000, roi_sampling_ratio: int = 0, with_roi: bool = True,
                       atss_stacked_convs: int = 1) -> dict:
    """The ``rpn``, ``roi_heads`` and ``atss_heads`` of the official configs
    (``co_dino_5scale_r50_1x_coco.py``, ``co_deformable_detr_r50_1x_coco.py``: one RPN + RoI head,
    one ATSS head), sized to ``c``: its classes, ``embed_dims`` channels, the strides of the query
    head's L + 1 maps; every loss weight x ``dec_layers * lambda_2`` (official ``num_dec_layer *
    lambda_2``). ``fc_channels``: the RoI head's two FCs; ``finest_scale``: its level rule. The
    last four (official: 512, 1000, 4000, 0 = adaptive) size the RoI branch's training cost: RoIs
    sampled per image, proposals kept after the RPN's NMS and taken into it per level, RoIAlign
    points per bin and axis. ``with_roi=False``: the ATSS head alone (no RPN / RoI head; the
    paper's K = 1 ablation), for ``num_co_heads=1``. ``atss_stacked_convs``: the 3x3 conv + GN
    layers of each ATSS tower (official 1; 0: the predictors read the maps directly)."""
    stride0 = 2 ** (min(c.backbone_stages) + 1)                          # stage 1 (C2) has stride 4
    strides = [stride0 * 2 ** i for i in range(c.num_levels + 1)]
    w = c.dec_layers * lambda_2
    if not with_roi:
        return {"rpn": None, "roi_heads": [], "atss_heads": [_atss(c, strides, w, atss_stacked_convs)]}
    rpn = _rpn(c.embed_dims, strides, w)
    rpn["proposal"].update(nms_pre=train_nms_pre, max_per_img=train_proposals)
    roi = _roi(c, strides[:-1], w, fc_channels, finest_scale)
    roi["train"]["sampler"]["num"] = rois_per_image
    roi["head"]["bbox_roi_extractor"]["roi_layer"]["sampling_ratio"] = roi_sampling_ratio
    return {"rpn": rpn, "roi_heads": [roi], "atss_heads": [_atss(c, strides, w, atss_stacked_convs)]}


def _anchors(strides: list[int], octave_base_scale: int, scales_per_octave: int, ratios: list[float]) -> dict:
    return {"type": "AnchorGenerator", "octave_base_scale": octave_base_scale, "scales_per_octave": scales_per_octave,
            "ratios": ratios, "strides": strides}


def _coder(stds: list[float]) -> dict:
    return {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": stds}


def _nms(iou: float) -> dict:
    return {"type": "nms", "iou_threshold": iou}


def _max_iou(pos: float, neg: float, min_pos: float, low_quality: bool) -> dict:
    return {"type": "MaxIoUAssigner", "pos_iou_thr": pos, "neg_iou_thr": neg, "min_pos_iou": min_pos,
            "match_low_quality": low_quality, "ignore_iof_thr": -1}


def _sampler(num: int, pos_fraction: float, add_gt: bool) -> dict:
    return {"type": "RandomSampler", "num": num, "pos_fraction": pos_fraction, "neg_pos_ub": -1,
            "add_gt_as_proposals": add_gt}


def _rpn(channels: int, strides: list[int], w: float) -> dict:
    head = {"type": "RPNHead", "in_channels": channels, "feat_channels": channels,
            "anchor_generator": _anchors(strides, 4, 3, [0.5, 1.0, 2.0]), "bbox_coder": _coder([1.0] * 4),
            "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": w},
            "loss_bbox": {"type": "L1Loss", "loss_weight": w}}
    train = {"assigner": _max_iou(0.7, 0.3, 0.3, True), "sampler": _sampler(256, 0.5, False), "allowed_border": -1,
             "pos_weight": -1}
    proposal = {"nms_pre": 4000, "max_per_img": 1000, "nms": _nms(0.7), "min_bbox_size": 0}
    test = {"nms_pre": 1000, "max_per_img": 1000, "nms": _nms(0.7), "min_bbox_size": 0}
    return {"head": head, "train": train, "proposal": proposal, "test": test}


def _roi(c: CoDETRConfig, strides: list[int], w: float, fc_channels: int, finest_scale: float) -> dict:
    extractor = {"type": "SingleRoIExtractor", "out_channels": c.embed_dims, "featmap_strides": strides,
                 "finest_scale": finest_scale,
                 "roi_layer": {"type": "RoIAlign", "output_size": 7, "sampling_ratio": 0}}
    box_head = {"type": "Shared2FCBBoxHead", "in_channels": c.embed_dims, "fc_out_channels": fc_channels,
                "roi_feat_size": 7, "num_classes": c.num_classes, "bbox_coder": _coder([0.1, 0.1, 0.2, 0.2]),
                "reg_class_agnostic": False, "reg_decoded_bbox": True,
                "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": w},
                "loss_bbox": {"type": "GIoULoss", "loss_weight": 10.0 * w}}
    train = {"assigner": _max_iou(0.5, 0.5, 0.5, False), "sampler": _sampler(512, 0.25, True), "pos_weight": -1}
    test = {"score_thr": 0.0, "nms": _nms(0.5), "max_per_img": 100}
    return {"head": {"type": "CoStandardRoIHead", "bbox_roi_extractor": extractor, "bbox_head": box_head},
            "train": train, "test": test}


def _atss(c: CoDETRConfig, strides: list[int], w: float, stacked_convs: int = 1) -> dict:
    head = {"type": "CoATSSHead", "num_classes": c.num_classes, "in_channels": c.embed_dims, "stacked_convs": stacked_convs,
            "feat_channels": c.embed_dims, "anchor_generator": _anchors(strides, 8, 1, [1.0]),
            "bbox_coder": _coder([0.1, 0.1, 0.2, 0.2]),
            "loss_cls": {"type": "FocalLoss", "use_sigmoid": True, "gamma": 2.0, "alpha": 0.25, "loss_weight": w},
            "loss_bbox": {"type": "GIoULoss", "loss_weight": 2.0 * w},
            "loss_centerness": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": w}}
    train = {"assigner": {"type": "ATSSAssigner", "topk": 9}, "allowed_border": -1, "pos_weight": -1}
    test = {"nms_pre": 1000, "min_bbox_size": 0, "score_thr": 0.0, "nms": _nms(0.6), "max_per_img": 100}
    return {"head": head, "train": train, "test": test}
