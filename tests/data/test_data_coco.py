from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from codetr.data import CocoDetection, detections_to_coco, eval_transforms
from codetr.detector import InputSpec
from codetr.structures import Detections

from coco_samples import H1, W1, coco_dict, crowd_mask, rle_block, write_coco


def test_category_mapping_and_back(tiny_coco):
    ds = CocoDetection(*tiny_coco)
    assert ds.classes.category_ids == [3, 7, 10]
    assert ds.classes.names == ["three", "seven", "ten"]
    assert ds.ids == [1, 2]
    _, t = ds[0]
    back = [ds.classes.category_ids[label] for label in t.labels.tolist()]
    assert back == [10, 3, 7]  # annotations 11, 12, 13 (14 is degenerate)
    assert t.labels.dtype == torch.int64


def test_boxes_iscrowd_and_sizes(tiny_coco):
    ds = CocoDetection(*tiny_coco)
    image, t = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (W1, H1)
    assert t.boxes.dtype == torch.float32
    assert t.boxes.tolist() == [[2, 3, 8, 7], [7, 5, 11, 9], [0, 0, 7, 2]]
    assert t.iscrowd.tolist() == [False, False, True]
    assert t.image_id == 1 and t.orig_size == (H1, W1) and t.size == (H1, W1)
    assert t.masks is None


def test_image_without_annotations(tiny_coco):
    ds = CocoDetection(*tiny_coco, with_masks=True)
    _, t = ds[1]
    assert t.boxes.shape == (0, 4) and t.labels.shape == (0,) and t.iscrowd.shape == (0,)
    assert t.masks.shape == (0, 6, 8) and t.masks.dtype == torch.bool
    x, t = CocoDetection(*tiny_coco, transforms=eval_transforms(InputSpec(min_size=12, max_size=20)), with_masks=True)[1]
    assert t.boxes.shape == (0, 4) and t.masks.shape == (0, 12, 16) and x.shape == (3, 12, 16)


def test_polygon_and_rle_masks_decode(tiny_coco):
    _, t = CocoDetection(*tiny_coco, with_masks=True)[0]
    assert t.masks.shape == (3, H1, W1) and t.masks.dtype == torch.bool
    polygon = np.zeros((H1, W1), dtype=bool)
    polygon[3:7, 2:8] = True  # polygon corners (2,3)-(8,7): pixels x 2..7, y 3..6
    assert np.array_equal(t.masks[0].numpy(), polygon)
    assert np.array_equal(t.masks[1].numpy(), rle_block())       # compressed RLE
    assert np.array_equal(t.masks[2].numpy(), crowd_mask())      # uncompressed RLE


def test_degenerate_boxes_skipped_counted_and_logged(tiny_coco, caplog):
    with caplog.at_level(logging.WARNING, logger="codetr.data.coco"):
        ds = CocoDetection(*tiny_coco)
    assert ds.num_skipped_degenerate == 1
    assert len(ds[0][1]) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "instances.json" in messages[0] and "skipped 1 " in messages[0]
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 4  # evaluation ground truth kept as written


def _raises(tmp_path, data, match_all, *, index=None, exc=ValueError, **kwargs):
    ann_file, image_dir = write_coco(tmp_path, data)
    with pytest.raises(exc) as info:
        ds = CocoDetection(ann_file, image_dir, **kwargs)
        ds[index if index is not None else 0]
    for text in match_all:
        assert text in str(info.value), (text, str(info.value))
    return ann_file, image_dir


def test_missing_image(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, coco_dict())
    (image_dir / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="a.png"):
        CocoDetection(ann_file, image_dir)[0]


def test_corrupt_image(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, coco_dict())
    (image_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError, match="a.png"):
        CocoDetection(ann_file, image_dir)[0]


def test_truncated_image(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, coco_dict())
    raw = (image_dir / "a.png").read_bytes()
    (image_dir / "a.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="a.png"):
        CocoDetection(ann_file, image_dir)[0]


def test_malformed_json(tmp_path):
    text = json.dumps(coco_dict(), indent=1)
    _raises(tmp_path, text[:200] + "," + text[200:], ["instances.json", "line"])


def test_unknown_category(tmp_path):
    data = coco_dict()
    data["annotations"][1]["category_id"] = 99
    _raises(tmp_path, data, ["instances.json", "annotation id 12", "99"])


@pytest.mark.parametrize("where, field", [("images", "file_name"), ("annotations", "bbox"),
                                          ("categories", "name"), (None, "annotations")])
def test_missing_required_field(tmp_path, where, field):
    data = coco_dict()
    if where is None:
        del data[field]
    else:
        del data[where][0][field]
    _raises(tmp_path, data, ["instances.json", field])


def test_missing_segmentation_with_masks(tmp_path):
    data = coco_dict()
    del data["annotations"][0]["segmentation"]
    CocoDetection(*write_coco(tmp_path, data))  # fine without masks
    _raises(tmp_path, data, ["instances.json", "segmentation"], with_masks=True)


def test_bad_rle_size(tmp_path):
    data = coco_dict()
    data["annotations"][1]["segmentation"]["size"] = [5, 5]
    _raises(tmp_path, data, ["instances.json", "annotation id 12", "[5, 5]"], with_masks=True)


def test_image_size_mismatch(tmp_path):
    data = coco_dict()
    data["images"][0]["width"] = 13
    _raises(tmp_path, data, ["a.png", "13"])


def test_with_transforms_sets_size(tiny_coco):
    ds = CocoDetection(*tiny_coco, transforms=eval_transforms(InputSpec(min_size=20, max_size=100)), with_masks=True)
    x, t = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 20, 24)
    assert t.size == (20, 24) and t.orig_size == (H1, W1) and t.image_id == 1
    assert torch.allclose(t.boxes[0], torch.tensor([4.0, 6.0, 16.0, 14.0]))
    assert t.masks.shape == (3, 20, 24)


def test_detections_to_coco_round_trip(tiny_coco):
    ds = CocoDetection(*tiny_coco, with_masks=True)
    _, t = ds[0]
    det = Detections(t.boxes, torch.ones(len(t)), t.labels, t.masks)
    results = detections_to_coco(1, det, ds.classes)
    assert [r["category_id"] for r in results] == [10, 3, 7]
    assert results[0]["bbox"] == [2.0, 3.0, 6.0, 4.0]
    assert isinstance(results[0]["segmentation"]["counts"], str)
    json.dumps(results)
    dt = ds.coco.loadRes(results)
    ev = COCOeval(ds.coco, dt, "segm")
    ev.params.imgIds = [1]
    ev.evaluate()
    ev.accumulate()
    assert ev.eval["precision"].max() == pytest.approx(1.0)
