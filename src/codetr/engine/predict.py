"""``codetr predict``: detections of image files as COCO-style JSON plus drawn images.

Images are read as a viewer shows them (``codetr.images.load_image``: EXIF orientation applied,
16-bit scaled, alpha over white); boxes and drawings are in that upright frame. Unreadable files
are skipped, not fatal (``predict_files``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..detector import Detector
from ..images import IMAGE_SUFFIXES, ImageReadError, load_rgb
from ..structures import ClassInfo, Detections
from .checkpoint import atomic_open
from .evaluate import encode_masks

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.txt"


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, or found (sorted) in the folders named."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {str(item)!r}")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}")
    return found


def draw(image: torch.Tensor, det: Detections, classes: ClassInfo, scores: bool = True) -> Image.Image:
    """uint8 [3, H, W] image with boxes, '<name> <score>' labels ('<name>' without ``scores``:
    ground truth) and masks drawn."""
    if det.masks is not None and len(det):
        image = draw_segmentation_masks(image, det.masks.bool(), alpha=0.4)
    if len(det):
        labels = [f"{classes.names[int(l)]} {s:.2f}" if scores else classes.names[int(l)]
                  for l, s in zip(det.labels, det.scores.tolist())]
        image = draw_bounding_boxes(image, det.boxes, labels=labels, width=2, colors="red")
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def keep_confident(det: Detections, score_threshold: float) -> Detections:
    keep = det.scores >= score_threshold
    masks = det.masks[keep] if det.masks is not None else None
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep], masks)


def detection_records(file_name: str, det: Detections, classes: ClassInfo) -> list[dict]:
    """One image's detections -> predictions.json records (bbox xywh in original pixels, and
    ``segmentation`` as compressed COCO RLE when ``det.masks`` is set)."""
    records = [{"file_name": file_name, "category_id": classes.category_ids[int(l)],
                "category": classes.names[int(l)], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
               for (x0, y0, x1, y1), l, s in zip(det.boxes.tolist(), det.labels, det.scores.tolist())]
    if det.masks is not None and len(det):
        for record, rle in zip(records, encode_masks(det.masks.cpu())):
            record["segmentation"] = rle
    return records


def load_readable(paths: Sequence[Path], skipped: list[tuple[Path, str]]) -> list[tuple[Path, torch.Tensor]]:
    """(path, uint8 [3, H, W] upright RGB) of each file that reads; the others (gone since
    listing, corrupt, over the decompression-bomb limit) are appended to ``skipped`` with the
    reason and logged as a warning."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_rgb(path)))
        except (FileNotFoundError, ImageReadError) as e:
            logger.warning("skipping an unreadable image: %s", e)
            skipped.append((path, str(e)))
    return loaded


def predict_files(model: Detector, inputs: Iterable[str | Path], out_dir: str | Path,
                  score_threshold: float = 0.3, batch_size: int = 4) -> Path:
    """Run ``model`` on image files; write ``out_dir/predictions.json`` (a list with one
    ``detection_records`` record per detection: file_name, category_id, category name, bbox
    xywh in original upright pixels, score, segmentation for mask models) and
    ``out_dir/<image stem>.png`` with the detections drawn. Returns the JSON path.

    Files that cannot be read are skipped: a warning each, a summary line, and
    ``out_dir/skipped.txt`` with one tab-separated "path, reason" line each (removed when none is
    skipped, so it never describes an earlier run). The other images are predicted as usual."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = find_images(list(inputs))
    records: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    for start in range(0, len(paths), batch_size):
        loaded = load_readable(paths[start:start + batch_size], skipped)
        if not loaded:
            continue
        dets = model.predict([rgb for _, rgb in loaded], batch_size=batch_size)
        for (path, rgb), det in zip(loaded, dets):
            det = keep_confident(det, score_threshold)
            records += detection_records(path.name, det, model.classes)
            draw(rgb, det, model.classes).save(out_dir / f"{path.stem}.png")
    write_skipped(out_dir / SKIPPED_FILE, skipped, len(paths))
    json_path = out_dir / "predictions.json"
    with atomic_open(json_path, "w") as f:
        json.dump(records, f)
    return json_path


def write_skipped(path: Path, skipped: list[tuple[Path, str]], total: int) -> None:
    """``path`` listing the skipped files (tab-separated "path, reason" lines) plus a summary warning;
    with nothing skipped, a stale ``path`` is removed."""
    if not skipped:
        path.unlink(missing_ok=True)
        return
    logger.warning("skipped %d of %d images that could not be read: %s (listed in %s)", len(skipped), total,
                   ", ".join(p.name for p, _ in skipped), path)
    with atomic_open(path, "w") as f:
        f.writelines(f"{p}\t{reason}\n" for p, reason in skipped)
