"""``CoDETRConfig``: every number a Co-DETR model (Co-Deformable-DETR or Co-DINO) is built from.
``codetr.convert.co_detr.config_from_mmdet`` reads it from an official mmcv config.

The auxiliary heads (RPN, RoI, ATSS) are kept as their official config dicts: their builders
(``rcnn.roi_head_from_mmdet``, ``dense.atss_head_from_mmdet``, ``co_detr.aux_heads.rpn_from_mmdet``)
are the one place that reads them, so the numbers are not parsed twice.
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
    neck_in_channels: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    neck_kernel_size: int = 1
    num_levels: int = 5          # neck outputs = encoder levels (plus one ``downsample`` level for the aux heads)
    embed_dims: int = 256
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.0
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

    def to_dict(self) -> dict:
        return asdict(self)
