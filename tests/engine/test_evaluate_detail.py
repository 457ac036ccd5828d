"""Evaluation detail: faster-coco-eval == pycocotools, per-class AP, AR, empty size ranges as
None / "-", the precision-recall plot (and its absence without matplotlib), metrics.jsonl."""
import contextlib
import io
import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from codetr.engine.evaluate import (SUMMARY_NAMES, evaluate, format_metrics, plot_pr_curves, run_cocoeval,
                                    summarize)
from codetr.engine.trainer import Trainer, build_optimizer, build_scheduler

from .fakes import OracleDetector, TinyDetector, ToyDataset, build_loader, classes, run_config, toy_coco

CATEGORIES = (1, 2, 5)


def synthetic(seed: int, num_images: int = 30, masks: bool = False) -> tuple[COCO, list[dict]]:
    """Ground truth of small / medium / large boxes (some crowd) and detections: jittered gt
    (10% with the wrong class) plus false positives, random scores."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for _ in range(rng.integers(0, 6)):
            side = rng.choice([12, 50, 150])
            w, h = side * rng.uniform(0.5, 1.5, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            cat = int(rng.choice(CATEGORIES))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.8:
                dx, dy, dw, dh = rng.normal(0, 0.1 * side, 4)
                cat = cat if rng.random() < 0.9 else int(rng.choice(CATEGORIES))
                dets.append({"image_id": i, "category_id": cat, "score": float(rng.random()),
                             "bbox": [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)]})
        for _ in range(rng.integers(0, 4)):
            dets.append({"image_id": i, "category_id": int(rng.choice(CATEGORIES)), "score": float(rng.random()),
                         "bbox": [*rng.uniform(0, 150, 2), *rng.uniform(5, 100, 2)]})
    if masks:
        for entry in anns + dets:
            entry["segmentation"] = box_rle(entry["bbox"])
    return coco_of(images, anns, [{"id": c, "name": f"cat{c}"} for c in CATEGORIES]), dets


def box_rle(bbox: list[float]) -> dict:
    """The box as a compressed RLE on a 240 x 320 image (COCO results take RLE, not polygons)."""
    x, y, w, h = bbox
    rle = mask_utils.merge(mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 240, 320))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_of(images: list[dict], anns: list[dict], categories: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_gives_pycocotools_numbers(seed, iou_type):
    gt, dets = synthetic(seed, masks=iou_type == "segm")
    image_ids = list(range(1, 26))  # a subset, as a distributed loader may evaluate
    fast = run_cocoeval(gt, dets, image_ids, iou_type)
    reference = run_cocoeval(gt, dets, image_ids, iou_type, evaluator=COCOeval)
    np.testing.assert_allclose(fast.stats, reference.stats, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast.eval["precision"], reference.eval["precision"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast.eval["recall"], reference.eval["recall"], atol=1e-6, rtol=0)
    ours, theirs = summarize(fast, gt, image_ids), summarize(reference, gt, image_ids)
    assert {k: ours[k] for k in SUMMARY_NAMES} == pytest.approx({k: theirs[k] for k in SUMMARY_NAMES}, abs=1e-6)
    for mine, reference_row in zip(ours["per_class"], theirs["per_class"], strict=True):
        assert mine == pytest.approx(reference_row, abs=1e-6)
    assert 0 < ours["AP"] < ours["AP50"] < 1 and len(ours["per_class"]) == 3


def test_per_class_ap_and_ground_truth_counts():
    # class 1: found exactly; class 2: one of two found; class 5: only a false positive
    gt = coco_of([{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
                 [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                  {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
                  {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 60, 20, 20], "area": 400, "iscrowd": 0},
                  {"id": 4, "image_id": 1, "category_id": 5, "bbox": [70, 0, 20, 20], "area": 400, "iscrowd": 1}],
                 [{"id": c, "name": n} for c, n in ((1, "cat"), (2, "dog"), (5, "bird"))])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.8},
            {"image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "score": 0.7}]
    metrics = summarize(run_cocoeval(gt, dets, [1]), gt, [1])
    rows = {r["name"]: r for r in metrics["per_class"]}
    assert (rows["cat"]["AP"], rows["cat"]["AP50"], rows["cat"]["num_gt"]) == (pytest.approx(1.0), pytest.approx(1.0), 1)
    assert rows["dog"]["AP50"] == pytest.approx(0.5, abs=0.01) and rows["dog"]["num_gt"] == 2
    assert rows["bird"] == {"category_id": 5, "name": "bird", "num_gt": 0, "AP": None, "AP50": None}  # crowd only
    assert metrics["AR1"] == pytest.approx(0.75) and metrics["AR100"] == pytest.approx(0.75)


def test_empty_size_ranges_are_none_and_printed_as_a_dash():
    metrics = evaluate(OracleDetector(classes()), loader(), toy_coco(4), classes())  # 16 px images: no large box
    assert metrics["APl"] is None and metrics["ARl"] is None and metrics["APs"] == pytest.approx(1.0)
    assert json.loads(json.dumps(metrics))["APl"] is None
    text = format_metrics(metrics)
    assert "APl -" in text and "ARl -" in text and "AR100 1.000" in text
    assert [line.split() for line in text.splitlines()[2:]] == [
        ["class", "AP", "AP50", "gt"], ["c3", "1.000", "1.000", "4"], ["c7", "1.000", "1.000", "4"]]


def test_precision_recall_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    gt, dets = synthetic(0)
    path = plot_pr_curves(run_cocoeval(gt, dets, []), gt, tmp_path / "pr.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
    evaluate(OracleDetector(classes()), loader(), toy_coco(4), classes(), plot_path=tmp_path / "oracle.png")
    assert (tmp_path / "oracle.png").is_file()


def test_without_matplotlib_a_one_line_note_and_no_plot(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    gt, dets = synthetic(0)
    with caplog.at_level(logging.WARNING):
        assert plot_pr_curves(run_cocoeval(gt, dets, []), gt, tmp_path / "pr.png") is None
    assert not (tmp_path / "pr.png").exists()
    [note] = [r.getMessage() for r in caplog.records]
    assert "matplotlib is not installed" in note and "\n" not in note


def test_per_epoch_eval_in_metrics_jsonl_has_the_detail(tmp_path):
    cfg = run_config(tmp_path, epochs=1)
    torch.manual_seed(0)
    model = TinyDetector(classes())
    train_loader = build_loader(ToyDataset(4), 2, True, 0, drop_last=True)
    optimizer = build_optimizer(model, cfg.train)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, cfg.train, 2), train_loader, cfg,
                      val_loader=loader(), coco_gt=toy_coco(4))
    trainer.train()
    [record] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["type"] == "eval"]
    assert set(SUMMARY_NAMES) <= set(record) and record["APl"] is None
    assert [(r["name"], r["num_gt"]) for r in record["per_class"]] == [("c3", 4), ("c7", 4)]


def loader(n: int = 4):
    return build_loader(ToyDataset(n, augment=False), batch_size=2, shuffle=False, num_workers=0)
