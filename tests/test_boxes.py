"""Box ops against brute-force per-pair formulas."""
import itertools

import torch

from codetr import boxes as B


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 0.5
    return torch.cat([xy, xy + wh], 1)


def brute_iou_giou(a, b):
    ax0, ay0, ax1, ay1 = a.tolist()
    bx0, by0, bx1, by1 = b.tolist()
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union, inter / union - (hull - union) / hull


def test_iou_and_giou_against_brute_force():
    a, b = random_boxes(7, 0), random_boxes(5, 1)
    iou, giou = B.box_iou(a, b), B.generalized_box_iou(a, b)
    for i, j in itertools.product(range(7), range(5)):
        ref_iou, ref_giou = brute_iou_giou(a[i], b[j])
        assert abs(iou[i, j].item() - ref_iou) < 1e-5
        assert abs(giou[i, j].item() - ref_giou) < 1e-5
    elementwise = B.elementwise_generalized_box_iou(a[:5], b)
    torch.testing.assert_close(elementwise, giou[:5].diagonal())


def test_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert B.generalized_box_iou(a, a).item() == 1.0
    far = torch.tensor([[4.0, 0.0, 6.0, 2.0]])  # disjoint: IoU 0, hull 12, union 8
    assert abs(B.generalized_box_iou(a, far).item() - (0 - 4 / 12)) < 1e-7


def test_conversions_round_trip():
    x = random_boxes(10, 2)
    torch.testing.assert_close(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(x)), x)
    torch.testing.assert_close(B.xywh_to_xyxy(B.xyxy_to_xywh(x)), x)
    assert torch.equal(B.xyxy_to_cxcywh(torch.tensor([[1.0, 2.0, 5.0, 10.0]])), torch.tensor([[3.0, 6.0, 4.0, 8.0]]))


def test_inverse_sigmoid_inverts_sigmoid():
    x = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(B.inverse_sigmoid(x.sigmoid()), x, atol=1e-4, rtol=0)
