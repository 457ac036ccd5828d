"""YOLACT's square pipeline keeps masks, boxes and pixels together (flip, zoom out, IoU crop,
square resize); the rest of the transforms is covered in tests/data."""
from dataclasses import replace

import pytest
import torch

from codetr.data.transforms import eval_transforms, square_train_transforms
from tests.data.test_data_transforms import IDENTITY, check_consistent, grid_rects, rect_sample


def square(size):
    return replace(IDENTITY, max_size=size, square=True)


@pytest.mark.parametrize("h, w", [(90, 130), (130, 90), (64, 64)])
def test_square_eval_resize(h, w):
    image, target = rect_sample(h, w, grid_rects(h, w))
    x, t = eval_transforms(square(96))(image, target)
    assert x.shape[-2:] == (96, 96) and len(t) == len(target)
    assert torch.allclose(t.boxes, target.boxes * torch.tensor([96 / w, 96 / h] * 2))
    check_consistent(x, t, tol=0.5)


@pytest.mark.parametrize("seed", range(6))
def test_flip_and_resize_move_pixels_with_masks(seed):
    torch.manual_seed(seed)
    image, target = rect_sample(100, 140, grid_rects(100, 140))
    x, t = square_train_transforms(square(128), ssd_augment=False)(image, target)
    check_consistent(x, t, tol=0.5)
    for k, label in enumerate(t.labels.tolist()):
        assert x[0][t.masks[k]].median().round() == label + 1


@pytest.mark.parametrize("seed", range(10))
def test_ssd_augmentation_keeps_boxes_on_masks(seed):
    """Zoom out (up to 4x) and IoU crops move boxes and masks alike; objects whose centre
    leaves the crop are dropped."""
    torch.manual_seed(seed)
    image, target = rect_sample(120, 160, grid_rects(120, 160, step=30))
    x, t = square_train_transforms(square(160), ssd_augment=True)(image, target)
    assert x.shape[-2:] == (160, 160) and len(t) <= len(target)
    check_consistent(x, t, tol=0.5)
