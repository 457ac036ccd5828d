"""Datasets from a ``DataConfig``: the train split with DETR augmentation, val with eval resize."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..config import DataConfig
from .coco import CocoDetection
from .transforms import detr_train_transforms, eval_transforms, square_eval_transforms, square_train_transforms


def train_dataset(cfg: DataConfig, with_masks: bool | None = None) -> CocoDetection:
    """``with_masks`` None: ``cfg.masks``. ``cfg.square``: YOLACT's square pipeline
    (``cfg.crop`` then switches on its SSD augmentation)."""
    ann, images = cfg.split_paths("train")
    with_masks = cfg.masks if with_masks is None else with_masks
    if cfg.square:
        transforms = square_train_transforms(cfg.max_size, cfg.crop, cfg.mean, cfg.std)
        return CocoDetection(ann, images, transforms, with_masks=with_masks)
    crop = dict(crop_resize_scales=cfg.crop_scales, crop_min=cfg.crop_min_size, crop_max=cfg.crop_max_size) \
        if cfg.crop else dict(crop_resize_scales=None)
    transforms = detr_train_transforms(cfg.train_scales, cfg.max_size, mean=cfg.mean, std=cfg.std, **crop)
    return CocoDetection(ann, images, transforms, with_masks=with_masks)


def val_dataset(cfg: DataConfig, with_masks: bool = False) -> CocoDetection:
    ann, images = cfg.split_paths("val")
    transforms = square_eval_transforms(cfg.eval_max_size, cfg.mean, cfg.std) if cfg.square else \
        eval_transforms(cfg.eval_min_size, cfg.eval_max_size, cfg.mean, cfg.std)
    return CocoDetection(ann, images, transforms, with_masks=with_masks)


def check_images(dataset: CocoDetection, threads: int = 4) -> None:
    """Decode every image of ``dataset`` once: each must exist, be readable and have the size
    its json gives. Raises the first problem found (naming the file). Run before training, so a
    bad val image fails the run at the start instead of at its first evaluation; about 1 ms per
    128 px image, 10 ms per COCO image (threads: decoding releases the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(dataset.load_image, range(len(dataset))):
            pass
