"""Fast NMS on hand-made cases."""
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
