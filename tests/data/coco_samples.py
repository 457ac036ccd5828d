"""Hand-written COCO-format data for the codetr.data tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


# Image 1 (12 x 10, w x h): a polygon, a compressed RLE, an uncompressed-RLE crowd, a w=0 box.
# Image 2 (8 x 6): no annotations. Category ids 10, 3, 7 (unsorted, gaps) -> labels 2, 0, 1.
H1, W1 = 10, 12


def rle_block() -> np.ndarray:
    m = np.zeros((H1, W1), dtype=bool)
    m[5:9, 7:11] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major runs starting with zeros, as in COCO crowd annotations."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def crowd_mask() -> np.ndarray:
    m = np.zeros((H1, W1), dtype=bool)
    m[0:2, 0:5] = True
    m[1, 6] = True
    return m


def coco_dict() -> dict:
    rle = mask_utils.encode(np.asfortranarray(rle_block().astype(np.uint8)))
    return {
        "info": {"description": "hand-written"},
        "images": [
            {"id": 1, "file_name": "a.png", "height": H1, "width": W1},
            {"id": 2, "file_name": "b.png", "height": 6, "width": 8},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 10, "bbox": [2, 3, 6, 4], "area": 24, "iscrowd": 0,
             "segmentation": [[2, 3, 8, 3, 8, 7, 2, 7]]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [7, 5, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": {"size": [H1, W1], "counts": rle["counts"].decode("ascii")}},
            {"id": 13, "image_id": 1, "category_id": 7, "bbox": [0, 0, 7, 2], "area": 11, "iscrowd": 1,
             "segmentation": uncompressed_rle(crowd_mask())},
            {"id": 14, "image_id": 1, "category_id": 7, "bbox": [4, 4, 0, 3], "area": 0, "iscrowd": 0,
             "segmentation": [[4, 4, 4, 7, 4, 4]]},
        ],
        "categories": [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
    }


def write_coco(root: Path, data: dict | str) -> tuple[Path, Path]:
    """Write images a.png / b.png and the json ``data`` (dict or raw text); return (json, image dir)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H1, W1, 3), dtype=np.uint8)).save(image_dir / "a.png")
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(image_dir / "b.png")
    ann_file = root / "instances.json"
    ann_file.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return ann_file, image_dir
