"""Max-IoU assignment, random / pseudo sampling and the random-draw seam: hand-written IoU
matrices, brute force, zero targets, replayed draws."""
from __future__ import annotations

import pytest
import torch

from codetr import rng
from codetr.assign.max_iou import assign_overlaps, max_iou_assign
from codetr.boxes import mmdet_iou
from codetr.sampling import pseudo_sample, random_sample


def test_assign_hand_written_matrix():
    # rows: gts, cols: boxes
    o = torch.tensor([[0.80, 0.20, 0.50, 0.00, 0.10],
                      [0.75, 0.10, 0.50, 0.35, 0.45]])
    a = assign_overlaps(o, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                        gt_labels=torch.tensor([7, 3]))
    # box0: pos gt0 (0.8). box1: neg (< .3). box2: 0.5 ignored. box3: ignored .35.
    # box4: gt1's best (0.75 at box0) -> low quality re-assigns box0 to gt1 (later gt wins)
    assert a.gt_inds.tolist() == [2, 0, -1, -1, -1]
    assert a.max_overlaps.tolist() == pytest.approx([0.8, 0.2, 0.5, 0.35, 0.45])
    assert a.labels.tolist() == [3, -1, -1, -1, -1]
    b = assign_overlaps(o, 0.7, 0.3, 0.3, match_low_quality=False)
    assert b.gt_inds.tolist() == [1, 0, -1, -1, -1] and b.labels is None
    c = assign_overlaps(o, 0.9, (0.15, 0.3), 0.3)  # neg interval, ties: both 0.5s for neither
    assert c.gt_inds.tolist() == [2, 0, -1, -1, -1]
    assert assign_overlaps(o, 0.9, (0.15, 0.3), 0.3, match_low_quality=False).gt_inds.tolist() == [-1, 0, -1, -1, -1]


def test_low_quality_all_equal_maxima():
    o = torch.tensor([[0.4, 0.4, 0.1], [0.1, 0.2, 0.2]])
    assert assign_overlaps(o, 0.7, 0.3, 0.3).gt_inds.tolist() == [1, 1, 0]
    assert assign_overlaps(o, 0.7, 0.3, 0.3, gt_max_assign_all=False).gt_inds.tolist() == [1, -1, 0]
    assert assign_overlaps(o, 0.7, 0.3, 0.1).gt_inds.tolist() == [1, 2, 2]


def brute_assign(o: torch.Tensor, pos, neg, min_pos):
    """Loops over boxes and gts; thresholds rounded to float32 as torch compares a float32
    tensor with a Python float."""
    pos, neg, min_pos = (float(torch.tensor(x, dtype=torch.float32)) for x in (pos, neg, min_pos))
    g, n = o.shape
    out = []
    for j in range(n):
        col = o[:, j].tolist()
        best = max(col)
        v = -1
        if 0 <= best < neg:
            v = 0
        if best >= pos:
            v = col.index(best) + 1
        for i in range(g):
            if max(o[i].tolist()) >= min_pos and o[i, j] == max(o[i].tolist()):
                v = i + 1
        out.append(v)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_assign_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    o = (torch.rand(4, 30, generator=g) * 10).round() / 10  # many exact ties
    assert assign_overlaps(o, 0.7, 0.3, 0.3).gt_inds.tolist() == brute_assign(o, 0.7, 0.3, 0.3)


def test_assign_zero_gts_and_zero_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 8.0, 9.0]])
    a = max_iou_assign(boxes, torch.zeros(0, 4), 0.7, 0.3, gt_labels=torch.zeros(0, dtype=torch.long))
    assert a.num_gts == 0 and a.gt_inds.tolist() == [0, 0] and a.max_overlaps.tolist() == [0, 0]
    assert a.labels.tolist() == [-1, -1]
    b = max_iou_assign(torch.zeros(0, 4), boxes, 0.7, 0.3)
    assert b.gt_inds.shape == (0,) and b.num_gts == 2


def test_iou_union_clamp_and_ignore_regions():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 3.0, 3.0], [20.0, 20.0, 30.0, 30.0]])
    iou = mmdet_iou(gt, boxes)
    assert iou.tolist() == [[1.0, 0.0, 0.0]]
    assert mmdet_iou(boxes[1:2], boxes[1:2]).tolist() == [[0.0]]  # 0 / max(0, 1e-6), not NaN
    ignore = torch.tensor([[19.0, 19.0, 31.0, 31.0]])
    a = max_iou_assign(boxes, gt, 0.5, 0.3, gt_ignore=ignore, ignore_iof_thr=0.5)
    assert a.gt_inds.tolist() == [1, 0, -1]


def _assignment(gt_inds):
    from codetr.assign.max_iou import MaxIoUAssignment
    t = torch.tensor(gt_inds)
    return MaxIoUAssignment(2, t, torch.zeros(len(t)), None)


def test_random_sample_draw_order_and_replay():
    gt_inds = [1, 0, 2, 0, 0, 1, -1, 0, 2]
    boxes = torch.arange(9.0)[:, None].repeat(1, 4)
    gts = torch.tensor([[0.0, 0, 5, 5], [1.0, 1, 6, 6]])
    # 4 positives for 2 slots (num 4 x 0.5), then 4 negatives for 2 slots: two draws
    calls = [{"fn": "randperm", "site": "pos", "phase": "t", "value": torch.tensor([3, 0, 1, 2])},
             {"fn": "randperm", "site": "neg", "phase": "t", "value": torch.tensor([2, 1, 0, 3])}]
    with rng.replay(calls):
        s = random_sample(_assignment(gt_inds), boxes, gts, num=4, pos_fraction=0.5, add_gt_as_proposals=False)
    assert s.pos_inds.tolist() == [0, 8]  # positives [0, 2, 5, 8][[3, 0]], sorted
    assert s.neg_inds.tolist() == [3, 4]  # negatives [1, 3, 4, 7][[2, 1]], sorted
    assert s.pos_assigned_gt_inds.tolist() == [0, 1] and s.pos_is_gt.tolist() == [0, 0]
    assert torch.equal(s.pos_gt_boxes, gts[[0, 1]]) and torch.equal(s.neg_boxes, boxes[[3, 4]])


def test_random_sample_gt_as_proposals_and_neg_pos_ub():
    boxes = torch.arange(6.0)[:, None].repeat(1, 4)
    gts = torch.tensor([[0.0, 0, 5, 5]])
    a = _assignment([0, 0, 1, 0, 0, 0])
    a.labels = torch.tensor([-1, -1, 4, -1, -1, -1])
    s = random_sample(a, boxes, gts, num=8, pos_fraction=0.25, neg_pos_ub=2,
                      gt_labels=torch.tensor([4]))  # pos: gt + box -> 2 slots exactly, no draw
    assert s.pos_inds.tolist() == [0, 3] and s.pos_is_gt.tolist() == [1, 0]
    assert len(s.neg_inds) == 4 and s.boxes.shape == (7, 4)  # ub 2 x 2 positives, drawn
    assert s.pos_gt_labels.tolist() == [4, 4]
    assert s.assignment.max_overlaps[0] == 1.0
    with pytest.raises(ValueError):
        random_sample(a, boxes, gts, num=8, pos_fraction=0.25)


def test_pseudo_sample_takes_all():
    s = pseudo_sample(_assignment([1, 0, -1, 2, 0]), torch.zeros(5, 4), torch.ones(2, 4))
    assert s.pos_inds.tolist() == [0, 3] and s.neg_inds.tolist() == [1, 4]
    assert s.pos_assigned_gt_inds.tolist() == [0, 1]


def test_seam_draws_torch_when_not_replaying():
    torch.manual_seed(5)
    ours = (rng.randperm(10, "cpu"), rng.rand_like(torch.zeros(3)), rng.randint_like(torch.zeros(4), 0, 2))
    torch.manual_seed(5)
    ref = (torch.randperm(10), torch.rand_like(torch.zeros(3)), torch.randint_like(torch.zeros(4), 0, 2))
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_replay_checks_name_shape_and_count():
    calls = [{"fn": "rand_like", "site": "a", "phase": "p", "value": torch.tensor([0.5, 0.25])},
             {"fn": "randint_like", "site": "b", "phase": "p", "value": torch.tensor([1.0, 0.0])}]
    with rng.replay(calls):
        assert rng.rand_like(torch.zeros(2, dtype=torch.float64)).tolist() == [0.5, 0.25]
        v = rng.randint_like(torch.zeros(2), 0, 2)
        assert v.dtype == torch.float32 and v.tolist() == [1.0, 0.0]
    with pytest.raises(rng.ReplayError, match="randperm"):
        with rng.replay(calls):
            rng.randperm(2)
    with pytest.raises(rng.ReplayError, match="shape"):
        with rng.replay(calls):
            rng.rand_like(torch.zeros(3))
    with pytest.raises(rng.ReplayError, match="left unused"):
        with rng.replay(calls):
            rng.rand_like(torch.zeros(2))
    with pytest.raises(rng.ReplayError, match="only 2 recorded"):
        with rng.replay(calls):
            rng.rand_like(torch.zeros(2))
            rng.randint_like(torch.zeros(2), 0, 2)
            rng.rand_like(torch.zeros(2))
    assert rng.randperm(3).shape == (3,)  # back to torch after the block
