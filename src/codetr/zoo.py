"""Named models: a table of plain functions, each returning a built (randomly initialised) model.

    codetr.create("deformable_detr_r50_two_stage", num_classes=80)
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable

from .detector import Detector, InputSpec
from .detr.deformable_detr import DeformableDETR, DeformableDETRConfig
from .structures import ClassInfo

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


TINY_INPUT = InputSpec(min_size=112, max_size=150)


@register("deformable_detr_tiny", recipe=lambda name: _tiny_recipe(name))
def deformable_detr_tiny(classes: ClassInfo, **overrides: Any) -> DeformableDETR:
    """Two-stage + box refine on ResNet-18 with trainable BN, 128-d, for ~128 px images:
    trains from scratch on CPU (the demo, tests)."""
    base = DeformableDETRConfig(
        backbone_depth=18, backbone_norm="bn", backbone_frozen_stages=-1, hidden_dim=128, num_heads=4,
        enc_layers=2, dec_layers=3, ffn_dim=512, dropout=0.0, num_feature_levels=4, num_queries=50,
        with_box_refine=True, two_stage=True, num_select=50)
    return _deformable_detr(classes, base, replace(TINY_INPUT), overrides)


# -- recipes: the data and schedule each model trains with by default ----------------------------
def _tiny_recipe(name: str) -> "RunConfig":
    """Tuned on this project's 2-core CPU for ``codetr demo``: 2 single-thread DDP processes,
    so the batch is 2 x ``batch_size`` (trainable BatchNorm wants >= 4 images per process);
    ~96-128 px images with flip + scale jitter only (the crop branch costs more than it gives
    at this budget); a trainable backbone at the full LR (no pretrained weights to protect);
    LR 1e-3 (2e-3 stalled, 4e-4 learned slower)."""
    from .config import DataConfig, RunConfig, TrainConfig

    data = DataConfig(train_scales=[96, 112, 128], max_size=170, crop=False, eval_min_size=112,
                      eval_max_size=150, num_workers=0)
    train = TrainConfig(epochs=6, batch_size=4, lr=1e-3, lr_drop=5, warmup_iters=50,
                        lr_multipliers={"sampling_offsets": 0.1, "reference_points": 0.1},
                        eval_every=1, checkpoint_every_iters=500, log_every=25)
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
