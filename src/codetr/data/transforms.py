"""Detection transforms: image, boxes and masks move together.

Built on ``torchvision.transforms.v2``: the image is a ``tv_tensors.Image``, boxes are
``tv_tensors.BoundingBoxes`` (XYXY, ``canvas_size`` = image (h, w)) and masks a
``tv_tensors.Mask``; each random transform draws its parameters once per call in
``make_params`` and applies them to all three in ``transform``.

A ``DetectionTransform`` is called as ``transform(image, target) -> (image, target)``:
``image`` a PIL image or a [3, H, W] tensor of RGB values in [0, 255] (uint8 or float), the
result the model's input [3, H', W'] (``InputSpec.normalize``: channel order, scale, mean and
std), and the ``Target`` with boxes / labels / iscrowd / masks updated and ``size = (H', W')``
(``image_id`` and ``orig_size`` unchanged). Objects whose box becomes empty (w or h <= 0, e.g.
cropped away) are dropped.

Every pipeline is built from the model's ``InputSpec``. Resizes follow ``codetr.images.resized_hw``
(DETR's rule) or, for a square spec, ``SquareResize``; the eval pipeline resizes float values as
``Detector.prepare`` does, so eval inputs equal predict inputs. Every side stays >= 1 px, also
for extreme aspect ratios (a 340:1 image).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..detector import InputSpec
from ..images import resized_hw, to_rgb8
from ..structures import Target

# DETR's official training augmentation (main.py / datasets/coco.py defaults).
DETR_SCALES = tuple(range(480, 801, 32))
DETR_MAX_SIZE = 1333
DETR_CROP_RESIZE_SCALES = (400, 500, 600)
DETR_CROP_MIN, DETR_CROP_MAX = 384, 600


def _canvas_hw(flat_inputs: list[Any]) -> tuple[int, int]:
    """(h, w) of the image in a flattened v2 sample."""
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, Image.Image)):
            h, w = F.get_size(inpt)
            return int(h), int(w)
    raise TypeError("detection transforms need a tv_tensors.Image or PIL image in the sample")


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's global generator (seeded per worker)."""
    return int(torch.randint(low, high + 1, ()))


class RandomShorterResize(v2.Transform):
    """Resize so the shorter side becomes one of ``sizes`` (drawn once per call) and the
    longer side is at most ``max_size`` (``None``: no cap), by ``resized_hw``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        super().__init__()
        if not sizes or min(sizes) < 1:
            raise ValueError(f"RandomShorterResize: sizes must be positive, got {list(sizes)}")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas_hw(flat_inputs)
        size = self.sizes[_randint(0, len(self.sizes) - 1)]
        cap = sys.maxsize if self.max_size is None else self.max_size
        return {"hw": list(resized_hw(h, w, size, cap))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Images: bilinear with antialias; boxes: scaled by (w'/w, h'/h); masks: pixel-centre
        # aligned nearest ("nearest-exact"), which keeps them within 0.5 px of the scaled boxes
        # and on the image (DETR's plain "nearest" shifts them by up to half an input pixel).
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["hw"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return self._call_kernel(F.resize, inpt, params["hw"], antialias=True)


class RandomSizeCrop(v2.Transform):
    """Crop a random window: width uniform in [min_size, min(w, max_size)], height likewise,
    position uniform. Images smaller than ``min_size`` are cropped to at most their size (so a
    1 px side stays 1 px, never 0).
    Boxes are shifted and clamped to the window (they may become empty)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop: need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas_hw(flat_inputs)
        cw = _randint(min(self.min_size, w), min(w, self.max_size))
        ch = _randint(min(self.min_size, h), min(h, self.max_size))
        return {"top": _randint(0, h - ch), "left": _randint(0, w - cw), "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class DetectionTransform:
    """(image, Target) -> (normalized float [3, H, W], Target). ``pipeline`` is the v2
    transform applied to the sample dict {"image", "boxes", "masks"}; ``spec.normalize`` and
    the removal of empty boxes follow it."""

    def __init__(self, pipeline: v2.Transform, spec: InputSpec) -> None:
        self.pipeline = pipeline
        self.spec = spec

    def __call__(self, image: Image.Image | Tensor, target: Target) -> tuple[Tensor, Target]:
        image = _as_tv_image(image)
        h, w = image.shape[-2:]
        sample: dict[str, Any] = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(target.boxes.float(), format="XYXY", canvas_size=(h, w),
                                              clamping_mode="hard"),
        }
        if target.masks is not None:
            sample["masks"] = tv_tensors.Mask(target.masks)
        sample = self.pipeline(sample)

        out = sample["image"].as_subclass(Tensor)
        x = self.spec.normalize(out.float())
        boxes = sample["boxes"].as_subclass(Tensor)
        masks = sample["masks"].as_subclass(Tensor) if target.masks is not None else None
        new = replace(target, boxes=boxes, masks=masks, size=(int(x.shape[-2]), int(x.shape[-1])))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return x, new if bool(keep.all()) else new.select(keep)

    def __repr__(self) -> str:
        return f"DetectionTransform({self.pipeline!r}, {self.spec!r})"


def _as_tv_image(image: Image.Image | Tensor) -> tv_tensors.Image:
    if isinstance(image, Image.Image):
        return tv_tensors.Image(F.pil_to_tensor(to_rgb8(image)))
    if isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return tv_tensors.Image(image)
    shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
    raise TypeError(f"expected a PIL image or a [3, H, W] tensor, got {shape}")


def detr_train_transforms(
    spec: InputSpec,
    scales: Sequence[int] = DETR_SCALES,
    max_size: int = DETR_MAX_SIZE,
    crop_resize_scales: Sequence[int] | None = DETR_CROP_RESIZE_SCALES,
    crop_min: int = DETR_CROP_MIN,
    crop_max: int = DETR_CROP_MAX,
) -> DetectionTransform:
    """DETR's training augmentation: horizontal flip (p=0.5), then with equal chance either a
    multi-scale resize (shorter side from ``scales``, longer <= ``max_size``) or resize
    (shorter side from ``crop_resize_scales``, uncapped as official) -> random-size crop
    ([crop_min, crop_max]) -> the same multi-scale resize; then empty boxes are dropped and the
    image normalized by ``spec``. ``crop_resize_scales=None`` leaves out the crop branch. Tiny config for
    64-256 px images: scales=range(96, 161, 16), max_size=213, crop_resize_scales=(100, 125,
    150), crop_min=96, crop_max=150."""
    multi_scale = RandomShorterResize(scales, max_size)
    resize: v2.Transform = multi_scale
    if crop_resize_scales:
        resize = v2.RandomChoice([
            multi_scale,
            v2.Compose([RandomShorterResize(crop_resize_scales), RandomSizeCrop(crop_min, crop_max),
                        multi_scale]),
        ])
    pipeline = v2.Compose([v2.RandomHorizontalFlip(0.5), resize])
    return DetectionTransform(pipeline, spec)


def eval_transforms(spec: InputSpec) -> DetectionTransform:
    """The model's eval input: a ``spec.max_size`` square when ``spec.square``, else the shorter
    side resized to ``spec.min_size`` with the longer side capped at ``spec.max_size``
    (``resized_hw``); resized on float values as ``Detector.prepare`` / ``Yolact.prepare`` do
    (no rounding to uint8 in between), then normalized."""
    resize = SquareResize(spec.max_size) if spec.square else RandomShorterResize([spec.min_size], spec.max_size)
    return DetectionTransform(v2.Compose([v2.ToDtype(torch.float32), resize]), spec)


class SquareResize(v2.Transform):
    """Resize to a ``size`` x ``size`` square, aspect ratio not kept (YOLACT / SSD): bilinear
    without antialiasing, as the official YOLACT transforms and ``Yolact.prepare``. Masks use
    pixel-centre aligned nearest, as ``RandomShorterResize``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"SquareResize: size must be positive, got {size}")
        self.size = int(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        hw = [self.size, self.size]
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, hw, interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return self._call_kernel(F.resize, inpt, hw, antialias=False)


def square_train_transforms(spec: InputSpec, ssd_augment: bool = True) -> DetectionTransform:
    """YOLACT's training augmentation: with ``ssd_augment`` the SSD steps of the official
    ``SSDAugmentation`` (photometric distortion, zoom out up to 4x filled with the mean,
    IoU-constrained random crop; boxes whose centre leaves the crop are dropped), then
    horizontal flip (p=0.5) and the ``spec.max_size`` square resize."""
    steps: list[v2.Transform] = []
    if ssd_augment:
        fill = {tv_tensors.Image: _mean_rgb_255(spec), "others": 0}
        steps += [v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5),
                  v2.RandomIoUCrop()]
    steps += [v2.RandomHorizontalFlip(0.5), SquareResize(spec.max_size)]
    return DetectionTransform(v2.Compose(steps), spec)


def _mean_rgb_255(spec: InputSpec) -> tuple[int, int, int]:
    """``spec.mean`` as a uint8 RGB colour: the pixel that normalizes to zero."""
    mean = [m if spec.scale_255 else 255 * m for m in spec.mean]
    r, g, b = (round(m) for m in (mean[::-1] if spec.channel_order == "BGR" else mean))
    return r, g, b
