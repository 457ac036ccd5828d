"""CocoDetection refuses ids and boxes that pycocotools would mishandle (issue 14: items 11,
14a and 16): one ValueError line naming the file and the bad value, at construction."""
from __future__ import annotations

import json
import math

import pytest

from codetr.data import CocoDetection

from coco_samples import coco_dict, write_coco


def _error(tmp_path, data: dict) -> str:
    ann_file, image_dir = write_coco(tmp_path, data)
    with pytest.raises(ValueError) as info:
        CocoDetection(ann_file, image_dir)
    message = str(info.value)
    assert str(ann_file) in message and "\n" not in message
    return message


def test_duplicate_annotation_ids_are_refused(tmp_path):  # item 11
    data = coco_dict()
    data["annotations"][2]["id"] = 11   # 11 twice
    data["annotations"][3]["id"] = 12   # 12 twice
    assert "duplicate annotation ids [11, 12]" in _error(tmp_path, data)


@pytest.mark.parametrize("bad_id", ["img_1", 1.0, 1.5, True])
def test_non_integer_image_id_is_refused_naming_its_file_name(tmp_path, bad_id):  # item 14a
    data = coco_dict()
    data["images"][0]["id"] = bad_id
    for ann in data["annotations"]:
        ann["image_id"] = bad_id
    message = _error(tmp_path, data)
    assert f"image id {bad_id!r} (file_name 'a.png') is not an integer" in message


@pytest.mark.parametrize("bad_id", ["a11", 11.0, None])
def test_non_integer_annotation_id_is_refused(tmp_path, bad_id):  # item 14a
    data = coco_dict()
    data["annotations"][0]["id"] = bad_id
    assert f"annotation id {bad_id!r} (image_id 1) is not an integer" in _error(tmp_path, data)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_box_is_refused_not_skipped_as_degenerate(tmp_path, value):  # item 16
    data = coco_dict()
    data["annotations"][1]["bbox"] = [7, 5, value, 4]
    message = _error(tmp_path, data)
    assert "annotation id 12 has bbox [7, 5, " in message and "NaN or infinite" in message


def test_nan_written_as_json_token_is_refused(tmp_path):  # item 16: the file as a user would have it
    data = coco_dict()
    data["annotations"][0]["bbox"] = [2, 3, 6, 4]
    text = json.dumps(data).replace("[2, 3, 6, 4]", "[NaN, 3, 6, 4]")
    ann_file, image_dir = write_coco(tmp_path, text)
    with pytest.raises(ValueError, match=r"annotation id 11 has bbox \[nan, 3, 6, 4\] with a NaN"):
        CocoDetection(ann_file, image_dir)


def test_finite_degenerate_boxes_are_still_skipped(tmp_path):
    data = coco_dict()
    data["annotations"][1]["bbox"] = [7, 5, -4, 4]  # negative width: degenerate, skipped
    ds = CocoDetection(*write_coco(tmp_path, data))
    assert ds.num_skipped_degenerate == 2  # this one and annotation 14 (w = 0)
    assert [a["id"] for a in ds._records[1].anns] == [11, 13]
