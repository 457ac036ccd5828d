"""Datasets from a ``DataConfig`` and the model's ``InputSpec``: the train split with the
configured augmentation, val with the model's eval resize. Normalisation, channel order, eval
size and square resizing all come from the ``InputSpec``, so what the network sees in training
and evaluation is what ``model.predict`` gives it."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..config import DataConfig
from ..detector import Detector, InputSpec
from ..structures import ClassInfo
from .coco import CocoDetection
from .transforms import DetectionTransform, detr_train_transforms, eval_transforms, square_train_transforms


def train_transforms(cfg: DataConfig, spec: InputSpec) -> DetectionTransform:
    """``spec.square``: YOLACT's square pipeline at ``spec.max_size`` (``cfg.crop`` then
    switches on its SSD augmentation); otherwise DETR's (``cfg.train_scales``, ``cfg.max_size``,
    the crop branch when ``cfg.crop``). Normalised by ``spec``."""
    if spec.square:
        return square_train_transforms(spec, cfg.crop)
    crop = dict(crop_resize_scales=cfg.crop_scales, crop_min=cfg.crop_min_size, crop_max=cfg.crop_max_size) \
        if cfg.crop else dict(crop_resize_scales=None)
    return detr_train_transforms(spec, cfg.train_scales, cfg.max_size, **crop)


def train_dataset(cfg: DataConfig, spec: InputSpec, with_masks: bool | None = None) -> CocoDetection:
    """The train split through ``train_transforms``; ``with_masks`` None: ``cfg.masks``."""
    with_masks = cfg.masks if with_masks is None else with_masks
    return CocoDetection(*cfg.split_paths("train"), train_transforms(cfg, spec), with_masks=with_masks)


def val_dataset(cfg: DataConfig, spec: InputSpec, with_masks: bool = False) -> CocoDetection:
    """The val split as the model sees it at eval (``eval_transforms(spec)``)."""
    return CocoDetection(*cfg.split_paths("val"), eval_transforms(spec), with_masks=with_masks)


def model_and_datasets(cfg: DataConfig, build: Callable[[ClassInfo], Detector]
                       ) -> tuple[Detector, CocoDetection, CocoDetection]:
    """``build(classes)`` for the train split's classes, and the train / val datasets with the
    transforms of the built model's ``InputSpec``. Each annotation file is read once (the model
    needs the classes, the transforms need the model)."""
    train = CocoDetection(*cfg.split_paths("train"), with_masks=cfg.masks)
    val = CocoDetection(*cfg.split_paths("val"))
    if val.classes.category_ids != train.classes.category_ids:
        raise ValueError(f"train and val category ids differ: {train.classes.category_ids} vs "
                         f"{val.classes.category_ids}")
    model = build(train.classes)
    train.transforms = train_transforms(cfg, model.input_spec)
    val.transforms = eval_transforms(model.input_spec)
    return model, train, val


def check_images(dataset: CocoDetection, threads: int = 4) -> None:
    """Decode every image of ``dataset`` once: each must exist, be readable and have the size
    its json gives. Raises the first problem found (naming the file). Run before training, so a
    bad val image fails the run at the start instead of at its first evaluation; about 1 ms per
    128 px image, 10 ms per COCO image (threads: decoding releases the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(dataset.load_image, range(len(dataset))):
            pass
