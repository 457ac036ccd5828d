"""Box ops against brute-force per-pair formulas."""
import itertools

import torch

from codetr import boxes as B
from codetr.coders import ltrb_decode


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


def brute_terms(a, b):
    """(intersection, union, hull area, area of a) of two xyxy boxes, in Python floats."""
    ax0, ay0, ax1, ay1 = a.tolist()
    bx0, by0, bx1, by1 = b.tolist()
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    area_a = (ax1 - ax0) * (ay1 - ay0)
    union = area_a + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter, union, hull, area_a


def test_coverage_and_eps_conventions_against_brute_force():
    a, b = random_boxes(6, 3), random_boxes(4, 4)
    b[0] = a[0]                                           # identical boxes: IoU 1, union = hull
    eps = 50.0                                            # large enough to change every value
    cover = B.box_coverage(a, b)
    for clamp in (False, True):
        den = (lambda d: max(d, eps)) if clamp else (lambda d: d + eps)
        giou = B.generalized_box_iou(a, b, eps, clamp)
        for i, j in itertools.product(range(6), range(4)):
            inter, union, hull, area_a = brute_terms(a[i], b[j])
            assert abs(giou[i, j].item() - (inter / den(union) - (hull - union) / den(hull))) < 1e-5
            assert abs(cover[i, j].item() - inter / area_a) < 1e-6
        torch.testing.assert_close(B.elementwise_generalized_box_iou(a[:4], b, eps, clamp), giou[:4].diagonal())
        iou = B.elementwise_box_iou(a[:4], b, eps, clamp)
        want = [brute_terms(a[k], b[k]) for k in range(4)]
        torch.testing.assert_close(iou, torch.tensor([t[0] / den(t[1]) for t in want]))


def test_one_formula_equals_torchvision_and_batches():
    """Without eps the pairwise GIoU is torchvision's; our formula gives the same bits, and both
    pairwise functions accept leading batch dimensions."""
    a, b = random_boxes(7, 5), random_boxes(5, 6)
    assert torch.equal(B._giou(*B._pairwise(a, b), 0.0, False), B.generalized_box_iou(a, b))
    assert torch.equal(B.elementwise_box_iou(a[:, None], b[None]), B.box_iou(a, b))
    batch_a, batch_b = torch.stack([a, a.flip(0)]), torch.stack([b, b + 3])
    for pairwise in (B.box_iou, B.box_coverage, B.box_intersection, B.generalized_box_iou,
                     lambda x, y: B.generalized_box_iou(x, y, 1e-6)):
        batched = pairwise(batch_a, batch_b)
        assert batched.shape == (2, 7, 5)
        torch.testing.assert_close(batched[1], pairwise(a.flip(0), b + 3), rtol=0, atol=0)


def test_clamped_giou_is_the_dense_ltrb_loss():
    """cvpods' IoU loss on ltrb distances is 1 - GIoU with clamped denominators of the boxes
    around the point (0, 0), bit for bit (boxes with positive sides)."""
    from codetr.dense.losses import ltrb_giou_loss
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(50, 4, generator=g) * 9 + 0.1, torch.rand(50, 4, generator=g) * 9 + 0.1
    origin = torch.zeros(50, 2)
    eps = torch.finfo(torch.float32).eps
    giou = B.elementwise_generalized_box_iou(ltrb_decode(origin, pred), ltrb_decode(origin, target), eps,
                                             clamp=True)
    assert torch.equal(1 - giou, ltrb_giou_loss(pred, target))
