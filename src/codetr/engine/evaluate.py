"""COCO evaluation: detections -> COCO results json -> pycocotools COCOeval.

Every rank detects its share of the loader; results are gathered to rank 0, which scores them
and broadcasts the metrics, so every rank returns the same dict.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from .. import distributed as du
from ..structures import ClassInfo, Detections
from .checkpoint import atomic_open

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate(model: torch.nn.Module, loader: Iterable, coco_gt: Any, classes: ClassInfo,
             results_path: str | Path | None = None, progress: bool = False) -> dict[str, float]:
    """Box (and, when detections carry masks, mask) AP of ``model`` on ``loader``.

    Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` plus ``"mask_AP"``... for masks;
    all zeros when there is no detection at all. ``results_path``: also write the COCO results.
    """
    results, image_ids = collect_results(model, loader, classes, progress)
    metrics: dict[str, float] = {}
    if du.is_main():
        if results_path is not None:
            write_results_json(results_path, results)
        has_masks = any("segmentation" in r for r in results)
        metrics = score_results(coco_gt, results, image_ids, "bbox")
        if has_masks:
            segm = score_results(coco_gt, results, image_ids, "segm")
            metrics.update({f"mask_{k}": v for k, v in segm.items()})
    return du.broadcast_object(metrics)


@torch.no_grad()
def collect_results(model: torch.nn.Module, loader: Iterable, classes: ClassInfo,
                    progress: bool = False) -> tuple[list[dict], list[int]]:
    """COCO results of every rank, deduplicated by image id (a distributed sampler pads with
    repeats), and the evaluated image ids. Complete on rank 0 (and on every rank)."""
    model = getattr(model, "module", model)  # DDP
    device = next(model.parameters()).device
    per_image: dict[int, list[dict]] = {}
    for batch in tqdm(loader, desc="eval", disable=not (progress and du.is_main())):
        batch = batch.to(device)
        orig_sizes = [t.orig_size for t in batch.targets]
        for det, target in zip(model.detect(batch.images, batch.sizes, orig_sizes), batch.targets):
            per_image[int(target.image_id)] = to_coco_results(det.to("cpu"), target.image_id, classes)
    merged: dict[int, list[dict]] = {}
    for part in du.all_gather_object(per_image):
        merged.update(part)
    image_ids = sorted(merged)
    return [r for i in image_ids for r in merged[i]], image_ids


def to_coco_results(det: Detections, image_id: int, classes: ClassInfo) -> list[dict]:
    """One image's detections -> COCO result dicts (xywh boxes, dataset category ids, RLE masks)."""
    boxes = det.boxes.float().clone()
    boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
    category_ids = [classes.category_ids[i] for i in det.labels.tolist()]
    out = [{"image_id": int(image_id), "category_id": int(c), "bbox": [round(v, 3) for v in b],
            "score": round(float(s), 5)}
           for b, c, s in zip(boxes.tolist(), category_ids, det.scores.tolist())]
    if det.masks is not None and len(out):
        for r, rle in zip(out, encode_masks(det.masks)):
            r["segmentation"] = rle
    return out


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """[K, H, W] bool -> K COCO RLEs with str counts (json-serialisable)."""
    array = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))  # [H, W, K]
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def score_results(coco_gt: Any, results: list[dict], image_ids: list[int],
                  iou_type: str = "bbox") -> dict[str, float]:
    """COCOeval summary on ``image_ids`` (all of ``coco_gt`` when empty); zeros without results."""
    if not results:
        return {name: 0.0 for name in METRIC_NAMES}
    # copies: loadRes adds keys to its input; for segm, drop boxes so areas come from masks
    drop = "bbox" if iou_type == "segm" else "segmentation"
    results = [{k: v for k, v in r.items() if k != drop} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats[:6])}


def write_results_json(path: str | Path, results: list[dict]) -> None:
    """Write COCO results to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(results, f)
