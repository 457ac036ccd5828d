"""Fast NMS on hand-made cases."""
import pytest
import torch
from torchvision.ops import nms

from codetr.yolact.fast_nms import cross_class_fast_nms, fast_nms

# A, B, C shifted by 2: IoU(A, B) = IoU(B, C) = 2/3, IoU(A, C) = 3/7; D far away
BOXES = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10], [50, 50, 60, 60]], dtype=torch.float32)
COEFFS = torch.arange(8, dtype=torch.float32).view(4, 2)


def test_suppressed_boxes_still_suppress():
    """The chain A > B > C: greedy NMS keeps A and C, Fast NMS drops C too (B suppresses it)."""
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    assert nms(BOXES, scores[0], 0.5).tolist() == [0, 2, 3]
    r = fast_nms(BOXES, COEFFS, scores, 0.5)
    assert torch.equal(r.boxes, BOXES[[0, 3]]) and torch.equal(r.coeffs, COEFFS[[0, 3]])
    assert r.labels.tolist() == [0, 0] and torch.allclose(r.scores, torch.tensor([0.9, 0.6]))


def test_per_class_then_sorted_over_classes():
    scores = torch.tensor([[0.9, 0.8, 0.0, 0.7],     # class 0: A keeps, B and C suppressed, D kept
                           [0.1, 0.2, 0.05, 0.0]])   # class 1: B first, A and C suppressed, D kept
    r = fast_nms(BOXES, COEFFS, scores, 0.5)
    assert r.labels.tolist() == [0, 0, 1, 1]
    assert torch.allclose(r.scores, torch.tensor([0.9, 0.7, 0.2, 0.0]))
    assert torch.equal(r.boxes, BOXES[[0, 3, 1, 3]]) and torch.equal(r.coeffs, COEFFS[[0, 3, 1, 3]])


def test_top_k_and_max_detections():
    far = torch.tensor([[20.0 * i, 0, 20.0 * i + 10, 10] for i in range(6)])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    r = fast_nms(far, torch.zeros(6, 1), scores, 0.5, top_k=3)
    assert torch.allclose(r.scores, torch.tensor([0.9, 0.8, 0.7]))
    r = fast_nms(far, torch.zeros(6, 1), torch.cat([scores, scores - 0.05]), 0.5, max_detections=5)
    assert torch.allclose(r.scores, torch.tensor([0.9, 0.85, 0.8, 0.75, 0.7])) and r.labels.tolist() == [0, 1, 0, 1, 0]


def test_cross_class_suppresses_across_classes():
    scores = torch.tensor([[0.9, 0.0, 0.0, 0.1],
                           [0.0, 0.8, 0.3, 0.6]])
    r = cross_class_fast_nms(BOXES, COEFFS, scores, 0.5)
    # best classes: A 0 (0.9), B 1 (0.8), C 1 (0.3), D 1 (0.6); B and C fall to A / B
    assert r.labels.tolist() == [0, 1] and torch.equal(r.boxes, BOXES[[0, 3]])
    assert torch.allclose(r.scores, torch.tensor([0.9, 0.6]))


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def slow_fast_nms(boxes, scores, threshold, top_k, max_detections):
    """The rule one candidate at a time: per class, rank by score, keep the top_k; a candidate
    survives unless a better-ranked one of its class (suppressed or not) overlaps it above
    ``threshold``. Survivors of all classes by score, capped. -> [(score, class, box index)]."""
    kept = []
    for c, row in enumerate(scores.tolist()):
        ranked = sorted(range(len(row)), key=lambda i: -row[i])[:top_k]
        for r, j in enumerate(ranked):
            if all(iou(boxes[i], boxes[j]) <= threshold for i in ranked[:r]):
                kept.append((row[j], c, j))
    return sorted(kept, key=lambda d: -d[0])[:max_detections]


def random_detections(seed, n, num_classes):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 20 + 1], 1)
    return boxes, torch.randn(n, 3, generator=g), torch.rand(num_classes, n, generator=g)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_fast_nms_equals_slow_loop_on_random_boxes(seed, threshold):
    boxes, coeffs, scores = random_detections(seed, 60, 3)
    top_k, max_detections = (200, 100) if seed % 2 else (15, 20)
    r = fast_nms(boxes, coeffs, scores, threshold, top_k, max_detections)
    want = slow_fast_nms(boxes.tolist(), scores, threshold, top_k, max_detections)
    index = torch.tensor([j for _, _, j in want])
    assert r.labels.tolist() == [c for _, c, _ in want]
    assert torch.equal(r.boxes, boxes[index]) and torch.equal(r.coeffs, coeffs[index])
    torch.testing.assert_close(r.scores, torch.tensor([s for s, _, _ in want]), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_cross_class_fast_nms_equals_slow_loop_on_best_classes(seed):
    boxes, coeffs, scores = random_detections(seed, 60, 3)
    best, best_class = scores.max(0)
    want = slow_fast_nms(boxes.tolist(), best[None], 0.5, 40, 10_000)   # one "class": the best scores
    index = torch.tensor([j for _, _, j in want])
    r = cross_class_fast_nms(boxes, coeffs, scores, 0.5, top_k=40)
    assert torch.equal(r.boxes, boxes[index]) and torch.equal(r.coeffs, coeffs[index])
    assert torch.equal(r.labels, best_class[index]) and torch.equal(r.scores, best[index])
