"""Named models: a table of plain functions, each returning a built (randomly initialised) model.

    codetr.create("deformable_detr_r50_two_stage", num_classes=80)
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable

from .detector import Detector, InputSpec
from .detr.deformable_detr import DeformableDETR, DeformableDETRConfig
from .detr.dino import DINO, DINOConfig
from .structures import ClassInfo
from .yolact.yolact import Yolact, YolactConfig, official_input_spec

_MODELS: dict[str, Callable[..., Detector]] = {}
_RECIPES: dict[str, Callable[[str], "RunConfig"] | None] = {}


def register(name: str, recipe: Callable[[str], "RunConfig"] | None = None) -> Callable:
    """Add a zoo entry. ``recipe(name)`` returns its default ``RunConfig`` (data, schedule);
    without one the entry trains with the official DETR schedule (``_official_detr_recipe``)."""
    def wrap(fn: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        _MODELS[name] = fn
        _RECIPES[name] = recipe
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create(name: str, num_classes: int | None = None, classes: ClassInfo | None = None,
           **overrides: Any) -> Detector:
    """Build a zoo model. ``classes`` (or ``num_classes``) sets the label set; ``overrides``
    replace fields of the model's config dataclass (e.g. ``num_queries=100``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"create({name!r}): num_classes must be an int >= 1, got {num_classes!r}")
    if classes is None:
        classes = ClassInfo.anonymous(num_classes if num_classes is not None else 80)
    elif num_classes is not None and num_classes != len(classes):
        raise ValueError(f"num_classes={num_classes} but {len(classes)} classes were given")
    return _MODELS[name](classes, **overrides)


def _config(cls: type, base: Any, overrides: dict) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    return replace(base, **overrides)


def _deformable_detr(classes: ClassInfo, base: DeformableDETRConfig, spec: InputSpec | None,
                     overrides: dict) -> DeformableDETR:
    config = _config(DeformableDETRConfig, replace(base, num_classes=len(classes)), overrides)
    return DeformableDETR(config, classes, spec)


@register("deformable_detr_r50")
def deformable_detr_r50(classes: ClassInfo, **overrides: Any) -> DeformableDETR:
    """Single-stage Deformable DETR, R50, 300 queries (paper: 43.8 AP on COCO val, 50 epochs)."""
    return _deformable_detr(classes, DeformableDETRConfig(), None, overrides)


@register("deformable_detr_r50_box_refine")
def deformable_detr_r50_box_refine(classes: ClassInfo, **overrides: Any) -> DeformableDETR:
    """+ iterative box refinement (paper: 45.4 AP)."""
    return _deformable_detr(classes, DeformableDETRConfig(with_box_refine=True), None, overrides)


@register("deformable_detr_r50_two_stage")
def deformable_detr_r50_two_stage(classes: ClassInfo, **overrides: Any) -> DeformableDETR:
    """+ box refinement + two-stage proposals (paper: 46.2 AP)."""
    return _deformable_detr(classes, DeformableDETRConfig(with_box_refine=True, two_stage=True), None, overrides)


TINY_INPUT = InputSpec(min_size=128, max_size=170)


@register("deformable_detr_tiny", recipe=lambda name: _tiny_recipe(name, epochs=18, lr_drop=15))
def deformable_detr_tiny(classes: ClassInfo, **overrides: Any) -> DeformableDETR:
    """Two-stage + box refine on a half-width ResNet-18 (stem 32, res2 32) with trainable BN,
    128-d, for ~128 px images: trains from scratch on CPU (the demo, tests)."""
    base = DeformableDETRConfig(
        backbone_depth=18, backbone_norm="bn", backbone_frozen_stages=-1, stem_channels=32, res2_channels=32,
        hidden_dim=128, num_heads=4,
        enc_layers=2, dec_layers=3, ffn_dim=512, dropout=0.0, num_feature_levels=4, num_queries=50,
        with_box_refine=True, two_stage=True, num_select=50)
    return _deformable_detr(classes, base, replace(TINY_INPUT), overrides)


# -- DINO ------------------------------------------------------------------------------------------
def _dino(classes: ClassInfo, base: DINOConfig, spec: InputSpec | None, overrides: dict) -> DINO:
    config = _config(DINOConfig, replace(base, num_classes=len(classes)), overrides)
    return DINO(config, classes, spec)


@register("dino_r50_4scale", recipe=lambda name: _official_dino_recipe(name))
def dino_r50_4scale(classes: ClassInfo, **overrides: Any) -> DINO:
    """DINO-4scale, R50, 900 queries, 100 denoising budget (paper: 49.0 AP at 12 epochs)."""
    return _dino(classes, DINOConfig(), None, overrides)


@register("dino_r50_5scale", recipe=lambda name: _official_dino_recipe(name))
def dino_r50_5scale(classes: ClassInfo, **overrides: Any) -> DINO:
    """DINO-5scale: + the stride-4 C2 level (paper: 49.4 AP at 12 epochs)."""
    return _dino(classes, DINOConfig(return_interm_indices=[0, 1, 2, 3], num_feature_levels=5), None, overrides)


@register("dino_tiny", recipe=lambda name: _tiny_recipe(name, epochs=15, lr_drop=12))
def dino_tiny(classes: ClassInfo, **overrides: Any) -> DINO:
    """DINO on a half-width ResNet-18 with trainable BN, 128-d, for ~128 px images (as
    deformable_detr_tiny): trains from scratch on CPU (tests, demo). Half width steps ~1.3x
    faster than full width and learned as much per image (AP50 0.149 vs 0.152 after 2 epochs).
    dn_number 50 is a denoising budget (official rule for >= 50): 100 // (2 * most objects in
    an image) groups, about 100 denoising queries.
    100 queries: on the synthetic shapes 100 learned faster per image than 50 (AP50 0.35 vs 0.20
    after 5 epochs of 1000 images, batch 8)."""
    base = DINOConfig(
        backbone_depth=18, backbone_norm="bn", backbone_frozen_stages=-1, stem_channels=32, res2_channels=32,
        hidden_dim=128, num_heads=4,
        enc_layers=2, dec_layers=3, ffn_dim=512, dropout=0.0, num_feature_levels=4, num_queries=100,
        dn_number=50, num_select=100)
    return _dino(classes, base, replace(TINY_INPUT), overrides)


def _official_dino_recipe(name: str) -> "RunConfig":
    """Official DINO 12-epoch schedule: LR 1e-4 (backbone x0.1), drop at epoch 11, batch 2 per GPU."""
    from .config import DataConfig, RunConfig, TrainConfig

    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(),
                     train=TrainConfig(epochs=12, lr=1e-4, lr_drop=11))


# -- recipes: the data and schedule each model trains with by default ----------------------------
def _tiny_recipe(name: str, epochs: int, lr_drop: int) -> "RunConfig":
    """Tuned on this project's 2-core CPU for ``codetr demo``: 2 single-thread DDP processes,
    so the batch is 2 x ``batch_size`` (trainable BatchNorm wants >= 4 images per process);
    ~96-128 px images with flip + scale jitter only (the crop branch costs more than it gives
    at this budget); a trainable backbone at the full LR (no pretrained weights to protect);
    LR 1e-3 (2e-3 stalled, 4e-4 learned slower). bfloat16 autocast where the CPU has bf16
    units (``amp="auto"``; ~1.4x faster steps), NHWC convolutions and DDP without per-step
    buffer broadcasts, gradients all-reduced in bf16, fit many more epochs than float32 did
    (11); without bf16 units a recipe takes ~1.4x longer. A dino_tiny step costs ~1.3x a
    deformable_detr_tiny one (denoising queries), and this host's speed varies by up to ~25%
    between runs, so dino_tiny trains 15 epochs (drop at 12; 18 epochs took 15.7 minutes on a
    slow hour: AP50 0.802) and deformable_detr_tiny 18 (drop at 15; 10.5 minutes, AP50 0.566,
    vs 0.528 for 16 epochs with the drop at 13). Evaluated at the top
    training scale, as the official recipes do (800 of 480..800): on one dino_tiny checkpoint
    AP / AP50 0.444 / 0.619 at 128 px vs 0.410 / 0.602 at 112 and 0.401 / 0.578 at 144."""
    from .config import DataConfig, RunConfig, TrainConfig

    data = DataConfig(train_scales=[96, 112, 128], max_size=170, crop=False, eval_min_size=TINY_INPUT.min_size,
                      eval_max_size=TINY_INPUT.max_size, num_workers=0)
    train = TrainConfig(epochs=epochs, batch_size=4, procs=2, lr=1e-3, lr_drop=lr_drop, warmup_iters=50,
                        lr_multipliers={"sampling_offsets": 0.1, "reference_points": 0.1}, amp="auto",
                        channels_last=True, eval_every=2, checkpoint_every_iters=500, log_every=25)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)


def _official_detr_recipe(name: str) -> "RunConfig":
    """Official Deformable DETR schedule: 50 epochs, LR drop at 40, batch 2 per GPU."""
    from .config import DataConfig, RunConfig, TrainConfig

    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(), train=TrainConfig())


def recipe(name: str) -> "RunConfig":
    """The default ``RunConfig`` of a zoo model (``codetr train NAME`` starts from it)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return (_RECIPES[name] or _official_detr_recipe)(name)


# -- YOLACT ----------------------------------------------------------------------------------------
def _yolact(classes: ClassInfo, base: YolactConfig, spec: InputSpec | None, overrides: dict) -> Yolact:
    config = _config(YolactConfig, replace(base, num_classes=len(classes)), overrides)
    return Yolact(config, classes, spec or official_input_spec(config.max_size))


_YOLACT_PLUS_SCALES = [[s * 2 ** (j / 3.0) for j in range(3)] for s in (24, 48, 96, 192, 384)]


@register("yolact_r50_550", recipe=lambda name: _official_yolact_recipe(name))
def yolact_r50_550(classes: ClassInfo, **overrides: Any) -> Yolact:
    """YOLACT, ResNet-50-FPN, 550 px (official: 28.2 mask AP on COCO test-dev, 42.5 fps on a Titan Xp)."""
    return _yolact(classes, YolactConfig(backbone_depth=50), None, overrides)


@register("yolact_r101_550", recipe=lambda name: _official_yolact_recipe(name))
def yolact_r101_550(classes: ClassInfo, **overrides: Any) -> Yolact:
    """YOLACT, ResNet-101-FPN, 550 px (official: 29.8 mask AP on COCO test-dev, 33.5 fps)."""
    return _yolact(classes, YolactConfig(backbone_depth=101), None, overrides)


@register("yolact_plus_r50_550", recipe=lambda name: _official_yolact_recipe(name))
def yolact_plus_r50_550(classes: ClassInfo, **overrides: Any) -> Yolact:
    """YOLACT++ R50: modulated deformable convs in the last 4 / 6 / 3 blocks of C3-C5, 3 scales x
    3 ratios per location, non-square anchors (official: 34.1 mask AP with the mask re-scoring
    branch, which codetr does not include)."""
    base = YolactConfig(backbone_depth=50, dcn_layers=[0, 4, 6, 3], dcn_interval=1,
                        pred_scales=_YOLACT_PLUS_SCALES, square_anchors=False)
    return _yolact(classes, base, None, overrides)


YOLACT_TINY_SIZE = 128


@register("yolact_tiny", recipe=lambda name: _yolact_tiny_recipe(name))
def yolact_tiny(classes: ClassInfo, **overrides: Any) -> Yolact:
    """YOLACT on a half-width ResNet-18 (stem 32, res2 32) with trainable BN, 64-d FPN, 128 px
    square input: trains from scratch on CPU (synthetic shapes). Half width + 64-d FPN steps
    ~3x faster than full width + 128-d (0.17-0.23 s vs 0.55 s per batch of 8, 2 threads): it
    learns less per image but more per minute. The anchor scales stay the
    official pixel values (24 .. 384, 3x each level's stride) rather than shrinking with the
    image as ``yolact_im400`` does: smaller anchors learn much slower here (box AP50 after 4
    epochs: 0.12 with 12 .. 192 px anchors, 0.30 with the official ones; 0.04 vs 0.21 after
    ~1.5k images with 5.6 .. 90 px). Its mask loss takes soft targets (each 4x4-pixel prototype
    cell's covered fraction, not the official bilinear sample thresholded at 0.5): at 32x32
    prototypes most synthetic objects span 2-10 cells, and the soft targets lifted mask AP
    0.416 -> 0.473 (AP50 0.715 -> 0.734, AP75 0.433 -> 0.502) in the same recipe."""
    base = YolactConfig(backbone_depth=18, stem_channels=32, res2_channels=32, max_size=YOLACT_TINY_SIZE,
                        fpn_features=64, soft_mask_targets=True)
    return _yolact(classes, base, None, overrides)


def _yolact_data(size: int, **kwargs: Any) -> "DataConfig":
    from .config import DataConfig
    from .yolact.yolact import YOLACT_MEAN, YOLACT_STD

    return DataConfig(masks=True, square=True, train_scales=[size], max_size=size, eval_min_size=size,
                      eval_max_size=size, mean=[m / 255 for m in YOLACT_MEAN], std=[s / 255 for s in YOLACT_STD],
                      **kwargs)


def _official_yolact_recipe(name: str) -> "RunConfig":
    """Official YOLACT schedule (SGD 1e-3, 800k iterations of batch 8) approximated with the
    engine's AdamW: 550 px squares with masks, flip augmentation."""
    from .config import RunConfig, TrainConfig

    train = TrainConfig(epochs=55, batch_size=8, lr=1e-4, weight_decay=5e-4, lr_multipliers={}, clip_max_norm=0,
                        lr_drop=45, warmup_iters=500)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=_yolact_data(550), train=train)


def _yolact_tiny_recipe(name: str) -> "RunConfig":
    """For ``codetr train yolact_tiny`` on 2 CPU cores (synthetic shapes, ~12 min): 128 px
    squares, flip only (the SSD crop / zoom-out cost more than they give at this budget), one
    2-thread process with batch 8, AdamW LR 3e-3 with a 100-step warmup, 60 epochs, LR drop
    x0.1 at 52. With bfloat16 autocast (where the CPU has bf16 units) and NHWC convolutions an
    epoch of 1000 images takes ~12 s, and one process is faster than 2 single-thread DDP
    processes x 4 (0.072 vs 0.092 s per step of 8 images, and BatchNorm sees all 8). Measured
    (box / mask AP50, benchmarks/RESULTS.md): this recipe with soft mask targets 0.813 / 0.734
    and 0.807 / 0.731 (mask AP 0.473 / 0.476) in 12.6 / 12.9 min on a slow hour (mask AP50 after
    epochs 10 / 20 / 30 / 40 / 50: 0.515 / 0.646 / 0.695 / 0.702 / 0.695: it plateaus at LR 3e-3
    and the drop adds 0.04); with the official binary targets 0.807 / 0.729 and 0.805 / 0.715
    (mask AP 0.425 / 0.416). Float32 runs of 27 epochs, drop at 24: LR 3e-3 0.794 /
    0.708 and 0.789 / 0.691; 2e-3 0.771 / 0.675; 1e-3 0.703 / 0.609. A linear decay of the LR
    over the run learned less than a constant LR with a late drop."""
    from .config import RunConfig, TrainConfig

    train = TrainConfig(epochs=60, batch_size=8, procs=1, lr=3e-3, weight_decay=1e-4, lr_multipliers={},
                        clip_max_norm=0, lr_drop=52, warmup_iters=100, amp="auto", channels_last=True, eval_every=10,
                        checkpoint_every_iters=500, log_every=25)
    return RunConfig(model=name, out_dir=f"runs/{name}",
                     data=_yolact_data(YOLACT_TINY_SIZE, crop=False, num_workers=0), train=train)


# -- DeFCN / FCOS ----------------------------------------------------------------------------------
def _defcn(classes: ClassInfo, base: "DeFCNConfig", spec: InputSpec | None, overrides: dict) -> "DeFCN":
    from .dense.defcn import DeFCN, DeFCNConfig

    config = _config(DeFCNConfig, replace(base, num_classes=len(classes)), overrides)
    return DeFCN(config, classes, spec or InputSpec(min_size=800, max_size=1333, size_divisibility=32))


@register("defcn_poto_3dmf_aux_r50", recipe=lambda name: _defcn_recipe(name))
def defcn_poto_3dmf_aux_r50(classes: ClassInfo, **overrides: Any) -> "DeFCN":
    """DeFCN: POTO + 3D max filtering + auxiliary loss, R50-FPN, no NMS (paper: 41.4 AP, 3x ms)."""
    from .dense.defcn import DeFCNConfig

    return _defcn(classes, DeFCNConfig(), None, overrides)


@register("defcn_poto_r50", recipe=lambda name: _defcn_recipe(name))
def defcn_poto_r50(classes: ClassInfo, **overrides: Any) -> "DeFCN":
    """POTO alone (no 3DMF, no auxiliary loss), no NMS (paper: 39.2 AP, 3x ms)."""
    from .dense.defcn import DeFCNConfig

    return _defcn(classes, DeFCNConfig(max_filter=False, aux_topk=None), None, overrides)


@register("fcos_r50", recipe=lambda name: _defcn_recipe(name))
def fcos_r50(classes: ClassInfo, **overrides: Any) -> "DeFCN":
    """FCOS baseline of the DeFCN paper: center sampling, center-ness on the box tower, GIoU,
    NMS 0.6 (paper: 41.4 AP with NMS, 3x ms)."""
    from .dense.defcn import DeFCNConfig

    return _defcn(classes, DeFCNConfig(assigner="fcos", nms_threshold=0.6), None, overrides)


def _tiny_dense_config(**kwargs: Any) -> "DeFCNConfig":
    """ResNet-18 at half width with trainable BN (nothing frozen), a 64-channel FPN and
    2-conv towers, for ~128 px images: P3-P5 only (P6/P7 would be 2x2 and 1x1 maps there)."""
    from .dense.defcn import DeFCNConfig

    return DeFCNConfig(backbone_depth=18, backbone_norm="bn", backbone_frozen_stages=-1, stem_channels=32,
                       res2_channels=32, stride_in_1x1=False, fpn_channels=64, num_convs=2, strides=[8, 16, 32],
                       **kwargs)


TINY_DENSE_INPUT = InputSpec(min_size=144, max_size=192, size_divisibility=32)


@register("defcn_tiny", recipe=lambda name: _tiny_dense_recipe(name))
def defcn_tiny(classes: ClassInfo, **overrides: Any) -> "DeFCN":
    """POTO + 3DMF + aux on a small trainable ResNet-18: trains from scratch on CPU."""
    return _defcn(classes, _tiny_dense_config(), replace(TINY_DENSE_INPUT), overrides)


@register("fcos_tiny", recipe=lambda name: _tiny_dense_recipe(name))
def fcos_tiny(classes: ClassInfo, **overrides: Any) -> "DeFCN":
    """The FCOS baseline on the same small network as ``defcn_tiny``."""
    return _defcn(classes, _tiny_dense_config(assigner="fcos", nms_threshold=0.6), replace(TINY_DENSE_INPUT),
                  overrides)


def _tiny_dense_recipe(name: str) -> "RunConfig":
    """``defcn_tiny`` / ``fcos_tiny`` on the synthetic shapes (``codetr data synth``): ~128 px
    images with flip + scale jitter, AdamW on every parameter at one LR (no pretrained weights).
    Tuned on 8-minute 1-thread runs of defcn_tiny (AP50 after each epoch of 1000 images): batch 4
    beat batch 8 per image seen (0.07 / 0.19 vs 0.04 / 0.12 after epochs 2 / 3); LR 1e-3 beat
    2e-3 and 4e-3 (0.06 / 0.16 / 0.24 / 0.31 / 0.38 vs 0.05 / 0.13 / 0.21 / 0.27 / 0.29 after
    epochs 2-6 for 2e-3); P3-P5 beat P3-P7. An EMA of the weights (0.998) lagged behind (AP50
    0.773 vs 0.794 after 20 epochs). With bfloat16 autocast (where the CPU has bf16 units) and
    NHWC convolutions one 2-thread process steps batch 4 in ~0.07 s, faster than 2
    single-thread DDP processes x 2 images (~0.08 s, plus their start). 33 epochs with the drop
    at 27 reached AP50 0.873 (AP 0.686; after epochs 11 / 22: 0.683 / 0.807) in 11.5 min, ~13
    at the host's slowest step seen; 36 epochs with the drop at 30 reached AP50 0.881 / 0.875
    (AP 0.698 / 0.697) but took 14.1 min on a slow hour, too close to the 15-minute budget.
    Evaluated at 144 px, the top training scale (an earlier checkpoint: AP50 0.830 there, 0.800
    at 128 px, 0.823 at 160 px)."""
    from .config import DataConfig, RunConfig, TrainConfig

    data = DataConfig(train_scales=[112, 128, 144], max_size=192, crop=False,
                      eval_min_size=TINY_DENSE_INPUT.min_size, eval_max_size=TINY_DENSE_INPUT.max_size, num_workers=0)
    train = TrainConfig(epochs=33, batch_size=4, procs=1, lr=1e-3, lr_drop=27, warmup_iters=100, lr_multipliers={},
                        clip_max_norm=1.0, amp="auto", channels_last=True, eval_every=11, checkpoint_every_iters=500,
                        log_every=25)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)


def _defcn_recipe(name: str) -> "RunConfig":
    """The official 3x multi-scale schedule in epochs (270k iterations at batch 16 = 36 epochs,
    first LR drop at 28), with AdamW; backbone at 0.1x LR."""
    from .config import DataConfig, RunConfig, TrainConfig

    data = DataConfig(train_scales=[640, 672, 704, 736, 768, 800], max_size=1333, crop=False)
    train = TrainConfig(epochs=36, batch_size=2, lr=1e-4, lr_drop=28, lr_multipliers={"backbone": 0.1},
                        clip_max_norm=1.0)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)
