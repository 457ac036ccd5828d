"""Datasets, transforms and loaders: COCO-format json + images -> ``(image, Target)`` ->
``Batch``."""
from .coco import CocoDetection, detections_to_coco, mask_to_rle
from .loader import build_loader, collate
from .synth import CATEGORY_IDS, SHAPES, write_synthetic_coco
from .transforms import (
    DetectionTransform,
    RandomShorterResize,
    RandomSizeCrop,
    detr_train_transforms,
    eval_transforms,
)

__all__ = [
    "CATEGORY_IDS",
    "SHAPES",
    "CocoDetection",
    "DetectionTransform",
    "RandomShorterResize",
    "RandomSizeCrop",
    "build_loader",
    "collate",
    "detections_to_coco",
    "detr_train_transforms",
    "eval_transforms",
    "mask_to_rle",
    "write_synthetic_coco",
]
