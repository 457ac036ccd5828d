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
        """Inverse of ``to_dict``; raises a one-line ValueError on anything else (a hand-edited
        checkpoint): not a dict, a missing key, lengths that differ, non-int or repeated ids."""
        if not isinstance(d, dict) or not {"category_ids", "names"} <= set(d):
            raise ValueError(f"classes must be a dict with 'category_ids' and 'names', got {_short(d)}")
        ids, names = d["category_ids"], d["names"]
        if not isinstance(ids, (list, tuple)) or not isinstance(names, (list, tuple)):
            raise ValueError(f"classes.category_ids and classes.names must be lists, got {_short(ids)} and "
                             f"{_short(names)}")
        if len(ids) != len(names):
            raise ValueError(f"classes: {len(ids)} category_ids but {len(names)} names")
        bad_ids = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)]
        if bad_ids:
            raise ValueError(f"classes.category_ids must be ints, got {_short(bad_ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"classes.category_ids repeat {sorted({i for i in ids if ids.count(i) > 1})}")
        bad_names = [n for n in names if not isinstance(n, str)]
        if bad_names:
            raise ValueError(f"classes.names must be strings, got {_short(bad_names)}")
        return cls(list(ids), list(names))

    def mismatch(self, other: "ClassInfo", mine: str = "checkpoint", theirs: str = "dataset",
                 subset_ok: bool = False) -> str | None:
        """None when ``other`` fits ``self``, else one line naming the differing ids and names.

        Categories are matched by id; a shared id must have the same name. With ``subset_ok``
        ``other`` may lack some of ``self``'s ids (COCO evaluation of a model on a dataset with
        fewer categories: detections of the missing ids are ignored). Without it the two must
        give the same label -> id mapping: the same ids in the same order (what training and
        resuming need). ``mine`` / ``theirs`` name the two sides in the message."""
        own, their = dict(zip(self.category_ids, self.names)), dict(zip(other.category_ids, other.names))
        parts = []
        only_mine = [i for i in own if i not in their]
        only_theirs = [i for i in their if i not in own]
        renamed = [i for i in their if i in own and own[i] != their[i]]
        if only_mine and not subset_ok:
            parts.append(f"ids only in the {mine}: {_listing(only_mine, own)}")
        if only_theirs:
            parts.append(f"ids only in the {theirs}: {_listing(only_theirs, their)}")
        if renamed:
            shown = ", ".join(f"{i} {own[i]!r} vs {their[i]!r}" for i in renamed[:_SHOWN])
            more = f", ... ({len(renamed)} in all)" if len(renamed) > _SHOWN else ""
            parts.append(f"same id, different name ({mine} vs {theirs}): {shown}{more}")
        if not parts and not subset_ok and list(self.category_ids) != list(other.category_ids):
            parts.append(f"same categories in another label order: {mine} {self.category_ids[:_SHOWN]} vs "
                         f"{theirs} {other.category_ids[:_SHOWN]}")
        return "; ".join(parts) or None


_SHOWN = 8  # ids listed in a mismatch message


def _listing(ids: list[int], names: dict[int, str]) -> str:
    shown = ", ".join(f"{i} {names[i]!r}" for i in ids[:_SHOWN])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN else "")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
