"""POTO, the auxiliary top-k rule and FCOS assignment against brute force / hand-made cases."""
import itertools

import torch

from codetr.assign.fcos import center_region_mask, fcos_assign, inside_boxes
from codetr.assign.poto import aux_topk_assign, pairwise_iou, poto_assign, poto_quality
from codetr.boxes import box_intersection, box_iou


def brute_force_best(weights: torch.Tensor) -> float:
    """Best total weight over every injective map objects -> points."""
    G, R = weights.shape
    return max(sum(float(weights[g, p]) for g, p in enumerate(perm)) for perm in itertools.permutations(range(R), G))


def test_poto_matches_brute_force_on_random_cases():
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        G, R = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(4, 7, (1,), generator=gen))
        quality = torch.rand(G, R, generator=gen)
        candidates = torch.rand(G, R, generator=gen) < 0.6
        gt_idx, point_idx = poto_assign(quality, candidates)
        assert sorted(gt_idx.tolist()) == list(range(G))           # every object exactly once
        assert len(set(point_idx.tolist())) == G                    # one object per point
        total = float(quality.masked_fill(~candidates, -1)[gt_idx, point_idx].sum())
        assert abs(total - brute_force_best(quality.masked_fill(~candidates, -1))) < 1e-6


def test_poto_picks_points_inside_center_region_when_possible():
    # two levels: 4x4 points at stride 8 and 2x2 at stride 16 over a 32x32 image
    pts = [torch.tensor([[x * 8 + 4.0, y * 8 + 4.0] for y in range(4) for x in range(4)]),
           torch.tensor([[x * 16 + 8.0, y * 16 + 8.0] for y in range(2) for x in range(2)])]
    boxes = torch.tensor([[0.0, 0.0, 14.0, 14.0], [10.0, 10.0, 32.0, 32.0]])
    region = center_region_mask(pts, [8, 16], boxes, 1.5)
    # hand check: box 0 (center 7,7, radius 12 at stride 8 -> clipped to the box) holds (4,4),(12,4),(4,12),(12,12)
    assert region[0, :16].nonzero()[:, 0].tolist() == [0, 1, 4, 5]
    quality = torch.rand(2, 20, generator=torch.Generator().manual_seed(1))
    quality[:, 0] = 5.0  # a tempting point outside box 1's region must not be taken by box 1
    gt_idx, point_idx = poto_assign(quality, region)
    for g, p in zip(gt_idx.tolist(), point_idx.tolist()):
        assert region[g, p]


def test_poto_without_objects():
    gt_idx, point_idx = poto_assign(torch.zeros(0, 10), torch.zeros(0, 10, dtype=torch.bool))
    assert gt_idx.numel() == point_idx.numel() == 0


def test_poto_quality_formula():
    prob, iou = torch.tensor([[0.5]]), torch.tensor([[0.25]])
    assert torch.allclose(poto_quality(prob, iou, 0.8), torch.tensor([[0.5 ** 0.2 * 0.25 ** 0.8]]))


def test_aux_topk_hand_case():
    # one object, one level of 5 points, top 3 = points 0, 1, 2 with qualities 0.9, 0.2, 0.1:
    # mean + std (unbiased) = 0.4 + 0.436 -> only point 0 passes.
    quality = torch.tensor([[0.9, 0.2, 0.1, 0.05, 0.0]])
    inside = torch.tensor([[True, True, True, True, False]])
    assert aux_topk_assign(quality, [5], 3, inside).tolist() == [0, -1, -1, -1, -1]
    # the same point outside the box is not a positive
    assert aux_topk_assign(quality, [5], 3, ~inside).tolist() == [-1] * 5
    # two objects competing for a point: the higher quality wins
    quality = torch.tensor([[0.9, 0.1, 0.1], [0.95, 0.1, 0.1]])
    inside = torch.ones(2, 3, dtype=torch.bool)
    assert aux_topk_assign(quality, [3], 3, inside).tolist() == [1, -1, -1]


def test_aux_topk_small_levels_and_no_objects():
    """Levels with fewer points than k (a 1x1 P7) and images without objects work."""
    quality = torch.rand(2, 4 + 1)
    out = aux_topk_assign(quality, [4, 1], 9, torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == (5,) and ((out >= -1) & (out < 2)).all()
    assert aux_topk_assign(torch.zeros(0, 5), [4, 1], 9, torch.zeros(0, 5, dtype=torch.bool)).tolist() == [-1] * 5


def test_fcos_assign_smallest_box_and_size_range():
    pts = [torch.tensor([[4.0, 4.0], [12.0, 4.0]]), torch.tensor([[8.0, 8.0]])]
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 10.0, 10.0]])
    ranges = [(-1.0, 12.0), (12.0, float("inf"))]
    # point (4,4): both boxes contain it, max distances 12 and 6 -> both in range; smallest wins.
    # point (12,4): only box 0; max distance 12 -> in range. level-2 point (8,8): max dist 8 < 12.
    assert fcos_assign(pts, [8, 16], boxes, ranges, 0.0).tolist() == [1, 0, -1]
    assert fcos_assign(pts, [8, 16], torch.zeros(0, 4), ranges, 1.5).tolist() == [-1, -1, -1]


def test_inside_and_iou():
    assert inside_boxes(torch.tensor([[1.0, 1.0], [2.0, 1.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]])).tolist() == \
        [[True, False]]
    assert torch.allclose(pairwise_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]])),
                          torch.tensor([[1 / 3]]))


def test_pairwise_iou_is_box_iou_with_zero_for_degenerate_predictions():
    """Targets against predictions some of which are empty (a side 0) or inverted (a side < 0):
    box_iou's values where the boxes intersect, 0 (never NaN or -0) elsewhere."""
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(30, 2, generator=gen) * 20
    preds = torch.cat([xy, xy + torch.randn(30, 2, generator=gen) * 8], 1)
    preds[::4, 2] = preds[::4, 0]                                        # zero width
    preds[1] = torch.tensor([5.0, 5.0, 5.0, 5.0])                        # a point
    targets = torch.tensor([[0.0, 0, 10, 10], [5, 5, 25, 15], [5.0, 5.0, 5.0, 5.0]])
    iou = pairwise_iou(targets, preds)
    plain = box_iou(targets, preds)
    intersects = box_intersection(targets, preds) > 0
    assert torch.equal(iou[intersects], plain[intersects]) and bool(intersects.any())
    assert torch.equal(iou[~intersects], torch.zeros(int((~intersects).sum())))
    assert not bool(iou.signbit().any()) and bool(plain.isnan().any())
