"""The one home of mmdet's ``avg_factor`` reduction (``losses``) and ``bbox2result`` (``ops.nms``)."""
import torch

from codetr.losses import F32_EPS, reduce_by_avg_factor
from codetr.ops.nms import detections_per_class


def test_reduce_by_avg_factor_is_mmdet_weight_reduce_loss():
    torch.manual_seed(0)
    loss = torch.rand(7, 4)
    assert F32_EPS == torch.finfo(torch.float32).eps
    assert torch.equal(reduce_by_avg_factor(loss, 3), loss.sum() / (3 + F32_EPS))
    per_level = torch.tensor([2.0, 0.0, 5.0])  # already summed: divided element-wise
    assert torch.equal(reduce_by_avg_factor(per_level, 4.0, summed=True), per_level / (4.0 + F32_EPS))
    assert torch.equal(reduce_by_avg_factor(loss, 2.0, eps=0.0), loss.sum() / 2.0)


def test_detections_per_class_keeps_order_and_empty_classes():
    dets = torch.arange(20.0).reshape(4, 5)
    per_class = detections_per_class(dets, torch.tensor([2, 0, 2, 0]), 4)
    assert [len(d) for d in per_class] == [2, 0, 2, 0]
    assert torch.equal(per_class[2], dets[[0, 2]]) and per_class[1].shape == (0, 5)
