"""Named models: a table of plain functions, each returning a built (randomly initialised) model.

    codetr.create("deformable_detr_r50_two_stage", num_classes=80)
    codetr.create("dino_tiny", num_classes=3, num_queries=20, input_spec={"min_size": 96})

The data and schedule each name trains with by default: ``codetr.recipes``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from .backbones import BackboneConfig, SwinConfig
from .co_detr.config import CoDETRConfig, official_aux_heads
from .config import from_dict, update
from .dense.atss_detector import ATSSConfig
from .dense.defcn import DeFCNConfig
from .dense.fcos import FCOSConfig
from .detector import Detector, InputSpec, mmdet_input_spec
from .detr.deformable_detr import DeformableDETRConfig
from .detr.dino import DINOConfig
from .rcnn.faster_rcnn import FasterRCNNConfig
from .rcnn.rpn import ProposalConfig
from .registry import get_family
from .structures import ClassInfo
from .yolact.yolact import YolactConfig

_MODELS: dict[str, Callable[..., Detector]] = {}


def register(name: str) -> Callable:
    """Add a zoo entry ``fn(classes, **config_overrides) -> Detector``; names are unique."""
    def wrap(fn: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        _MODELS[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create(name: str, num_classes: int | None = None, classes: ClassInfo | None = None,
           input_spec: InputSpec | dict | None = None, **overrides: Any) -> Detector:
    """Build a zoo model. ``classes`` (or ``num_classes``) sets the label set; ``overrides``
    replace fields of the model's config dataclass, type-checked (e.g. ``num_queries=100``; a
    dict updates a nested config: ``backbone={"depth": 101}`` keeps the other backbone fields,
    ``--set model_args.backbone.depth=101`` on the command line); ``input_spec``
    (an ``InputSpec``, or a dict of its fields such as ``{"min_size": 640}``) replaces the
    model's preprocessing (``--set model_args.input_spec.min_size=640`` on the command line)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"create({name!r}): num_classes must be an int >= 1, got {num_classes!r}")
    if classes is None:
        classes = ClassInfo.anonymous(num_classes if num_classes is not None else 80)
    elif num_classes is not None and num_classes != len(classes):
        raise ValueError(f"num_classes={num_classes} but {len(classes)} classes were given")
    model = _MODELS[name](classes, **overrides)
    if input_spec is not None:
        model.input_spec = input_spec if isinstance(input_spec, InputSpec) else \
            from_dict(InputSpec, {**model.input_spec.to_dict(), **input_spec}, "input_spec.")
    return model


def _build(family: str, classes: ClassInfo, base: Any, spec: InputSpec | None, overrides: dict) -> Detector:
    """``family``'s model from config ``base`` with ``overrides`` and the label set ``classes``;
    ``spec`` None: the family's default preprocessing."""
    fam = get_family(family)
    return fam.model(update(base, {**overrides, "num_classes": len(classes)}), classes, spec)


# -- Deformable DETR ---------------------------------------------------------------------------
@register("deformable_detr_r50")
def deformable_detr_r50(classes: ClassInfo, **overrides: Any) -> Detector:
    """Single-stage Deformable DETR, R50, 300 queries (paper: 43.8 AP on COCO val, 50 epochs)."""
    return _build("deformable_detr", classes, DeformableDETRConfig(), None, overrides)


@register("deformable_detr_r50_box_refine")
def deformable_detr_r50_box_refine(classes: ClassInfo, **overrides: Any) -> Detector:
    """+ iterative box refinement (paper: 45.4 AP)."""
    return _build("deformable_detr", classes, DeformableDETRConfig(with_box_refine=True), None, overrides)


@register("deformable_detr_r50_two_stage")
def deformable_detr_r50_two_stage(classes: ClassInfo, **overrides: Any) -> Detector:
    """+ box refinement + two-stage proposals (paper: 46.2 AP)."""
    base = DeformableDETRConfig(with_box_refine=True, two_stage=True)
    return _build("deformable_detr", classes, base, None, overrides)


# the tiny DETRs' input: evaluated (and predicted) at the top training scale, ~128 px images
TINY_INPUT = InputSpec(min_size=128, max_size=170)
# half-width ResNet-18 (stem 32, res2 32) with trainable BatchNorm: learns from scratch
TINY_BACKBONE = BackboneConfig(depth=18, norm="bn", frozen_stages=-1, stem_channels=32, res2_channels=32)


@register("deformable_detr_tiny")
def deformable_detr_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """Two-stage + box refine on a half-width ResNet-18 with trainable BN, 128-d, for ~128 px
    images: trains from scratch on CPU (the demo, tests)."""
    base = DeformableDETRConfig(
        backbone=TINY_BACKBONE, hidden_dim=128, num_heads=4, enc_layers=2, dec_layers=3, ffn_dim=512, dropout=0.0,
        num_feature_levels=4, num_queries=50, with_box_refine=True, two_stage=True, num_select=50)
    return _build("deformable_detr", classes, base, replace(TINY_INPUT), overrides)


# -- DINO ------------------------------------------------------------------------------------------
@register("dino_r50_4scale")
def dino_r50_4scale(classes: ClassInfo, **overrides: Any) -> Detector:
    """DINO-4scale, R50, 900 queries, 100 denoising budget (paper: 49.0 AP at 12 epochs)."""
    return _build("dino", classes, DINOConfig(), None, overrides)


@register("dino_r50_5scale")
def dino_r50_5scale(classes: ClassInfo, **overrides: Any) -> Detector:
    """DINO-5scale: + the stride-4 C2 level (paper: 49.4 AP at 12 epochs)."""
    base = DINOConfig(return_interm_indices=[0, 1, 2, 3], num_feature_levels=5)
    return _build("dino", classes, base, None, overrides)


@register("dino_tiny")
def dino_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """DINO on a half-width ResNet-18 with trainable BN, 128-d, for ~128 px images (as
    deformable_detr_tiny): trains from scratch on CPU (tests, demo). dn_number 50 is a denoising
    budget (official rule for >= 50): 100 // (2 * most objects in an image) groups, about 100
    denoising queries. 100 queries learned faster per image than 50 on the synthetic shapes
    (benchmarks/RESULTS.md)."""
    base = DINOConfig(
        backbone=TINY_BACKBONE, hidden_dim=128, num_heads=4, enc_layers=2, dec_layers=3, ffn_dim=512, dropout=0.0,
        num_feature_levels=4, num_queries=100, dn_number=50, num_select=100)
    return _build("dino", classes, base, replace(TINY_INPUT), overrides)


# -- YOLACT (the default InputSpec: official_input_spec(config.max_size), square) ----------------
_YOLACT_PLUS_SCALES = [[s * 2 ** (j / 3.0) for j in range(3)] for s in (24, 48, 96, 192, 384)]


@register("yolact_r50_550")
def yolact_r50_550(classes: ClassInfo, **overrides: Any) -> Detector:
    """YOLACT, ResNet-50-FPN, 550 px (official: 28.2 mask AP on COCO test-dev, 42.5 fps on a Titan Xp)."""
    return _build("yolact", classes, YolactConfig(), None, overrides)


@register("yolact_r101_550")
def yolact_r101_550(classes: ClassInfo, **overrides: Any) -> Detector:
    """YOLACT, ResNet-101-FPN, 550 px (official: 29.8 mask AP on COCO test-dev, 33.5 fps)."""
    return _build("yolact", classes, update(YolactConfig(), {"backbone": {"depth": 101}}), None, overrides)


@register("yolact_plus_r50_550")
def yolact_plus_r50_550(classes: ClassInfo, **overrides: Any) -> Detector:
    """YOLACT++ R50: modulated deformable convs in the last 4 / 6 / 3 blocks of C3-C5, 3 scales x
    3 ratios per location, non-square anchors (official: 34.1 mask AP with the mask re-scoring
    branch, which codetr does not include)."""
    base = update(YolactConfig(), {"backbone": {"dcn_layers": (0, 4, 6, 3)}, "pred_scales": _YOLACT_PLUS_SCALES,
                                   "square_anchors": False})
    return _build("yolact", classes, base, None, overrides)


@register("yolact_tiny")
def yolact_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """YOLACT on a half-width ResNet-18 (stem 32, res2 32) with trainable BN, 64-d FPN, 128 px
    square input: trains from scratch on CPU (synthetic shapes); it learns less per image than
    full width + 128-d but more per minute. The anchor scales stay the official pixel values
    (24 .. 384, 3x each level's stride) rather than shrinking with the image as ``yolact_im400``
    does: smaller anchors learned much slower here. Its mask loss takes soft targets (each 4x4-pixel
    prototype cell's covered fraction, not the official bilinear sample thresholded at 0.5): at
    32x32 prototypes most synthetic objects span 2-10 cells (measurements: benchmarks/RESULTS.md)."""
    base = YolactConfig(backbone=TINY_BACKBONE, max_size=128, fpn_features=64, soft_mask_targets=True)
    return _build("yolact", classes, base, None, overrides)


# -- DeFCN / FCOS ----------------------------------------------------------------------------------
# ImageNet RGB statistics (torchvision backbones), padded to a multiple of 32 as cvpods
DENSE_INPUT = InputSpec(min_size=800, max_size=1333, size_divisibility=32)


@register("defcn_poto_3dmf_aux_r50")
def defcn_poto_3dmf_aux_r50(classes: ClassInfo, **overrides: Any) -> Detector:
    """DeFCN: POTO + 3D max filtering + auxiliary loss, R50-FPN, no NMS (paper: 41.4 AP, 3x ms)."""
    return _build("defcn", classes, DeFCNConfig(), replace(DENSE_INPUT), overrides)


@register("defcn_poto_r50")
def defcn_poto_r50(classes: ClassInfo, **overrides: Any) -> Detector:
    """POTO alone (no 3DMF, no auxiliary loss), no NMS (paper: 39.2 AP, 3x ms)."""
    return _build("defcn", classes, DeFCNConfig(max_filter=False, aux_topk=None), replace(DENSE_INPUT), overrides)


@register("fcos_r50")
def fcos_r50(classes: ClassInfo, **overrides: Any) -> Detector:
    """FCOS baseline of the DeFCN paper: center sampling, center-ness on the box tower, GIoU,
    NMS 0.6 (paper: 41.4 AP with NMS, 3x ms)."""
    return _build("fcos", classes, FCOSConfig(), replace(DENSE_INPUT), overrides)


# the tiny dense models' input: evaluated at 144 px, the top training scale
TINY_DENSE_INPUT = InputSpec(min_size=144, max_size=192, size_divisibility=32)


def _tiny_dense_config(config: type, **kwargs: Any) -> Any:
    """``config`` (DeFCNConfig, FCOSConfig) with ResNet-18 at half width with trainable BN (nothing
    frozen), a 64-channel FPN and 2-conv towers, for ~128 px images: P3-P5 only (P6/P7 would be
    2x2 and 1x1 maps there)."""
    return config(backbone=TINY_BACKBONE, fpn_channels=64, num_convs=2, strides=[8, 16, 32], **kwargs)


@register("defcn_tiny")
def defcn_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """POTO + 3DMF + aux on a small trainable ResNet-18: trains from scratch on CPU."""
    return _build("defcn", classes, _tiny_dense_config(DeFCNConfig), replace(TINY_DENSE_INPUT), overrides)


@register("fcos_tiny")
def fcos_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """The FCOS baseline on the same small network as ``defcn_tiny``."""
    return _build("fcos", classes, _tiny_dense_config(FCOSConfig), replace(TINY_DENSE_INPUT), overrides)


# -- ATSS (mmdet; the default InputSpec: mmdet's RGB ImageNet statistics on [0, 255], 1333 x 800) ---
@register("atss_r50_fpn_1x")
def atss_r50_fpn_1x(classes: ClassInfo, **overrides: Any) -> Detector:
    """ATSS, R50-FPN (P3-P7), mmdet's ``atss_r50_fpn_1x_coco`` (COCO 39.4 box AP, 12 epochs)."""
    return _build("atss", classes, ATSSConfig(), None, overrides)


@register("atss_tiny")
def atss_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """ATSS on a half-width ResNet-18 with trainable BN, a 64-channel FPN (P3-P5) and 2-conv
    64-channel towers, for ~128-144 px images (``TINY_DENSE_INPUT``: the same normalisation as
    mmdet's on [0, 1]): trains from scratch on CPU. Anchors of 4 strides (32 px at P3 .. 128 px
    at P5) instead of 8, for objects of ~8-64 px."""
    base = ATSSConfig(backbone=TINY_BACKBONE, fpn_channels=64, feat_channels=64, stacked_convs=2,
                      strides=[8, 16, 32], octave_base_scale=4)
    return _build("atss", classes, base, replace(TINY_DENSE_INPUT), overrides)


# -- Faster R-CNN (mmdet) -----------------------------------------------------------------------
@register("faster_rcnn_r50_fpn_1x")
def faster_rcnn_r50_fpn_1x(classes: ClassInfo, **overrides: Any) -> Detector:
    """Faster R-CNN, R50-FPN (P2-P6), mmdet's ``faster_rcnn_r50_fpn_1x_coco`` (37.4 box AP on COCO
    val, 12 epochs)."""
    return _build("faster_rcnn", classes, FasterRCNNConfig(), None, overrides)


@register("faster_rcnn_tiny")
def faster_rcnn_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """Faster R-CNN on a half-width ResNet-18 with trainable BN, a 64-channel FPN (P2-P5) and a
    256-d box head, for ~128-144 px images: trains from scratch on CPU. The images are ~1/6 of
    COCO's, so the anchors (scale 4: 16 px at P2 .. 128 px at P5) and the RoI level rule
    (finest_scale 28) are halved, with fewer proposals (300) and sampled RoIs (128 per image)."""
    base = FasterRCNNConfig(
        backbone=TINY_BACKBONE, fpn_channels=64, rpn_channels=64, anchor_scales=(4.0,), anchor_strides=(4, 8, 16, 32),
        rpn_train_proposals=ProposalConfig(nms_pre=1000, max_per_img=300, iou_threshold=0.7),
        rpn_test_proposals=ProposalConfig(nms_pre=500, max_per_img=300, iou_threshold=0.7),
        finest_scale=28.0, fc_channels=256, rcnn_sampling=replace(FasterRCNNConfig().rcnn_sampling, num=128))
    return _build("faster_rcnn", classes, base, mmdet_input_spec(144, 192), overrides)


# -- Co-DETR (Sense-X/Co-DETR configs; mmdet normalisation, Pad size_divisor 1) --------------------
CO_DETR_INPUT = replace(mmdet_input_spec(), size_divisibility=1)
# LSJ test: the longer side to 1024, padded to a 1024 x 1024 square (official pad value 114 before
# normalising, codetr's 0 after: the padded pixels differ)
CO_DETR_LSJ_INPUT = replace(mmdet_input_spec(1024, 1024), size_divisibility=1024)
# ``co_deformable_detr_r50_1x_coco.py``: C3-C5 + one extra level, 300 queries, focal loss x2,
# sine positions offset -0.5 (codetr 0.5) at temperature 10000, top-100 without NMS
CO_DEFORMABLE_DETR = CoDETRConfig(
    variant="deformable", backbone_stages=[2, 3, 4], num_levels=4,
    enc_checkpoint_layers=0, num_queries=300, pe_temperature=10000.0, pe_offset=0.5, with_coord_feat=True,
    dn_box_noise=0.4, cls_loss="focal", cls_weight=2.0, max_per_img=100, nms=None)
# ``co_dino_5scale_swin_large_1x_coco.py``: Swin-L (22k, 384) instead of R50, encoder with_cp 6
SWIN_L = BackboneConfig(kind="swin", frozen_stages=-1, swin=SwinConfig())
CO_DINO_SWIN_L = CoDETRConfig(backbone=SWIN_L, enc_checkpoint_layers=6)


def _co_detr(classes: ClassInfo, base: CoDETRConfig, spec: InputSpec, overrides: dict, **aux: Any) -> Detector:
    """A Co-DETR from ``base`` + ``overrides`` whose auxiliary heads (unless overridden) are the
    official ones sized to the result (``official_aux_heads(config, **aux)``): classes, widths and
    levels overridden at ``create`` reach the RPN, RoI and ATSS heads too."""
    config = update(base, {**overrides, "num_classes": len(classes)})
    if not {"rpn", "roi_heads", "atss_heads"} & set(overrides):
        config = replace(config, **official_aux_heads(config, **aux))
    return get_family("co_detr").model(config, classes, replace(spec))


@register("co_deformable_detr_r50_1x")
def co_deformable_detr_r50_1x(classes: ClassInfo, **overrides: Any) -> Detector:
    """Co-Deformable-DETR, R50, 300 queries, RPN + RoI and ATSS auxiliary heads (official: 49.5 box
    AP on COCO val, 12 epochs)."""
    return _co_detr(classes, CO_DEFORMABLE_DETR, CO_DETR_INPUT, overrides, finest_scale=112.0)


@register("co_dino_5scale_r50_1x")
def co_dino_5scale_r50_1x(classes: ClassInfo, **overrides: Any) -> Detector:
    """Co-DINO-5scale, R50, 900 queries, soft-NMS 0.8 (official: 52.1 box AP on COCO val, 12 epochs)."""
    return _co_detr(classes, CoDETRConfig(), CO_DETR_INPUT, overrides)


@register("co_dino_5scale_lsj_r50_3x")
def co_dino_5scale_lsj_r50_3x(classes: ClassInfo, **overrides: Any) -> Detector:
    """Co-DINO-5scale, R50, large-scale jitter at 1024 px without padding masks (official: 54.8
    box AP on COCO val, 36 epochs)."""
    return _co_detr(classes, CoDETRConfig(with_attn_mask=False), CO_DETR_LSJ_INPUT, overrides)


@register("co_dino_5scale_swin_l_1x")
def co_dino_5scale_swin_l_1x(classes: ClassInfo, **overrides: Any) -> Detector:
    """Co-DINO-5scale, Swin-L (official: 58.9 box AP on COCO val, 12 epochs)."""
    return _co_detr(classes, CO_DINO_SWIN_L, CO_DETR_INPUT, overrides)


@register("co_dino_5scale_swin_l_lsj_3x")
def co_dino_5scale_swin_l_lsj_3x(classes: ClassInfo, **overrides: Any) -> Detector:
    """Co-DINO-5scale, Swin-L, LSJ at 1280 px, drop path 0.5 (official: 60.7 box AP on COCO val,
    36 epochs)."""
    base = update(CO_DINO_SWIN_L, {"with_attn_mask": False, "backbone": {"swin": {"drop_path_rate": 0.5}}})
    return _co_detr(classes, base, replace(mmdet_input_spec(1280, 1280), size_divisibility=1280), overrides)


@register("co_dino_tiny")
def co_dino_tiny(classes: ClassInfo, **overrides: Any) -> Detector:
    """Co-DINO on dino_tiny's network (half-width ResNet-18 with trainable BN, 128-d, 4 heads,
    2 + 3 layers, 100 queries, ~128 px images) with 4 levels (C3-C5 + one), about 100 denoising
    queries as dino_tiny, and ONE auxiliary head, ATSS (the paper's K = 1 ablation), made cheap
    for CPU training: its predictors read the encoder's maps directly (no 3x3 conv + GN tower)
    and its positive-query group holds at most 16 queries per image (official ``max_pos_coords``
    300; ~45 positives per image here). The RPN + RoI branch made a step cost 2.4x a dino_tiny
    step even when cut down; with these choices a step costs ~1.15x, and co_dino_tiny beats
    dino_tiny at equal wall time (benchmarks/RESULTS.md). Trains from scratch on CPU. No
    soft-NMS (top 100 as dino_tiny), no activation checkpointing."""
    base = CoDETRConfig(
        backbone=TINY_BACKBONE, backbone_stages=[2, 3, 4], num_levels=4,
        embed_dims=128, pe_num_feats=64, num_heads=4, enc_layers=2, dec_layers=3, ffn_dim=512,
        enc_checkpoint_layers=0, num_queries=100, dn_num_queries=50, max_per_img=100, nms=None, num_co_heads=1,
        max_pos_coords=16)
    return _co_detr(classes, base, replace(TINY_INPUT), overrides, with_roi=False, atss_stacked_convs=0)
