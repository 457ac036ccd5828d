"""Elongated images (8:1 and 340:1) predict and train with every tiny zoo model: resizes keep
every side >= 1 px and the two-stage / DINO query selection takes at most the encoder's tokens."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import codetr
from codetr.data.build import train_dataset
from codetr.data.loader import collate
from codetr.data.transforms import DetectionTransform, RandomShorterResize, RandomSizeCrop, SquareResize
from codetr.detector import InputSpec
from codetr.images import resized_hw
from codetr.recipes import recipe
from codetr.structures import Target
from codetr.zoo import list_models

TINY = [name for name in list_models() if name.endswith("_tiny")]
SHAPES = [(16, 128), (1, 340)]   # (h, w): 8:1 and 340:1


@pytest.mark.parametrize("h, w, min_size, max_size", [(1, 340, 128, 170), (340, 1, 128, 170), (2, 680, 128, 170),
                                                      (1, 10_000, 800, 1333), (16, 128, 128, 170)])
def test_resized_hw_keeps_every_side_at_least_one_pixel(h, w, min_size, max_size):
    nh, nw = resized_hw(h, w, min_size, max_size)
    assert nh >= 1 and nw >= 1 and max(nh, nw) <= max_size
    assert (nh < nw) == (h < w)


def test_resized_hw_refuses_empty_images():
    with pytest.raises(ValueError, match="0x5"):
        resized_hw(0, 5, 128, 170)


@pytest.mark.parametrize("transform", [RandomShorterResize([96, 128], 170), RandomShorterResize([4]),
                                       RandomSizeCrop(96, 150), SquareResize(64)], ids=repr)
def test_training_transforms_keep_every_side_at_least_one_pixel(transform):
    target = Target(torch.tensor([[10.0, 0.0, 60.0, 1.0]]), torch.tensor([0]), size=(1, 340))
    x, out = DetectionTransform(transform, InputSpec(mean=(0.5,) * 3, std=(0.25,) * 3))(Image.new("RGB", (340, 1)), target)
    assert x.shape[0] == 3 and min(x.shape[-2:]) >= 1 and out.size == tuple(x.shape[-2:])


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    torch.manual_seed(0)
    return request.param, codetr.create(request.param, num_classes=2)


@pytest.mark.parametrize("h, w", SHAPES)
def test_tiny_models_predict_on_elongated_images(tiny, h, w):
    _, model = tiny
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    (det,) = model.predict(image)
    assert det.boxes.shape[1:] == (4,) and len(det.boxes) == len(det.scores) == len(det.labels)
    assert torch.isfinite(det.boxes).all() and torch.isfinite(det.scores).all()


def write_elongated_dataset(root, shapes):
    """A COCO train split of elongated images, one box (and polygon) each."""
    (root / "train").mkdir(parents=True)
    images, anns = [], []
    for i, (h, w) in enumerate(shapes, 1):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "train" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        x0, x1, y1 = w // 8, w // 2, max(1, h // 2)
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [x0, 0, x1 - x0, y1],
                     "segmentation": [[x0, 0, x1, 0, x1, y1, x0, y1]]})
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))


@pytest.mark.parametrize("h, w", SHAPES)
def test_tiny_models_train_on_elongated_images(tiny, h, w, tmp_path):
    name, model = tiny
    write_elongated_dataset(tmp_path, [(h, w)])
    data = replace(recipe(name).data, path=str(tmp_path))
    batch = collate([train_dataset(data, model.input_spec)[0]], model.input_spec.size_divisibility)
    assert len(batch.targets[0].boxes) == 1
    model.train()
    total = model(batch.images, batch.sizes, batch.targets).total()
    assert torch.isfinite(total)
    total.backward()
    model.zero_grad(set_to_none=True)


def test_two_stage_deformable_detr_predicts_and_trains_on_a_340_to_1_image():
    torch.manual_seed(0)
    model = codetr.create("deformable_detr_tiny", num_classes=2, two_stage=True, with_box_refine=True)
    (det,) = model.predict(np.zeros((1, 340, 3), dtype=np.uint8))
    assert torch.isfinite(det.boxes).all()
    model.train()
    target = Target(torch.tensor([[10.0, 0.0, 60.0, 1.0]]), torch.tensor([1]), size=(1, 170))
    assert torch.isfinite(model(torch.zeros(1, 3, 1, 170), torch.tensor([[1, 170]]), [target]).total())
