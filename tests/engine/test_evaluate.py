import json

import pytest
import torch

from codetr.engine.evaluate import SUMMARY_NAMES, evaluate, to_coco_results, write_results_json
from codetr.structures import Detections

from .fakes import OracleDetector, ToyDataset, build_loader, classes, toy_coco


def loader(n=5):
    return build_loader(ToyDataset(n, augment=False), batch_size=2, shuffle=False, num_workers=0)


def test_perfect_detections_score_one(tmp_path):
    results_path = tmp_path / "results.json"
    metrics = evaluate(OracleDetector(classes()), loader(), toy_coco(5), classes(), results_path=results_path)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert set(metrics) == {*SUMMARY_NAMES, "per_class"}
    results = json.loads(results_path.read_text())
    assert len(results) == 10 and {r["category_id"] for r in results} == {3, 7}
    assert {r["image_id"] for r in results} == {1, 2, 3, 4, 5}


def test_perfect_masks_score_one():
    metrics = evaluate(OracleDetector(classes(), with_masks=True), loader(), toy_coco(5), classes())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["mask_AP"] == pytest.approx(1.0)


def test_no_detections_score_zero():
    metrics = evaluate(OracleDetector(classes(), empty=True), loader(), toy_coco(5), classes())
    assert {k: metrics[k] for k in SUMMARY_NAMES} == {k: 0.0 for k in SUMMARY_NAMES}
    assert [(r["category_id"], r["AP"], r["num_gt"]) for r in metrics["per_class"]] == [(3, 0.0, 5), (7, 0.0, 5)]


def test_only_evaluated_images_count():
    # the gt holds 8 images, the loader 5: the other 3 must not count as misses
    metrics = evaluate(OracleDetector(classes()), loader(5), toy_coco(8), classes())
    assert metrics["AP"] == pytest.approx(1.0)


def test_to_coco_results_xywh_and_category_ids(tmp_path):
    det = Detections(torch.tensor([[1.0, 2.0, 4.0, 8.0]]), torch.tensor([0.5]), torch.tensor([1]))
    [r] = to_coco_results(det, 12, classes())
    assert r == {"image_id": 12, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}
    write_results_json(tmp_path / "r.json", [r])
    assert json.loads((tmp_path / "r.json").read_text()) == [r]
