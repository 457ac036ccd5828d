"""What every codetr detector shares: the three entry points of the data contract.

* ``model(images, sizes, targets)`` in train mode -> ``LossOutput(losses, logs)``: ``losses``
  are weighted scalars whose sum (``total()``) is the training loss, ``logs`` detached scalars
  that are only reported; both keep the official names (DINO's ``loss_xy`` is a log);
* ``model(images, sizes)`` in eval mode -> the family's raw outputs under the official names;
* ``model.predict(inputs)`` -> list[Detections] in original pixels.

A family implements ``forward`` and ``postprocess``; preprocessing (``InputSpec``) and the
label -> category mapping (``ClassInfo``) are data the model carries and saves.

Loss weighting, one convention for every family: a criterion returns its terms UNWEIGHTED under
the official names (``dict[str, Tensor]``) and carries ``weight_dict`` (official weights, e.g.
DETR's coefficients, DeFCN's ``reg_weight``, YOLACT's alphas); the train-mode forward returns
``LossOutput.weigh(terms, criterion.weight_dict)``: the terms it names become weighted losses,
the others logs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .backends import amp_dtype
from .config_checks import require_at_least
from .images import ImageLike, load_rgb, resized_hw
from .structures import ClassInfo, Detections


@dataclass
class InputSpec:
    """How raw RGB images become the model's input: the one source of the preprocessing that
    ``Detector.prepare`` (predict) and the data pipeline (``codetr.data.build``: train and eval)
    apply. ``mean``/``std`` act on values in the channel order ``channel_order``, in [0, 1]
    (or in [0, 255] when ``scale_255``)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    scale_255: bool = False
    min_size: int = 800      # shorter side after resize (eval)
    max_size: int = 1333     # cap on the longer side
    size_divisibility: int = 1
    square: bool = False     # every image (train, eval, predict) resized to a max_size x max_size
                             # square, bilinear without antialiasing (YOLACT's official transform)

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (one per channel), std > 0; got {list(self.mean)} "
                             f"and {list(self.std)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        require_at_least(self, {"min_size": 1, "max_size": 1, "size_divisibility": 1})

    def normalize(self, rgb: Tensor) -> Tensor:
        """Float RGB values in [0, 255], [3, H, W] -> the network's input [3, H, W]: channels in
        ``channel_order``, divided by 255 unless ``scale_255``, then (x - mean) / std."""
        x = rgb.flip(0) if self.channel_order == "BGR" else rgb
        x = x if self.scale_255 else x / 255
        return (x - x.new_tensor(self.mean).view(3, 1, 1)) / x.new_tensor(self.std).view(3, 1, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def mmdet_input_spec(min_size: int = 800, max_size: int = 1333) -> InputSpec:
    """mmdet's ``img_norm_cfg`` (Faster R-CNN, ATSS, Co-DETR): RGB in [0, 255], ImageNet mean /
    std x 255; 1333 x 800; padded to a multiple of 32."""
    return InputSpec(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB",
                     scale_255=True, min_size=min_size, max_size=max_size, size_divisibility=32)


@dataclass(frozen=True)
class ClassLayout:
    """How the entries of a class-dependent parameter along ``dim`` belong to classes: ``groups``
    blocks (one per anchor when a conv predicts several: YOLACT, ATSS), each ``leading`` rows of
    no class (YOLACT's background), ``per_class`` rows for each of ``classes`` classes (4:
    class-specific box deltas), then ``trailing`` rows of no class (mmdet's softmax background,
    DINO's spare label embedding). ``Detector.class_layers`` declares them (fine-tuning)."""

    classes: int
    per_class: int = 1
    leading: int = 0
    trailing: int = 0
    groups: int = 1
    dim: int = 0

    @classmethod
    def objectness(cls, rows: int) -> "ClassLayout":
        """A class-agnostic score in row 0 of ``rows`` (two-stage Deformable DETR's encoder head,
        trained with every label 0): no row belongs to a class."""
        return cls(classes=0, leading=1, trailing=rows - 1)

    @property
    def block(self) -> int:
        return self.leading + self.classes * self.per_class + self.trailing

    @property
    def size(self) -> int:
        """The parameter's length along ``dim``."""
        return self.groups * self.block

    def class_rows(self, label: int) -> list[int]:
        """The rows of class ``label`` in every group."""
        first = self.leading + label * self.per_class
        return [g * self.block + first + r for g in range(self.groups) for r in range(self.per_class)]

    def other_rows(self) -> tuple[list[int], list[int]]:
        """(leading rows, trailing rows) of every group."""
        tail = self.block - self.trailing
        return ([g * self.block + r for g in range(self.groups) for r in range(self.leading)],
                [g * self.block + tail + r for g in range(self.groups) for r in range(self.trailing)])


class LossOutput(NamedTuple):
    """What a detector's train-mode forward returns. ``losses``: named scalars, each already
    multiplied by its weight; the training loss is their sum (``total()``). ``logs``: detached
    scalars that are reported, never optimised (matching statistics, unweighted parts such as
    DINO's ``loss_xy``); a log may be named ``loss*``. A NamedTuple, so that DDP finds the
    tensors inside (``torch.utils._pytree`` flattens it)."""

    losses: dict[str, Tensor]
    logs: dict[str, Tensor]

    @classmethod
    def weigh(cls, terms: dict[str, Tensor], weight_dict: dict[str, float]) -> "LossOutput":
        """A criterion's unweighted ``terms`` -> the ones ``weight_dict`` names, times their
        weight, as losses, and the others, detached, as logs."""
        missing = sorted(set(weight_dict) - set(terms))
        if missing:
            raise KeyError(f"the criterion returned no {missing}, which its weight_dict weighs")
        losses = {k: v * weight_dict[k] for k, v in terms.items() if k in weight_dict}
        logs = {k: v.detach() for k, v in terms.items() if k not in weight_dict}
        return cls(losses, logs)

    def total(self) -> Tensor:
        """The training loss: the sum of the weighted losses."""
        if not self.losses:
            raise ValueError("LossOutput has no losses to sum")
        return sum(self.losses.values())


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

    def class_layers(self) -> dict[str, ClassLayout]:
        """Every class-dependent parameter (state-dict name) -> how its rows map to classes. A
        model fine-tuned on other classes re-initialises these and carries the rows of the
        classes both share (``codetr.engine.finetune``)."""
        raise NotImplementedError(f"{type(self).__name__} declares no class layers")

    def parameters_of(self, modules: dict[str, ClassLayout]) -> dict[str, ClassLayout]:
        """``modules`` (submodule name -> layout) as the layout of each of their parameters."""
        return {f"{name}.{param}": layout for name, layout in modules.items()
                for param, _ in self.get_submodule(name).named_parameters()}

    def float32_loss(self, criterion: Callable[..., dict], *inputs: Any) -> dict:
        """``criterion(*inputs)`` on float32 copies of the inputs' floating tensors, with autocast
        off: under mixed precision the network runs in bfloat16 / float16 while matching and
        losses (sums over thousands of terms, log-probabilities) stay in full precision."""
        device_type = next(self.parameters()).device.type
        with torch.autocast(device_type, enabled=False):
            return criterion(*(as_float32(x) for x in inputs))

    @torch.no_grad()
    def eval_forward(self, images: Tensor, sizes: Tensor, amp: torch.dtype | None = None) -> dict:
        """The eval-mode network outputs of a batch, whatever mode the model is in: under autocast
        to ``amp`` when given (outputs cast back to float32, for the post-processing), with the
        images in NHWC on CPU, where oneDNN's convolutions are faster (~20% for an R50-FPN)."""
        was_training = self.training
        self.eval()
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
                outputs = self(images, sizes)
        finally:
            self.train(was_training)
        return as_float32(outputs) if amp is not None else outputs

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: Tensor, orig_sizes: Sequence[tuple[int, int]],
               amp: torch.dtype | None = None) -> list[Detections]:
        """``eval_forward`` + postprocess, boxes rescaled from ``sizes`` to ``orig_sizes``."""
        dets = self.postprocess(self.eval_forward(images, sizes, amp), sizes)
        return [rescale(d, tuple(s.tolist()), o) for d, s, o in zip(dets, sizes, orig_sizes)]

    def prepare(self, images: Sequence[ImageLike]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Raw images -> (normalized padded batch [B, 3, H, W], sizes [B, 2], original sizes),
        each image resized by ``resize_to_spec`` and normalized by ``input_spec.normalize``."""
        spec = self.input_spec
        tensors, orig = [], []
        for image in images:
            rgb = load_rgb(image).float()                                            # [3, h, w]
            orig.append((int(rgb.shape[1]), int(rgb.shape[2])))
            tensors.append(spec.normalize(resize_to_spec(rgb, spec)))
        sizes = torch.tensor([list(x.shape[-2:]) for x in tensors])
        return pad_images(tensors, spec.size_divisibility), sizes, orig

    @torch.no_grad()
    def predict(self, inputs: ImageLike | Iterable[ImageLike], batch_size: int = 4,
                amp: str = "none") -> list[Detections]:
        """Images -> Detections in original pixels (the upright frame for files), one per image.

        ``inputs`` is one image or an iterable of them (a list, tuple or generator), each:

        * a path: read by ``codetr.images.load_image`` (EXIF orientation applied, 16-bit scaled,
          alpha over white; unreadable files raise FileNotFoundError / ValueError naming them);
        * a PIL image, in any mode, taken in its own frame (no EXIF rotation);
        * a numpy array HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA), or a tensor [3, H, W], [1, H, W]
          or [H, W], of dtype uint8 (0..255), uint16 (0..65535, scaled by 1/257) or float in
          [0, 1]. Other dtypes, floats outside [0, 1], NaN / inf and empty images raise a
          ValueError naming the dtype and the observed range or the shape.

        ``amp``: the network pass in mixed precision, as ``train.amp`` (none, bf16, fp16, or
        auto: bf16 where the device has bf16 units); post-processing stays in float32.
        """
        if isinstance(inputs, (str, Path, Image.Image, np.ndarray, Tensor)):
            inputs = [inputs]
        elif inputs is None or not isinstance(inputs, Iterable):
            raise TypeError(f"predict expects an image or an iterable of images, got {type(inputs).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be a positive integer, got {batch_size!r}")
        inputs = list(inputs)
        device = next(self.parameters()).device
        dtype = amp_dtype(amp, device)
        out: list[Detections] = []
        for start in range(0, len(inputs), batch_size):
            images, sizes, orig = self.prepare(inputs[start:start + batch_size])
            out += [d.to("cpu") for d in self.detect(images.to(device), sizes.to(device), orig, dtype)]
        return out


def resize_to_spec(rgb: Tensor, spec: InputSpec) -> Tensor:
    """Float [3, h, w] -> the model's input size: a ``max_size`` square, plain bilinear as
    YOLACT's official transform, when ``spec.square``; else shorter side to ``min_size`` with the
    longer capped at ``max_size`` (``resized_hw``), antialiased bilinear."""
    h, w = rgb.shape[-2:]
    if spec.square:
        size, antialias = (spec.max_size, spec.max_size), False
    else:
        size, antialias = resized_hw(h, w, spec.min_size, spec.max_size), True
    if size == (h, w):
        return rgb
    return torch.nn.functional.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False,
                                           antialias=antialias)[0]


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
