"""What every codetr detector shares: the three entry points of the data contract.

* ``model(images, sizes, targets)`` in train mode -> dict of losses (every ``loss*`` entry is
  already weighted, so the total is their sum; other entries are logs);
* ``model(images, sizes)`` in eval mode -> the family's raw outputs under the official names;
* ``model.predict(inputs)`` -> list[Detections] in original pixels.

A family implements ``forward`` and ``postprocess``; preprocessing (``InputSpec``) and the
label -> category mapping (``ClassInfo``) are data the model carries and saves.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .images import ImageLike, load_rgb, resized_hw
from .structures import ClassInfo, Detections


@dataclass
class InputSpec:
    """How raw RGB images become the model's input. ``mean``/``std`` act on [0, 1] RGB values
    (or on [0, 255] values in the channel order ``channel_order`` when ``scale_255``)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    scale_255: bool = False
    min_size: int = 800      # shorter side after resize (eval)
    max_size: int = 1333     # cap on the longer side
    size_divisibility: int = 1
    square: bool = False     # resize every image to a max_size x max_size square (YOLACT)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


class Detector(nn.Module):
    """Base class of every detector. Subclasses set ``family`` and implement ``forward`` and
    ``postprocess``; ``config`` is the dataclass the model was built from."""

    family: str = ""

    def __init__(self, classes: ClassInfo, input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self.classes = classes
        self.input_spec = input_spec or InputSpec()
        self.config: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Raw eval outputs -> detections in the batch's pixel frame (each image's valid size)."""
        raise NotImplementedError

    def float32_loss(self, criterion: Callable[..., dict], *inputs: Any) -> dict:
        """``criterion(*inputs)`` on float32 copies of the inputs' floating tensors, with autocast
        off: under mixed precision the network runs in bfloat16 / float16 while matching and
        losses (sums over thousands of terms, log-probabilities) stay in full precision."""
        device_type = next(self.parameters()).device.type
        with torch.autocast(device_type, enabled=False):
            return criterion(*(as_float32(x) for x in inputs))

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: Tensor, orig_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Eval forward + postprocess, boxes rescaled from ``sizes`` to ``orig_sizes``."""
        was_training = self.training
        self.eval()
        try:
            dets = self.postprocess(self(images, sizes), sizes)
        finally:
            self.train(was_training)
        return [rescale(d, tuple(s.tolist()), o) for d, s, o in zip(dets, sizes, orig_sizes)]

    def prepare(self, images: Sequence[ImageLike]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Raw images -> (normalized padded batch [B, 3, H, W], sizes [B, 2], original sizes)."""
        spec = self.input_spec
        tensors, sizes, orig = [], [], []
        mean = torch.tensor(spec.mean).view(3, 1, 1)
        std = torch.tensor(spec.std).view(3, 1, 1)
        for image in images:
            rgb = load_rgb(image)
            h, w = rgb.shape[-2:]
            orig.append((int(h), int(w)))
            nh, nw = resized_hw(h, w, spec.min_size, spec.max_size)
            x = rgb.float()
            if (nh, nw) != (h, w):
                x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bilinear",
                                                    align_corners=False, antialias=True)[0]
            if spec.channel_order == "BGR":
                x = x.flip(0)
            x = x if spec.scale_255 else x / 255
            tensors.append((x - mean) / std)
            sizes.append((nh, nw))
        return pad_images(tensors, spec.size_divisibility), torch.tensor(sizes), orig

    @torch.no_grad()
    def predict(self, inputs: ImageLike | Iterable[ImageLike], batch_size: int = 4) -> list[Detections]:
        """Images -> Detections in original pixels (the upright frame for files), one per image.

        ``inputs`` is one image or an iterable of them (a list, tuple or generator), each:

        * a path: read by ``codetr.images.load_image`` (EXIF orientation applied, 16-bit scaled,
          alpha over white; unreadable files raise FileNotFoundError / ValueError naming them);
        * a PIL image, in any mode, taken in its own frame (no EXIF rotation);
        * a numpy array HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA), or a tensor [3, H, W], [1, H, W]
          or [H, W], of dtype uint8 (0..255), uint16 (0..65535, scaled by 1/257) or float in
          [0, 1]. Other dtypes, floats outside [0, 1], NaN / inf and empty images raise a
          ValueError naming the dtype and the observed range or the shape.
        """
        if isinstance(inputs, (str, Path, Image.Image, np.ndarray, Tensor)):
            inputs = [inputs]
        elif inputs is None or not isinstance(inputs, Iterable):
            raise TypeError(f"predict expects an image or an iterable of images, got {type(inputs).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be a positive integer, got {batch_size!r}")
        inputs = list(inputs)
        device = next(self.parameters()).device
        out: list[Detections] = []
        for start in range(0, len(inputs), batch_size):
            images, sizes, orig = self.prepare(inputs[start:start + batch_size])
            out += [d.to("cpu") for d in self.detect(images.to(device), sizes.to(device), orig)]
        return out


def as_float32(tree: Any) -> Any:
    """``tree`` (tensors in dicts, lists, tuples) with every half / bfloat16 tensor cast to
    float32; other leaves as they are."""
    if isinstance(tree, Tensor):
        return tree.float() if tree.dtype in (torch.float16, torch.bfloat16) else tree
    if isinstance(tree, dict):
        return {k: as_float32(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(as_float32(v) for v in tree)
    return tree


def pad_images(images: Sequence[Tensor], size_divisibility: int = 1) -> Tensor:
    """Zero-pad [3, h_i, w_i] tensors at bottom/right to one [B, 3, H, W] batch."""
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
    return batch


def rescale(det: Detections, size: tuple[int, int], orig_size: tuple[int, int]) -> Detections:
    """Boxes (and masks) from the resized frame ``size`` (h, w) to ``orig_size``. Boxes are
    not clipped, as in the official post-processing."""
    (h, w), (oh, ow) = size, orig_size
    boxes = det.boxes * det.boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
    masks = det.masks
    if masks is not None and masks.shape[-2:] != (oh, ow):
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(oh, ow),
                                                mode="bilinear", align_corners=False)[:, 0] > 0.5
    return Detections(boxes, det.scores, det.labels, masks)
