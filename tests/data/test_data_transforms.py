from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from codetr.data import (DetectionTransform, RandomShorterResize, RandomSizeCrop, detr_train_transforms,
                         eval_transforms)
from codetr.detector import InputSpec
from codetr.images import resized_hw
from codetr.structures import Target

TINY = dict(scales=range(96, 161, 16), max_size=213, crop_resize_scales=(100, 125, 150), crop_min=96,
            crop_max=150)
IDENTITY = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale_255=True)  # output = uint8 values as float


def rect_sample(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, Target]:
    """Image whose pixels hold ``object index + 1`` inside each (non-overlapping) rect
    (x0, y0, x1, y1 exclusive), masks of the rects, boxes = the rects."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    masks = torch.zeros(len(rects), h, w, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        image[:, y0:y1, x0:x1] = k + 1
        masks[k, y0:y1, x0:x1] = True
    n = len(rects)
    target = Target(torch.tensor(rects, dtype=torch.float32).reshape(-1, 4), torch.arange(n), image_id=7,
                    orig_size=(h, w), size=(h, w), iscrowd=torch.arange(n) % 2 == 0, masks=masks)
    return image, target


def grid_rects(h: int, w: int, step: int = 20) -> list[tuple[int, int, int, int]]:
    return [(x, y, x + step - 6, y + step - 3) for y in range(2, h - step, step) for x in range(3, w - step, step)]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[N, H, W] -> [N, 4] xyxy bounding boxes of the masks (pixel edges)."""
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def check_consistent(x: torch.Tensor, t: Target, tol: float = 1.0) -> None:
    assert t.size == tuple(x.shape[-2:])
    assert t.masks.shape == (len(t), *x.shape[-2:])
    assert len(t.labels) == len(t.iscrowd) == len(t.boxes)
    assert t.image_id == 7
    assert torch.equal(t.iscrowd, t.labels % 2 == 0)  # iscrowd stays with its object
    if len(t):
        assert (mask_boxes(t.masks) - t.boxes).abs().max() <= tol


@pytest.mark.parametrize("h, w, min_size, max_size", [(100, 150, 80, 1000), (150, 100, 80, 110),
                                                       (64, 256, 96, 213), (80, 80, 80, 100), (97, 131, 800, 1333)])
def test_eval_resize_rule_equals_resized_hw(h, w, min_size, max_size):
    image, target = rect_sample(h, w, [(10, 10, 30, 40)])
    x, t = eval_transforms(InputSpec(min_size=min_size, max_size=max_size))(image, target)
    assert tuple(x.shape) == (3, *resized_hw(h, w, min_size, max_size)) and t.size == tuple(x.shape[-2:])
    assert t.orig_size == (h, w)
    sy, sx = x.shape[-2] / h, x.shape[-1] / w
    assert torch.allclose(t.boxes, torch.tensor([[10 * sx, 10 * sy, 30 * sx, 40 * sy]]))
    check_consistent(x, t)


def test_normalization():
    image = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    x, _ = eval_transforms(InputSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), min_size=8, max_size=100))(
        image, rect_sample(8, 8, [])[1])
    assert torch.allclose(x[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_channel_order_and_scale_follow_the_input_spec():
    """A BGR model on [0, 255] values (cvpods DeFCN) gets its channels swapped and unscaled."""
    image = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4).clone()
    spec = InputSpec(mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 4.0), channel_order="BGR", scale_255=True, min_size=4,
                     max_size=10)
    x, _ = eval_transforms(spec)(image, rect_sample(4, 4, [])[1])
    assert torch.equal(x[:, 0, 0], torch.tensor([29.0, 9.0, 1.75]))


def test_flip_twice_is_identity():
    image, target = rect_sample(40, 60, [(3, 4, 20, 30), (30, 5, 58, 12)])
    flip = DetectionTransform(v2.RandomHorizontalFlip(1.0), IDENTITY)
    x1, t1 = flip(image, target)
    assert torch.allclose(t1.boxes[0], torch.tensor([40.0, 4.0, 57.0, 30.0]))
    check_consistent(x1, t1, tol=0)
    x2, t2 = flip(x1, t1)  # float [0, 255] values in
    assert torch.equal(x2, image.float())
    assert torch.equal(t2.boxes, target.boxes) and torch.equal(t2.masks, target.masks)


@pytest.mark.parametrize("seed", range(6))
def test_resize_keeps_boxes_on_masks(seed):
    torch.manual_seed(seed)
    image, target = rect_sample(90, 130, grid_rects(90, 130))
    x, t = DetectionTransform(RandomShorterResize([37, 61, 150, 211], 300), IDENTITY)(image, target)
    assert len(t) == len(target)
    check_consistent(x, t, tol=0.5)


@pytest.mark.parametrize("seed", range(10))
def test_crop_drops_empty_and_keeps_alignment(seed):
    torch.manual_seed(seed)
    image, target = rect_sample(100, 140, grid_rects(100, 140))
    x, t = DetectionTransform(RandomSizeCrop(30, 70), IDENTITY)(image, target)
    assert 30 <= x.shape[-2] <= 70 and 30 <= x.shape[-1] <= 70
    check_consistent(x, t, tol=0)
    # Objects kept == objects whose pixels survive; each keeps its own pixels (same params for all).
    present = sorted(int(v) - 1 for v in x[0].unique() if v > 0)
    assert t.labels.tolist() == present
    for k, label in enumerate(t.labels.tolist()):
        assert torch.equal(t.masks[k], x[0] == label + 1)


@pytest.mark.parametrize("seed", range(12))
def test_train_transforms_consistent(seed):
    torch.manual_seed(seed)
    image, target = rect_sample(120, 180, grid_rects(120, 180))
    x, t = detr_train_transforms(IDENTITY, **TINY)(image, target)
    h, w = x.shape[-2:]
    assert max(h, w) <= 213 and (min(h, w) in TINY["scales"] or max(h, w) >= 212)
    # Two resizes around a crop: each rounds masks by <= 0.5 px, the last one magnifies the
    # first's error by its scale (<= 160 / 96 here): 0.5 * 160 / 96 + 0.5 < 1.5.
    check_consistent(x, t, tol=1.5)
    for k, label in enumerate(t.labels.tolist()):  # image and masks were flipped/cropped alike
        if t.masks[k].sum() >= 50:  # thin slivers are blurred into their surroundings
            assert x[0][t.masks[k]].median().round() == label + 1


def test_train_transforms_randomness_covers_both_branches():
    image, target = rect_sample(120, 180, [(10, 20, 50, 60)])
    transform = detr_train_transforms(IDENTITY, **TINY)
    torch.manual_seed(0)
    shapes = {tuple(transform(image, target)[0].shape[-2:]) for _ in range(12)}
    assert len(shapes) > 3
    flip_only = DetectionTransform(v2.RandomHorizontalFlip(0.5), IDENTITY)
    flipped = sum(int(flip_only(image, target)[1].boxes[0, 0] != 10) for _ in range(30))
    assert 3 < flipped < 27


def test_train_transforms_default_is_detr():
    image, target = rect_sample(480, 640, [(10, 10, 100, 100)])
    torch.manual_seed(0)
    x, t = detr_train_transforms(InputSpec())(image, target)
    assert max(x.shape[-2:]) <= 1333 and min(x.shape[-2:]) in range(480, 801, 32)


def test_empty_target_and_no_masks():
    image, target = rect_sample(70, 90, [])
    torch.manual_seed(1)
    x, t = detr_train_transforms(IDENTITY, **TINY)(image, target)
    assert t.boxes.shape == (0, 4) and t.masks.shape == (0, *x.shape[-2:])
    image, target = rect_sample(70, 90, [(5, 5, 20, 30)])
    target.masks = None
    x, t = detr_train_transforms(IDENTITY, **TINY)(image, target)
    assert t.masks is None and t.size == tuple(x.shape[-2:])


def test_pil_input():
    image, target = rect_sample(50, 60, [(5, 5, 20, 30)])
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    x_pil, t_pil = eval_transforms(InputSpec(min_size=40, max_size=100))(pil, target)
    x_ten, t_ten = eval_transforms(InputSpec(min_size=40, max_size=100))(image, target)
    assert torch.equal(x_pil, x_ten) and torch.equal(t_pil.boxes, t_ten.boxes)


def brute_force_resized_hw(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """DETR's resize rule by search over integers: the shorter side is ``min_size`` unless the
    longer side would then exceed ``max_size``; then it is the integer nearest to
    max_size * short / long (halves to the even one), at least 1. The longer side is the
    largest one whose ratio to the shorter does not exceed the image's; a 1 px shorter side
    caps the longer one at ``max_size``."""
    short, long = min(h, w), max(h, w)
    new_short = min_size
    if min_size * long > max_size * short:
        # |c - max_size * short / long| compared as |c * long - max_size * short|
        new_short = max(1, min(range(min_size + 1), key=lambda c: (abs(c * long - max_size * short), c % 2)))
    new_long = new_short * long // short
    assert new_long * short <= new_short * long < (new_long + 1) * short
    if new_short == 1:
        new_long = min(new_long, max_size)
    return (new_long, new_short) if h > w else (new_short, new_long)


def test_resized_hw_equals_brute_force_on_random_sizes():
    gen = torch.Generator().manual_seed(0)
    sides = torch.exp(torch.rand(1000, 2, generator=gen) * torch.tensor([4.0, 10.0])).long()  # 1..~22000 px
    sides[::7, 0] = 1                                                           # extreme aspects (1 px rows)
    swap = torch.rand(1000, generator=gen) < 0.5
    sides[swap] = sides[swap].flip(1)
    min_sizes = torch.randint(1, 1400, (1000,), generator=gen)
    for k, ((h, w), min_size) in enumerate(zip(sides.tolist(), min_sizes.tolist())):
        max_size = [min_size, int(min_size * 1.333) + 1, 2 * min_size, max(1, min_size // 2)][k % 4]
        assert resized_hw(h, w, min_size, max_size) == brute_force_resized_hw(h, w, min_size, max_size), (h, w)
    # halves round to even: 15 * 1 / 2 = 7.5 -> 8 (the longer side overshoots to 16), 5 * 1 / 2 = 2.5 -> 2
    assert resized_hw(1, 2, 100, 15) == (8, 16) and resized_hw(2, 1, 100, 5) == (4, 2)
    # extreme aspect: the shorter side stops at 1 px and the longer one at max_size
    assert resized_hw(1, 340, 128, 170) == (1, 170) and resized_hw(2, 10_000, 800, 1333) == (1, 1333)
