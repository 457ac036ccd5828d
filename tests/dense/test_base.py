"""The dense-detector skeleton's pieces: prior-major flattening, candidate selection against
brute force, NMS + top detections, score composition."""
import torch

from codetr.anchors import AnchorGenerator
from codetr.dense.base import class_only, geometric_mean, keep_top, per_prior, times_quality, top_candidates


def test_per_prior_follows_the_anchor_order():
    """Channel a*C + c at (y, x) is prior (y * W + x) * A + a, as ``AnchorGenerator`` lists them."""
    a, c, h, w = 2, 3, 4, 5
    maps = torch.arange(a * c * h * w, dtype=torch.float32).view(1, a * c, h, w)
    flat = per_prior(maps, c)[0]  # [H*W*A, C]
    for y, x, i, k in [(0, 0, 0, 0), (1, 2, 1, 2), (3, 4, 1, 0)]:
        assert flat[(y * w + x) * a + i, k] == maps[0, i * c + k, y, x]
    anchors = AnchorGenerator([8], [0.5, 2.0], scales=[4.0]).grid_anchors([(h, w)], "cpu")[0]
    assert anchors.shape[0] == flat.shape[0]


def test_top_candidates_equal_brute_force():
    torch.manual_seed(0)
    scores = torch.rand(50, 4)
    got_scores, prior, label = top_candidates(scores, 10, 0.3)
    ranked = sorted(((float(scores[r, k]), r, k) for r in range(50) for k in range(4) if scores[r, k] > 0.3),
                    reverse=True)[:10]
    assert got_scores.tolist() == [s for s, _, _ in ranked]
    assert prior.tolist() == [r for _, r, _ in ranked] and label.tolist() == [k for _, _, k in ranked]
    empty = top_candidates(scores, 10, 1.0)
    assert all(t.numel() == 0 for t in empty)


def test_keep_top_is_class_aware_and_sorted():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    b, s, l = keep_top(boxes, scores, labels, 0.5, 10)
    assert torch.equal(s, scores[[0, 2, 3]]) and l.tolist() == [0, 1, 0]  # box 1 overlaps box 0 of its class
    b, s, l = keep_top(boxes, scores, labels, None, 2)
    assert torch.equal(s, scores[:2]) and torch.equal(b, boxes[:2])
    b, s, l = keep_top(boxes[:0], scores[:0], labels[:0], 0.5, 10)
    assert b.shape == (0, 4) and s.numel() == 0 and l.numel() == 0


def test_score_rules():
    p, q = torch.tensor([0.25, 0.64]), torch.tensor([1.0, 0.25])
    assert torch.equal(class_only(p, None), p)
    assert torch.equal(times_quality(p, q), p * q)
    torch.testing.assert_close(geometric_mean(p, q), torch.tensor([0.5, 0.4]))
