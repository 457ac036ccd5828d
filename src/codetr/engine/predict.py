"""``codetr predict``: detections of image files as COCO-style JSON plus drawn images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..detector import Detector, load_rgb
from ..structures import ClassInfo, Detections
from .checkpoint import atomic_open
from .evaluate import encode_masks

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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


def draw(image: torch.Tensor, det: Detections, classes: ClassInfo) -> Image.Image:
    """uint8 [3, H, W] image with boxes, '<name> <score>' labels and masks drawn."""
    if det.masks is not None and len(det):
        image = draw_segmentation_masks(image, det.masks.bool(), alpha=0.4)
    if len(det):
        labels = [f"{classes.names[int(l)]} {s:.2f}" for l, s in zip(det.labels, det.scores.tolist())]
        image = draw_bounding_boxes(image, det.boxes, labels=labels, width=2, colors="red")
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def keep_confident(det: Detections, score_threshold: float) -> Detections:
    keep = det.scores >= score_threshold
    masks = det.masks[keep] if det.masks is not None else None
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep], masks)


def predict_files(model: Detector, inputs: Iterable[str | Path], out_dir: str | Path,
                  score_threshold: float = 0.3, batch_size: int = 4) -> Path:
    """Run ``model`` on image files; write ``out_dir/predictions.json`` (one record per
    detection: file_name, category_id, category name, bbox xywh in original pixels, score, and
    ``segmentation`` as compressed COCO RLE when the model predicts masks)
    and ``out_dir/<image name>`` with the detections drawn. Returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = find_images(list(inputs))
    records = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        for path, det in zip(chunk, model.predict(chunk, batch_size=batch_size)):
            det = keep_confident(det, score_threshold)
            records += [{"file_name": path.name, "category_id": model.classes.category_ids[int(l)],
                         "category": model.classes.names[int(l)],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
                        for (x0, y0, x1, y1), l, s in zip(det.boxes.tolist(), det.labels, det.scores.tolist())]
            if det.masks is not None and len(det):
                for record, rle in zip(records[-len(det):], encode_masks(det.masks.cpu())):
                    record["segmentation"] = rle
            draw(load_rgb(path), det, model.classes).save(out_dir / f"{path.stem}.png")
    json_path = out_dir / "predictions.json"
    with atomic_open(json_path, "w") as f:
        json.dump(records, f)
    return json_path
