"""COCO evaluation: detections -> COCO results json -> COCOeval, with per-class detail.

Every rank detects its share of the loader; results are gathered to rank 0, which scores them
and broadcasts the metrics, so every rank returns the same dict.

The evaluator is faster-coco-eval's ``COCOeval_faster`` (C++ matching and accumulation): on
synthetic detections it gives pycocotools' numbers to 1e-12 (AP ... ARl, per class, the whole
precision array; ``tests/engine/test_evaluate_detail.py`` keeps checking that).

Metrics (``evaluate``): the 12 COCO summary numbers under ``SUMMARY_NAMES``, each a float or
None where COCOeval has nothing to score (pycocotools' -1: a size range without ground truth),
and ``per_class``: one ``{"category_id", "name", "AP", "AP50", "num_gt"}`` per ground-truth
category. Mask models add the same under a ``mask_`` prefix. ``format_metrics`` prints them,
"-" for None; ``plot_pr_curves`` draws precision-recall at IoU 0.5 (matplotlib, optional).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .. import distributed as du
from ..backends import apply_device_defaults
from ..structures import ClassInfo, Detections
from .checkpoint import atomic_open

logger = logging.getLogger(__name__)

SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
AP_NAMES, AR_NAMES = SUMMARY_NAMES[:6], SUMMARY_NAMES[6:]
PR_IOU = 0.5                       # IoU threshold of the precision-recall plot
MAX_LEGEND_CLASSES = 20            # more classes: their curves are drawn without a legend entry


def evaluate(model: torch.nn.Module, loader: Iterable, coco_gt: Any, classes: ClassInfo,
             results_path: str | Path | None = None, progress: bool = False,
             plot_path: str | Path | None = None, amp: torch.dtype | None = None) -> dict[str, Any]:
    """Box (and, when detections carry masks, mask) metrics of ``model`` on ``loader`` (module
    docstring); AP and AR are 0 when there is no detection at all. ``results_path``: also write
    the COCO results; ``plot_path``: also draw the box precision-recall curves there (a PNG);
    ``amp``: the autocast dtype of the network pass (``Detector.detect``)."""
    results, image_ids = collect_results(model, loader, classes, progress, amp)
    metrics: dict[str, Any] = {}
    if du.is_main():
        if results_path is not None:
            write_results_json(results_path, results)
        box_eval = run_cocoeval(coco_gt, results, image_ids, "bbox")
        metrics = summarize(box_eval, coco_gt, image_ids)
        if plot_path is not None:
            plot_pr_curves(box_eval, coco_gt, plot_path)
        if any("segmentation" in r for r in results):
            segm = summarize(run_cocoeval(coco_gt, results, image_ids, "segm"), coco_gt, image_ids)
            metrics.update({f"mask_{k}": v for k, v in segm.items()})
    return du.broadcast_object(metrics)


@torch.no_grad()
def collect_results(model: torch.nn.Module, loader: Iterable, classes: ClassInfo,
                    progress: bool = False, amp: torch.dtype | None = None) -> tuple[list[dict], list[int]]:
    """COCO results of every rank, deduplicated by image id (a distributed sampler pads with
    repeats), and the evaluated image ids. Complete on rank 0 (and on every rank)."""
    model = getattr(model, "module", model)  # DDP
    device = next(model.parameters()).device
    apply_device_defaults(device)   # TF32 on Ampere+ GPUs, CPU memory reuse (backends)
    per_image: dict[int, list[dict]] = {}
    for batch in tqdm(loader, desc="eval", disable=not (progress and du.is_main())):
        batch = batch.to(device)
        orig_sizes = [t.orig_size for t in batch.targets]
        for det, target in zip(model.detect(batch.images, batch.sizes, orig_sizes, amp), batch.targets):
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


def run_cocoeval(coco_gt: Any, results: list[dict], image_ids: list[int], iou_type: str = "bbox",
                 evaluator: type = COCOeval_faster) -> Any | None:
    """The evaluated, accumulated and summarized ``evaluator`` (a COCOeval class) on
    ``image_ids`` (all of ``coco_gt`` when empty); None without results (nothing to score)."""
    if not results:
        return None
    # copies: loadRes adds keys to its input; for segm, drop boxes so areas come from masks
    drop = "bbox" if iou_type == "segm" else "segmentation"
    results = [{k: v for k, v in r.items() if k != drop} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_eval = evaluator(coco_gt, coco_gt.loadRes(results), iou_type)
        if image_ids:
            coco_eval.params.imgIds = list(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def summarize(coco_eval: Any | None, coco_gt: Any, image_ids: list[int]) -> dict[str, Any]:
    """``SUMMARY_NAMES`` (None for COCOeval's -1) and ``per_class`` of a ``run_cocoeval``
    result; zeros (None where a class has no ground truth) for None, which had no results."""
    if coco_eval is None:
        rows = [{**row, "AP": 0.0 if row["num_gt"] else None, "AP50": 0.0 if row["num_gt"] else None}
                for row in class_rows(coco_gt, image_ids)]
        return {**{name: 0.0 for name in SUMMARY_NAMES}, "per_class": rows}
    stats = {name: (float(v) if v > -1 else None) for name, v in zip(SUMMARY_NAMES, coco_eval.stats)}
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]   # [T, R, K, A, M] -> [T, R, K]: all areas, 100 dets
    t50 = _iou_index(coco_eval, PR_IOU)
    rows = class_rows(coco_gt, image_ids, coco_eval.params.catIds)
    for k, row in enumerate(rows):
        row["AP"], row["AP50"] = _mean_valid(precision[:, :, k]), _mean_valid(precision[t50, :, k])
    return {**stats, "per_class": rows}


def class_rows(coco_gt: Any, image_ids: list[int], category_ids: list[int] | None = None) -> list[dict]:
    """``{"category_id", "name", "num_gt"}`` per category (default: all of ``coco_gt``, sorted),
    counting the non-crowd ground truth of ``image_ids`` (all images when empty)."""
    category_ids = sorted(coco_gt.getCatIds()) if category_ids is None else category_ids
    return [{"category_id": int(c), "name": str(coco_gt.cats[c]["name"]),
             "num_gt": len(coco_gt.getAnnIds(imgIds=list(image_ids), catIds=[c], iscrowd=False))}
            for c in category_ids]


def _mean_valid(values: np.ndarray) -> float | None:
    """Mean of the entries > -1 (COCOeval's -1: no ground truth); None when there is none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _iou_index(coco_eval: Any, iou: float) -> int:
    return int(np.argmin(np.abs(np.asarray(coco_eval.params.iouThrs) - iou)))


def format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """The AP line, the AR line and the per-class table of ``metrics[prefix + ...]`` ("-" for None)."""
    def line(names: tuple[str, ...]) -> str:
        return "  ".join(f"{prefix}{n} {_fmt(metrics.get(prefix + n))}" for n in names if prefix + n in metrics)

    rows = metrics.get(prefix + "per_class", [])
    width = max([len("class")] + [len(r["name"]) for r in rows])
    table = [f"{'class':<{width}}  {'AP':>5}  {'AP50':>5}  {'gt':>6}"]
    table += [f"{r['name']:<{width}}  {_fmt(r['AP']):>5}  {_fmt(r['AP50']):>5}  {r['num_gt']:>6}" for r in rows]
    return "\n".join([line(AP_NAMES), line(AR_NAMES), *(table if rows else [])])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot_pr_curves(coco_eval: Any | None, coco_gt: Any, path: str | Path) -> Path | None:
    """Precision-recall at IoU 0.5 (all areas, 100 detections) of every class and their mean
    ("all") as a PNG at ``path``. Without matplotlib, or without results, a one-line note and None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("no precision-recall plot: matplotlib is not installed (pip install matplotlib)")
        return None
    if coco_eval is None:
        logger.warning("no precision-recall plot: there are no detections")
        return None
    recall = np.asarray(coco_eval.params.recThrs)
    precision = coco_eval.eval["precision"][_iou_index(coco_eval, PR_IOU), :, :, 0, -1]   # [R, K]
    fig, ax = plt.subplots(figsize=(7, 5))
    valid = [k for k in range(precision.shape[1]) if (precision[:, k] > -1).all()]
    for k in valid:
        name = coco_gt.cats[coco_eval.params.catIds[k]]["name"]
        label = f"{name} {precision[:, k].mean():.3f}" if len(valid) <= MAX_LEGEND_CLASSES else None
        ax.plot(recall, precision[:, k], linewidth=1, label=label)
    if valid:
        mean = precision[:, valid].mean(axis=1)
        ax.plot(recall, mean, color="black", linewidth=3, label=f"all {mean.mean():.3f} AP50")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"precision-recall at IoU {PR_IOU}")
    ax.legend(loc="lower left", fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    logger.info("wrote the precision-recall plot %s", path)
    return path


def write_results_json(path: str | Path, results: list[dict]) -> None:
    """Write COCO results to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(results, f)
