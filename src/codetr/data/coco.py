"""COCO-format detection datasets (annotation json + image folder).

``CocoDetection`` validates the json once at construction (clear errors naming the file and
the bad value), maps category ids to contiguous labels 0..C-1 in sorted id order
(``self.classes``), and yields ``(image, Target)`` pairs. ``self.coco`` is the pycocotools
ground truth used by evaluation; ``detections_to_coco`` writes predictions back in COCO
result format.

Choices (DETR's ``ConvertCocoPolysToMask`` does the same unless stated):
* image and annotation ids must be unique integers (pycocotools indexes by id: a repeated
  annotation id silently drops annotations, a string id fails deep inside evaluation).
* a box with a NaN or infinite coordinate is refused (corrupt data, not a degenerate box).
* boxes are clamped to the image; those with (finite) w or h <= 0 after clamping are *skipped*:
  dropped from training targets, counted in ``num_skipped_degenerate`` and logged once.
  ``self.coco`` keeps them, so evaluation sees the json as written.
* missing ``iscrowd`` means 0 and missing ``area`` means the box area (pycocotools' evaluation
  needs both), filled into ``self.coco``.
* images are checked (exists, decodes, size equals the json's) when loaded, not at
  construction, so building a 100k-image dataset stays cheap.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..images import ImageReadError, load_image
from ..structures import ClassInfo, Detections, Target

logger = logging.getLogger(__name__)

Transform = Callable[[Any, Target], tuple[Any, Target]]

_REQUIRED = {
    "image": ("id", "file_name", "height", "width"),
    "annotation": ("id", "image_id", "category_id", "bbox"),
    "category": ("id", "name"),
}


@dataclass
class _ImageRecord:
    """Validated annotations of one image: boxes [N, 4] xyxy clamped, labels [N],
    iscrowd [N], and the annotation dicts (for their segmentation)."""

    info: dict
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    anns: list[dict]


class CocoDetection(Dataset):
    """COCO detection (and instance masks with ``with_masks``) as ``(image, Target)``.

    Without ``transforms`` the image is the upright RGB ``PIL.Image`` (``codetr.images``); with them, whatever
    the transform returns (``codetr.data.transforms``: a normalized float tensor)."""

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transforms: Transform | None = None,
                 with_masks: bool = False) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.with_masks = with_masks
        data = read_json(self.ann_file)
        check_fields(data, self.ann_file, with_masks)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        ids = [c["id"] for c in cats]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"{self.ann_file}: duplicate category ids {dup}")
        self.classes = ClassInfo(ids, [str(c["name"]) for c in cats])
        self.label_of = {cid: label for label, cid in enumerate(ids)}

        self._records, self.num_skipped_degenerate = self._index(data)
        self.ids = sorted(self._records)
        if self.num_skipped_degenerate:
            logger.warning("%s: skipped %d annotations whose box has w or h <= 0 (after clamping to the image)",
                           self.ann_file, self.num_skipped_degenerate)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()

    def _index(self, data: dict) -> tuple[dict[int, _ImageRecord], int]:
        """Validated records by image id, and how many degenerate boxes were skipped."""
        images = self._images_by_id(data["images"])
        per_image: dict[int, list[dict]] = {i: [] for i in images}
        for ann in data["annotations"]:
            self._check_annotation(ann, images)
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
            per_image[ann["image_id"]].append(ann)
        dup = repeated([ann["id"] for ann in data["annotations"]])
        if dup:  # pycocotools would keep one annotation per id: a wrong AP
            raise ValueError(f"{self.ann_file}: duplicate annotation ids {dup[:10]}"
                             + (f" ... ({len(dup)} in all)" if len(dup) > 10 else ""))
        records = {image_id: self._record(images[image_id], anns) for image_id, anns in per_image.items()}
        skipped = sum(len(per_image[i]) - len(rec.anns) for i, rec in records.items())
        return records, skipped

    def _images_by_id(self, images: list[dict]) -> dict[int, dict]:
        """Refuses non-integer and repeated image ids (pycocotools needs unique int ids)."""
        by_id: dict[int, dict] = {}
        for img in images:
            if not is_int(img["id"]):
                raise ValueError(f"{self.ann_file}: image id {img['id']!r} (file_name {img['file_name']!r}) "
                                 "is not an integer")
            if img["id"] in by_id:
                raise ValueError(f"{self.ann_file}: duplicate image id {img['id']!r}")
            by_id[img["id"]] = img
        return by_id

    def _check_annotation(self, ann: dict, images: dict[int, dict]) -> None:
        """One line naming the file, the annotation id and the bad value (``annotation_problem``)."""
        problem = annotation_problem(ann, self.label_of, images)
        if problem is not None:
            raise ValueError(f"{self.ann_file}: annotation id {ann['id']!r} {problem[1]}")

    def _record(self, info: dict, anns: list[dict]) -> _ImageRecord:
        """Boxes xywh -> xyxy clamped to the image; those with w or h <= 0 after clamping are skipped."""
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, info["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, info["height"])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        kept = [a for a, k in zip(anns, keep) if k]
        return _ImageRecord(
            info=info,
            boxes=boxes[keep].astype(np.float32),
            labels=np.array([self.label_of[a["category_id"]] for a in kept], dtype=np.int64),
            iscrowd=np.array([bool(a["iscrowd"]) for a in kept], dtype=bool),
            anns=kept,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        rec = self._records[self.ids[index]]
        h, w = int(rec.info["height"]), int(rec.info["width"])
        image = self._load_image(rec.info)
        masks = None
        if self.with_masks:
            masks = np.zeros((len(rec.anns), h, w), dtype=bool)
            for i, ann in enumerate(rec.anns):
                masks[i] = _decode_segmentation(ann["segmentation"], h, w, f"{self.ann_file}: annotation id {ann['id']!r}")
            masks = torch.from_numpy(masks)
        target = Target(
            boxes=torch.from_numpy(rec.boxes.copy()),
            labels=torch.from_numpy(rec.labels.copy()),
            image_id=int(rec.info["id"]),
            orig_size=(h, w),
            size=(h, w),
            iscrowd=torch.from_numpy(rec.iscrowd.copy()),
            masks=masks,
        )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def load_image(self, index: int) -> Image.Image:
        """The ``index``-th image, checked (exists, decodes, size as in the json), untransformed."""
        return self._load_image(self._records[self.ids[index]].info)

    def _load_image(self, info: dict) -> Image.Image:
        return load_annotated_image(self.image_dir, info, self.ann_file)


def load_annotated_image(image_dir: Path, info: dict, ann_file: Path) -> Image.Image:
    """The image of json entry ``info`` as a viewer shows it (``codetr.images.load_image``: EXIF
    orientation applied, 16-bit scaled, alpha over white), its upright size checked against the
    json. FileNotFoundError when missing, ValueError when corrupt or of another size."""
    path = Path(image_dir) / str(info["file_name"])
    where = f"image id {info['id']!r} in {ann_file}"
    try:
        image = load_image(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image file {str(path)!r} not found ({where})") from e
    except ImageReadError as e:
        raise ValueError(f"{e} ({where})") from e
    (w, h), (jw, jh) = image.size, (info["width"], info["height"])
    if (w, h) != (jw, jh):
        hint = "; w and h swapped: json sizes must be those after EXIF orientation" if (h, w) == (jw, jh) else ""
        raise ValueError(f"image {str(path)!r} is {w}x{h} (w x h, upright) but {jw}x{jh} in {ann_file} "
                         f"(image id {info['id']!r}){hint}")
    return image


def annotation_problem(ann: dict, category_ids: Collection[int], images: dict[int, dict]) -> tuple[str, str] | None:
    """The first problem of annotation ``ann`` as (kind, detail), or None: a non-integer id,
    a category or image not in the json, a bbox that is not 4 finite numbers. ``category_ids``
    and ``images`` (by id) are the json's; a dict or set makes the look-up O(1)."""
    if not is_int(ann["id"]):
        return "non-integer annotation id", f"(image_id {ann['image_id']!r}) is not an integer"
    if isinstance(ann["category_id"], (list, dict)) or ann["category_id"] not in category_ids:
        return "unknown category id", (f"has category_id {ann['category_id']!r}, which is not in 'categories' "
                                       f"(known ids: {sorted(category_ids)})")
    if isinstance(ann["image_id"], (list, dict)) or ann["image_id"] not in images:
        return "unknown image id", f"has image_id {ann['image_id']!r}, which is not in 'images'"
    bbox = ann["bbox"]
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        return "malformed bbox", f"has bbox {bbox!r}; expected 4 numbers [x, y, w, h]"
    if not np.isfinite(np.asarray(bbox, dtype=np.float64)).all():
        return "non-finite bbox", f"has bbox {bbox!r} with a NaN or infinite coordinate (corrupt data)"
    return None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def repeated(values: list[int]) -> list[int]:
    """The values that occur more than once, sorted."""
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(v for v, n in counts.items() if n > 1)


def read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"cannot read annotation file {str(path)!r}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed json: {e.msg} at line {e.lineno} column {e.colno} "
                         f"(char {e.pos})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a json object at the top, got {type(data).__name__}")
    return data


def check_fields(data: dict, path: Path, with_masks: bool) -> None:
    """Raise naming the file, the entry and the missing field."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: required top-level field {key!r} is missing or not a list")
    required_ann = _REQUIRED["annotation"] + (("segmentation",) if with_masks else ())
    for key, kind, fields in (("images", "image", _REQUIRED["image"]),
                              ("annotations", "annotation", required_ann),
                              ("categories", "category", _REQUIRED["category"])):
        for pos, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: {key}[{pos}] is {type(entry).__name__}, expected an object")
            missing = [f for f in fields if f not in entry]
            if missing:
                raise ValueError(f"{path}: {key}[{pos}] (id {entry.get('id')!r}) lacks required "
                                 f"{kind} field(s) {missing}")


def _decode_segmentation(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    """Polygons, uncompressed RLE (counts list) or compressed RLE (counts str/bytes) ->
    [h, w] bool."""
    try:
        if isinstance(seg, list):
            if not seg:
                return np.zeros((h, w), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(s) for s in seg["size"]] != [h, w]:
                raise ValueError(f"RLE size {seg['size']} differs from the image's [h, w] = {[h, w]}")
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        else:
            raise ValueError("expected polygons (list) or RLE ({'size', 'counts'})")
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise ValueError(f"{where}: cannot decode segmentation: {e}") from e


def mask_to_rle(mask: Tensor | np.ndarray) -> dict:
    """[H, W] bool -> compressed COCO RLE with ``counts`` as str (json-serializable)."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(m)
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detections_to_coco(image_id: int, det: Detections, classes: ClassInfo) -> list[dict]:
    """One image's detections (boxes xyxy in original pixels) -> COCO result dicts
    (bbox xywh, ``category_id = classes.category_ids[label]``, score, and ``segmentation``
    as RLE when ``det.masks`` is set)."""
    boxes = det.boxes.detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = det.scores.detach().float().cpu().tolist()
    labels = det.labels.detach().cpu().tolist()
    results = []
    for k, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        r = {"image_id": int(image_id), "category_id": int(classes.category_ids[label]),
             "bbox": [float(v) for v in box], "score": float(score)}
        if det.masks is not None:
            r["segmentation"] = mask_to_rle(det.masks[k].cpu())
        results.append(r)
    return results
