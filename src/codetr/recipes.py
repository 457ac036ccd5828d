"""Training recipes: the ``RunConfig`` (data augmentation, schedule) each zoo model trains with by
default; ``codetr train NAME`` starts from ``recipe(NAME)``. Preprocessing (normalisation, eval
size, square input) is the model's ``InputSpec`` (``codetr.zoo``), not part of a recipe. The
measurements behind each choice are in benchmarks/RESULTS.md.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .config import DataConfig, RunConfig, TrainConfig
from .zoo import list_models


def recipe(name: str) -> RunConfig:
    """The default ``RunConfig`` of zoo model ``name``."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return RECIPES[name](name)


# the backbone weights full-size recipes start from (model_args.backbone.pretrained): the official
# configs' torchvision://resnet50 (DETRs, mmdet, Co-DETR R50; YOLACT's resnet*_reducedfc.pth are
# the same weights) and Co-DINO's ImageNet-22k Swin-L (swin_large_patch4_window12_384_22k.pth)
TORCHVISION_IMAGENET = "IMAGENET1K_V1"
SWIN_L_IMAGENET_22K = "timm:swin_large_patch4_window12_384.ms_in22k"


def starting_from(weights: str, make: Callable[[str], RunConfig]) -> Callable[[str], RunConfig]:
    """Recipe ``make`` with the backbone starting from ``weights`` (``BackboneConfig.pretrained``)."""
    def with_weights(name: str) -> RunConfig:
        run = make(name)
        backbone = {**run.model_args.get("backbone", {}), "pretrained": weights}
        return replace(run, model_args={**run.model_args, "backbone": backbone})
    return with_weights


def official_detr(name: str) -> RunConfig:
    """Official Deformable DETR schedule: 50 epochs, LR drop at 40, batch 2 per GPU."""
    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(), train=TrainConfig())


def official_dino(name: str) -> RunConfig:
    """Official DINO 12-epoch schedule: LR 1e-4 (backbone x0.1), drop at epoch 11, batch 2 per GPU."""
    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(),
                     train=TrainConfig(epochs=12, lr=1e-4, lr_drop=11))


def tiny_detr(name: str, epochs: int, lr_drop: int) -> RunConfig:
    """Tuned on this project's 2-core CPU for ``codetr demo``: 2 single-thread DDP processes,
    so the batch is 2 x ``batch_size`` (trainable BatchNorm wants >= 4 images per process);
    ~96-128 px images with flip + scale jitter only (the crop branch costs more than it gives
    at this budget), evaluated at the top training scale (the model's InputSpec, 128 px) as the
    official recipes do; a trainable backbone at the full LR (no pretrained weights to protect);
    LR 1e-3 (2e-3 stalled, 4e-4 learned slower). bfloat16 autocast where the CPU has bf16 units
    (``amp="auto"``), NHWC convolutions and DDP without per-step buffer broadcasts, gradients
    all-reduced in bf16: many more epochs fit than in float32; without bf16 units a recipe takes
    ~1.4x longer. A dino_tiny step costs ~1.3x a deformable_detr_tiny one (denoising queries),
    so dino_tiny trains 15 epochs (drop at 12) and deformable_detr_tiny 18 (drop at 15), each
    within the demo's 15 minutes on a slow hour."""
    data = DataConfig(train_scales=[96, 112, 128], max_size=170, crop=False, num_workers=0)
    train = TrainConfig(epochs=epochs, batch_size=4, procs=2, lr=1e-3, lr_drop=lr_drop, warmup_iters=50,
                        lr_multipliers={"sampling_offsets": 0.1, "reference_points": 0.1}, amp="auto",
                        channels_last=True, eval_every=2, checkpoint_every_iters=500, log_every=25)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)


def official_yolact(name: str) -> RunConfig:
    """Official YOLACT schedule (SGD 1e-3, 800k iterations of batch 8) approximated with the
    engine's AdamW: squares of the model's input size with masks, SSD augmentation + flip."""
    train = TrainConfig(epochs=55, batch_size=8, lr=1e-4, weight_decay=5e-4, lr_multipliers={}, clip_max_norm=0,
                        lr_drop=45, warmup_iters=500)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(masks=True), train=train)


def tiny_yolact(name: str) -> RunConfig:
    """For ``codetr train yolact_tiny`` on 2 CPU cores (synthetic shapes, ~12 min): 128 px
    squares (the model's input), flip only (the SSD crop / zoom out cost more than they give at
    this budget), one 2-thread process with batch 8 (faster than 2 single-thread DDP processes
    x 4, and BatchNorm sees all 8), AdamW LR 3e-3 with a 100-step warmup, 60 epochs, LR drop
    x0.1 at 52 (it plateaus at LR 3e-3 and the drop adds ~0.04 mask AP50), with bfloat16
    autocast where the CPU has bf16 units and NHWC convolutions. A linear decay of the LR over
    the run learned less than a constant LR with a late drop."""
    train = TrainConfig(epochs=60, batch_size=8, procs=1, lr=3e-3, weight_decay=1e-4, lr_multipliers={},
                        clip_max_norm=0, lr_drop=52, warmup_iters=100, amp="auto", channels_last=True, eval_every=10,
                        checkpoint_every_iters=500, log_every=25)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(masks=True, crop=False, num_workers=0),
                     train=train)


def tiny_dense(name: str) -> RunConfig:
    """``defcn_tiny`` / ``fcos_tiny`` on the synthetic shapes (``codetr data synth``): ~128 px
    images with flip + scale jitter, evaluated at 144 px (the model's InputSpec: the top
    training scale), AdamW on every parameter at one LR (no pretrained weights). Tuned on
    defcn_tiny: batch 4 beat batch 8 per image seen, LR 1e-3 beat 2e-3 and 4e-3, P3-P5 beat
    P3-P7, an EMA of the weights lagged behind. One 2-thread process with bfloat16 autocast
    (where the CPU has bf16 units) and NHWC convolutions steps faster than 2 single-thread DDP
    processes. 33 epochs with the drop at 27 fit the 15-minute budget on a slow hour (36 came
    too close to it)."""
    data = DataConfig(train_scales=[112, 128, 144], max_size=192, crop=False, num_workers=0)
    train = TrainConfig(epochs=33, batch_size=4, procs=1, lr=1e-3, lr_drop=27, warmup_iters=100, lr_multipliers={},
                        clip_max_norm=1.0, amp="auto", channels_last=True, eval_every=11, checkpoint_every_iters=500,
                        log_every=25)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)


def official_defcn(name: str) -> RunConfig:
    """The official 3x multi-scale schedule in epochs (270k iterations at batch 16 = 36 epochs,
    first LR drop at 28), with AdamW; backbone at 0.1x LR. No default backbone weights: the
    official start, MSRA R-50 (caffe, stride in the 1x1), is not torchvision's; give a file of it
    in torchvision names (``model_args.backbone.pretrained=FILE``) or start from torchvision's
    (``model_args.backbone.stride_in_1x1=false model_args.backbone.pretrained=IMAGENET1K_V1``)."""
    data = DataConfig(train_scales=[640, 672, 704, 736, 768, 800], max_size=1333, crop=False)
    train = TrainConfig(epochs=36, batch_size=2, lr=1e-4, lr_drop=28, lr_multipliers={"backbone": 0.1},
                        clip_max_norm=1.0)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)


def official_mmdet_1x(name: str) -> RunConfig:
    """mmdet's 1x schedule, shared by ``faster_rcnn_r50_fpn_1x_coco`` and ``atss_r50_fpn_1x_coco``
    (SGD LR 0.02 for Faster R-CNN, 0.01 for ATSS, at batch 16, momentum 0.9, weight decay 1e-4,
    500-iteration warmup, LR x0.1 at epochs 8 and 11, 1333 x 800 + flip, no gradient clipping)
    with the engine's AdamW, which has no SGD: LR 1e-4 with the backbone at 0.1x as the other
    official recipes, one drop at epoch 8 (the engine's step schedule drops once). NHWC
    convolutions (``channels_last``): faster on CPU and with tensor cores."""
    data = DataConfig(train_scales=[800], max_size=1333, crop=False)
    train = TrainConfig(epochs=12, batch_size=2, lr=1e-4, weight_decay=1e-4, lr_drop=8, warmup_iters=500,
                        lr_multipliers={"backbone": 0.1}, clip_max_norm=0, channels_last=True)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=data, train=train)


def tiny_rcnn(name: str) -> RunConfig:
    """``faster_rcnn_tiny``: ``tiny_dense``'s data and optimiser, not tuned for this model yet, over
    fewer epochs: a step took 0.23 s (batch 4, 112-144 px, bfloat16, 2 cores, quiet machine), so
    ``tiny_dense``'s 33 epochs of a 1000-image set would take ~30 minutes; 16 epochs with the drop
    at 13 aim at the same 15. A 3-epoch smoke run on 300 synthetic images reached AP50 0.18."""
    run = tiny_dense(name)
    return replace(run, train=replace(run.train, epochs=16, lr_drop=13, eval_every=8))


def official_co_detr(name: str, epochs: int = 12, lr_drop: int = 11, batch_size: int = 2,
                     lr_multipliers: dict[str, float] | None = None) -> RunConfig:
    """Official Co-DETR (``co_dino_5scale_r50_1x_coco.py``): AdamW 2e-4, weight decay 1e-4,
    gradient clipping 0.1, 12 epochs with the drop at 11, 2 images per GPU (16 on 8 GPUs), DETR
    augmentation (flip, 480-800 multi-scale or the 400-600 crop branch); LR x0.1 for the
    backbone (``lr_multipliers``; Co-Deformable-DETR also sampling offsets and reference points)."""
    multipliers = {"backbone": 0.1} if lr_multipliers is None else lr_multipliers
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=2e-4, weight_decay=1e-4, lr_drop=lr_drop,
                        lr_multipliers=multipliers, clip_max_norm=0.1)
    return RunConfig(model=name, out_dir=f"runs/{name}", data=DataConfig(), train=train)


def official_co_detr_lsj(name: str, batch_size: int = 2) -> RunConfig:
    """The official 3x LSJ schedules (``co_dino_5scale_lsj_*_3x_coco.py``): 36 epochs, drop at 30;
    Swin-L 1 image per GPU. codetr has no large-scale jitter + copy-paste pipeline: this trains
    with the DETR augmentation of ``official_co_detr`` (the model evaluates as LSJ: 1024 / 1280 squares)."""
    return official_co_detr(name, epochs=36, lr_drop=30, batch_size=batch_size)


# zoo name -> its recipe
RECIPES: dict[str, Callable[[str], RunConfig]] = {
    "deformable_detr_r50": starting_from(TORCHVISION_IMAGENET, official_detr),
    "deformable_detr_r50_box_refine": starting_from(TORCHVISION_IMAGENET, official_detr),
    "deformable_detr_r50_two_stage": starting_from(TORCHVISION_IMAGENET, official_detr),
    "deformable_detr_tiny": lambda name: tiny_detr(name, epochs=18, lr_drop=15),
    "dino_r50_4scale": starting_from(TORCHVISION_IMAGENET, official_dino),
    "dino_r50_5scale": starting_from(TORCHVISION_IMAGENET, official_dino),
    "dino_tiny": lambda name: tiny_detr(name, epochs=15, lr_drop=12),
    "yolact_r50_550": starting_from(TORCHVISION_IMAGENET, official_yolact),
    "yolact_r101_550": starting_from(TORCHVISION_IMAGENET, official_yolact),
    "yolact_plus_r50_550": starting_from(TORCHVISION_IMAGENET, official_yolact),
    "yolact_tiny": tiny_yolact,
    "defcn_poto_3dmf_aux_r50": official_defcn,
    "defcn_poto_r50": official_defcn,
    "fcos_r50": official_defcn,
    "defcn_tiny": tiny_dense,
    "fcos_tiny": tiny_dense,
    "faster_rcnn_r50_fpn_1x": starting_from(TORCHVISION_IMAGENET, official_mmdet_1x),
    "faster_rcnn_tiny": tiny_rcnn,
    "atss_r50_fpn_1x": starting_from(TORCHVISION_IMAGENET, official_mmdet_1x),
    "atss_tiny": tiny_dense,
    "co_deformable_detr_r50_1x": starting_from(TORCHVISION_IMAGENET, lambda name: official_co_detr(
        name, lr_multipliers={"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1})),
    "co_dino_5scale_r50_1x": starting_from(TORCHVISION_IMAGENET, official_co_detr),
    "co_dino_5scale_lsj_r50_3x": starting_from(TORCHVISION_IMAGENET, official_co_detr_lsj),
    "co_dino_5scale_swin_l_1x": starting_from(SWIN_L_IMAGENET_22K, lambda name: official_co_detr(name, batch_size=1)),
    "co_dino_5scale_swin_l_lsj_3x": starting_from(SWIN_L_IMAGENET_22K,
                                                  lambda name: official_co_detr_lsj(name, batch_size=1)),
    # a co_dino_tiny step costs ~1.15x a dino_tiny one: 13 epochs (drop at 11) took 12 minutes
    "co_dino_tiny": lambda name: tiny_detr(name, epochs=13, lr_drop=11),
}
