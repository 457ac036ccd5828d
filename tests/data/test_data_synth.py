from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from codetr.data import CocoDetection, write_synthetic_coco
from codetr.data.synth import CATEGORY_IDS, SHAPES


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_coco(tmp_path / "a", num_train=5, num_val=2, image_size=64, seed=11)
    b = write_synthetic_coco(tmp_path / "b", num_train=5, num_val=3, image_size=64, seed=11)
    c = write_synthetic_coco(tmp_path / "c", num_train=5, num_val=2, image_size=64, seed=12)
    assert a["train_json"].read_bytes() == b["train_json"].read_bytes()
    for name in sorted(p.name for p in a["train_images"].iterdir()):
        assert (a["train_images"] / name).read_bytes() == (b["train_images"] / name).read_bytes()
    # val image i does not depend on how many images the split has
    assert (a["val_images"] / "000001.png").read_bytes() == (b["val_images"] / "000001.png").read_bytes()
    assert a["train_json"].read_bytes() != c["train_json"].read_bytes()


def test_coco_format_and_statistics(synth_root):
    data = json.loads(synth_root["train_json"].read_text())
    assert {"info", "images", "annotations", "categories"} <= data.keys()
    ids = [c["id"] for c in data["categories"]]
    assert len(ids) >= 5 and len(SHAPES) == len(ids) and ids == list(CATEGORY_IDS)
    assert min(ids) > 0 and ids != list(range(min(ids), min(ids) + len(ids)))  # exercises the mapping
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert len(data["images"]) == 24
    for img in data["images"]:
        assert 1 <= per_image[img["id"]] <= 8
        assert 72 <= img["height"] <= 96 and 72 <= img["width"] <= 96
    sides = np.array([a["bbox"][2:] for a in data["annotations"]])
    assert sides.min() >= 2 and sides.min() < 12 and sides.max() >= 30 and sides.max() <= 48
    assert len({a["category_id"] for a in data["annotations"]}) == len(ids)
    for a in data["annotations"]:
        assert a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
        assert a["area"] == mask_utils.area(a["segmentation"])
        assert a["bbox"] == mask_utils.toBbox(a["segmentation"]).tolist()


def test_loads_with_masks_boxes_match(synth_root):
    ds = CocoDetection(synth_root["val_json"], synth_root["val_images"], with_masks=True)
    assert len(ds) == 6 and ds.classes.category_ids == list(CATEGORY_IDS) and ds.num_skipped_degenerate == 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.size == (t.orig_size[1], t.orig_size[0])
        for box, m in zip(t.boxes, t.masks):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_objects_stand_out(synth_root):
    """Annotated pixels differ from the pixels around their box (the shapes are visible)."""
    ds = CocoDetection(synth_root["train_json"], synth_root["train_images"], with_masks=True)
    contrasts = []
    for i in range(8):
        image, t = ds[i]
        px = np.asarray(image, dtype=np.float32)
        for m in t.masks.numpy():
            ring = np.zeros_like(m)
            ys, xs = np.nonzero(m)
            ring[max(ys.min() - 2, 0): ys.max() + 3, max(xs.min() - 2, 0): xs.max() + 3] = True
            ring &= ~m
            if ring.sum() > 10:
                contrasts.append(np.abs(px[m].mean(0) - px[ring].mean(0)).sum())
    assert np.median(contrasts) > 40


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        write_synthetic_coco(tmp_path, num_train=1, num_val=1, image_size=16)
