"""The data contract shared by every detector family.

* ``Target``: the annotations of one image, in that image's *current* pixel frame
  (after any resize/crop), boxes absolute xyxy.
* ``Batch``: normalized, padded images plus each image's valid size.
* ``Detections``: what ``model.predict`` returns for one image, boxes in ORIGINAL pixels.
* ``ClassInfo``: label index -> (dataset category id, name), saved with every model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Target:
    """Annotations of one image.

    boxes:  [N, 4] float xyxy in the image's current pixel frame.
    labels: [N] int64, contiguous 0..C-1.
    iscrowd: [N] bool.
    masks:  optional [N, H, W] bool, same frame as ``size``.
    size:   (h, w) of the image as it is now; ``orig_size``: (h, w) as read from disk.
    """

    boxes: Tensor
    labels: Tensor
    image_id: int = -1
    orig_size: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (0, 0)
    iscrowd: Tensor | None = None
    masks: Tensor | None = None

    def __post_init__(self) -> None:
        if self.iscrowd is None:
            self.iscrowd = torch.zeros(len(self.labels), dtype=torch.bool, device=self.labels.device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "Target":
        masks = self.masks.to(device) if self.masks is not None else None
        return replace(self, boxes=self.boxes.to(device), labels=self.labels.to(device),
                       iscrowd=self.iscrowd.to(device), masks=masks)

    def select(self, keep: Tensor) -> "Target":
        """Keep the objects indexed (bool mask or indices) by ``keep``."""
        masks = self.masks[keep] if self.masks is not None else None
        return replace(self, boxes=self.boxes[keep], labels=self.labels[keep],
                       iscrowd=self.iscrowd[keep], masks=masks)

    def non_crowd(self) -> "Target":
        return self.select(~self.iscrowd)


@dataclass
class Batch:
    """images: [B, 3, H, W] normalized, zero padded at bottom/right; sizes: [B, 2] valid (h, w)."""

    images: Tensor
    sizes: Tensor
    targets: list[Target] | None = None

    def to(self, device: torch.device | str) -> "Batch":
        targets = [t.to(device) for t in self.targets] if self.targets is not None else None
        return Batch(self.images.to(device, non_blocking=True), self.sizes.to(device), targets)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def padding_mask(sizes: Tensor, height: int, width: int) -> Tensor:
    """[B, H, W] bool, True on padding, from the valid (h, w) of each image."""
    rows = torch.arange(height, device=sizes.device)
    cols = torch.arange(width, device=sizes.device)
    outside_h = rows[None, :, None] >= sizes[:, 0, None, None]
    outside_w = cols[None, None, :] >= sizes[:, 1, None, None]
    return outside_h | outside_w


@dataclass
class Detections:
    """Detections of one image. boxes [K, 4] xyxy in ORIGINAL pixels, scores [K], labels [K]
    (contiguous label indices; ``ClassInfo`` maps them to category ids and names),
    optional masks [K, H, W] bool."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> "Detections":
        masks = self.masks.to(device) if self.masks is not None else None
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device), masks)


@dataclass
class ClassInfo:
    """Label index -> dataset category id and name. ``category_ids[i]`` is the id written to
    COCO results for label ``i``. Official DETR checkpoints use 91 slots indexed by COCO id:
    their ClassInfo has ``category_ids == list(range(91))`` and names '' for unused slots."""

    category_ids: list[int]
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [str(c) for c in self.category_ids]
        if len(self.names) != len(self.category_ids):
            raise ValueError(f"ClassInfo: {len(self.names)} names for {len(self.category_ids)} category ids")

    @classmethod
    def anonymous(cls, num_classes: int) -> "ClassInfo":
        return cls(list(range(num_classes)), [f"class_{i}" for i in range(num_classes)])

    def __len__(self) -> int:
        return len(self.category_ids)

    def to_dict(self) -> dict:
        return {"category_ids": list(self.category_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassInfo":
        return cls(list(d["category_ids"]), list(d["names"]))
