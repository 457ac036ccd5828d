"""ATSS assignment (``codetr.assign.atss``): exact parity with the assignment implied by the
official Co-DETR ATSS head (``train['atss0_forward_train']['pos_coords']``: per-image anchors,
labels, box targets) on both Co-DETR fixtures, a brute-force per-box loop on small random
cases, and the edge cases (no boxes, tiny boxes, ignore boxes)."""
import statistics

import pytest
import torch

from codetr.assign.atss import INF, atss_assign
from codetr.boxes import mmdet_iou
from tests.conftest import golden

FIXTURES = ["co_deformable_detr_r50w16", "co_dino_5scale_r50w16"]


# -- golden -------------------------------------------------------------------------------

def _fixture_case(name: str):
    inputs = golden(f"co_detr/{name}_inputs.pt")
    train = golden(f"co_detr/{name}_train.pt")["train"]
    feats = golden(f"co_detr/{name}_eval.pt")["eval"]["query_head"]["enc_outputs_as_feats"]
    head_cfg = inputs["common"]["config"]["model"]["bbox_head"][0]
    topk = inputs["common"]["config"]["model"]["train_cfg"][-1]["assigner"]["topk"]
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]  # one anchor per position (ratio 1, 1 scale)
    assert len(head_cfg["anchor_generator"]["ratios"]) == 1 and head_cfg["anchor_generator"]["scales_per_octave"] == 1
    return inputs["inputs"], train["atss0_forward_train"]["pos_coords"], sizes, topk, head_cfg["num_classes"]


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_official_assignment(name):
    inputs, (anchors, labels, targets, tag), sizes, topk, num_classes = _fixture_case(name)
    assert tag == "atss"
    for img in range(len(anchors)):
        valid = anchors[img].abs().sum(1) > 0  # the official unmaps invalid anchors to zero rows
        level_valid = [int(v.sum()) for v in valid.split(sizes)]
        boxes, gt_labels = inputs["gt_bboxes"][img], inputs["gt_labels"][img]
        res = atss_assign(anchors[img][valid], level_valid, boxes, gt_labels, topk=topk)
        got_labels = torch.full_like(labels[img], num_classes)
        got_labels[valid] = torch.where(res.positive, res.labels, num_classes)
        assert torch.equal(got_labels, labels[img])
        got_targets = torch.zeros_like(targets[img])
        got_targets[valid.nonzero()[res.positive, 0]] = boxes[res.gt_inds[res.positive] - 1]
        assert torch.equal(got_targets, targets[img])  # the assigned box, exactly
        assert res.positive.sum() > 0


# -- brute force --------------------------------------------------------------------------

def _reference(anchors, sizes, boxes, topk):
    """Alg. 1 one box at a time with Python lists (float64 inputs): gt index + 1 per anchor."""
    ious = mmdet_iou(anchors, boxes).tolist()
    ac = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors.tolist()]
    best = [(-INF, 0)] * len(ac)  # (iou, gt index + 1)
    for g, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        gc = ((x0 + x1) / 2, (y0 + y1) / 2)
        cands, start = [], 0
        for n in sizes:
            order = sorted(range(start, start + n), key=lambda i: (ac[i][0] - gc[0]) ** 2 + (ac[i][1] - gc[1]) ** 2)
            cands += order[:topk]
            start += n
        vals = [ious[i][g] for i in cands]
        thr = statistics.mean(vals) + statistics.stdev(vals)
        for i in cands:
            inside = min(ac[i][0] - x0, ac[i][1] - y0, x1 - ac[i][0], y1 - ac[i][1]) > 0.01
            if ious[i][g] >= thr and inside and ious[i][g] > best[i][0]:
                best[i] = (ious[i][g], g + 1)
    return torch.tensor([b[1] for b in best])


def _random_case(gen, num_boxes):
    """Anchors of 3 levels (strides 4, 8, 16 on a 32x24 image, square, 8 x stride), random boxes."""
    anchors, sizes = [], []
    for stride in (4, 8, 16):
        ys, xs = torch.meshgrid(torch.arange(0, 24, stride), torch.arange(0, 32, stride), indexing="ij")
        c = torch.stack([xs.flatten(), ys.flatten()], 1).double()
        anchors.append(torch.cat([c - 4 * stride, c + 4 * stride], 1))
        sizes.append(c.shape[0])
    xy = torch.rand(num_boxes, 2, generator=gen, dtype=torch.float64) * torch.tensor([28.0, 20.0])
    wh = 1 + torch.rand(num_boxes, 2, generator=gen, dtype=torch.float64) * 16
    return torch.cat(anchors), sizes, torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors, sizes, boxes = _random_case(gen, num_boxes=1 + seed % 6)
    labels = torch.randint(0, 5, (boxes.shape[0],), generator=gen)
    for topk in (3, 9):
        res = atss_assign(anchors, sizes, boxes, labels, topk=topk)
        ref = _reference(anchors, sizes, boxes, topk)
        assert torch.equal(res.gt_inds, ref)
        pos = ref > 0
        assert torch.equal(res.labels[pos], labels[ref[pos] - 1]) and (res.labels[~pos] == -1).all()
        ious = mmdet_iou(anchors, boxes)
        assert torch.equal(res.max_overlaps[pos], ious[pos, ref[pos] - 1]) and (res.max_overlaps[~pos] == -INF).all()


def test_highest_iou_box_wins_and_first_on_ties():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 9, 9], [0, 0, 10, 10]])  # box 2 duplicates box 0
    res = atss_assign(anchors, [4], boxes, topk=4)  # per box IoUs (v, 0, 0, 0): threshold < v
    assert res.gt_inds.tolist() == [1, 0, 0, 0]  # box 1 (IoU 0.64) loses; boxes 0 and 2 tie: the first wins
    res = atss_assign(anchors, [4], boxes[1:2], topk=4)
    assert res.gt_inds.tolist() == [1, 0, 0, 0]


# -- edge cases ---------------------------------------------------------------------------

def test_no_boxes_all_negative():
    anchors = torch.tensor([[0.0, 0, 8, 8], [8, 8, 16, 16]])
    res = atss_assign(anchors, [2], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [0, 0] and res.labels.tolist() == [-1, -1]
    assert res.max_overlaps.tolist() == [0.0, 0.0]
    res = atss_assign(torch.zeros(0, 4), [0], torch.tensor([[0.0, 0, 4, 4]]))
    assert res.gt_inds.numel() == 0 and res.labels is None


def test_sub_pixel_box_is_finite():
    """A 0.5 x 0.5 box: IoUs are tiny but finite; positives need the anchor centre inside."""
    gen = torch.Generator().manual_seed(0)
    anchors, sizes, _ = _random_case(gen, 1)
    boxes = torch.tensor([[10.1, 10.1, 10.6, 10.6], [3.99, 3.99, 4.02, 4.02]], dtype=torch.float64)
    res = atss_assign(anchors, sizes, boxes, topk=9)
    assert torch.equal(res.gt_inds, _reference(anchors, sizes, boxes, 9))
    # box 1 holds the anchor centre (4, 4) but within 0.01 of its sides: no positive
    assert not (res.gt_inds == 2).any()
    assert torch.isfinite(res.max_overlaps).all()


def test_ignored_anchors_are_marked_and_never_candidates():
    gen = torch.Generator().manual_seed(3)
    anchors, sizes, boxes = _random_case(gen, 3)
    ignore = torch.tensor([[-100.0, -100, 200, 14]], dtype=torch.float64)
    res = atss_assign(anchors, sizes, boxes, topk=9, ignore_boxes=ignore, ignore_iof_thr=0.5)
    lo, hi = torch.maximum(anchors[:, :2], ignore[:, :2]), torch.minimum(anchors[:, 2:], ignore[:, 2:])
    ignored = (hi - lo).clamp(min=0).prod(1) / (anchors[:, 2:] - anchors[:, :2]).prod(1) > 0.5
    assert ignored.any() and (~ignored).any()
    assert (res.gt_inds[ignored & ~res.positive] == -1).all() and (res.gt_inds[~ignored] >= 0).all()
    # level 0 has 48 anchors, enough non-ignored ones: its ignored anchors are never candidates
    level0 = torch.arange(anchors.shape[0]) < sizes[0]
    assert not res.positive[ignored & level0].any()
    off = atss_assign(anchors, sizes, boxes, topk=9, ignore_boxes=ignore, ignore_iof_thr=-1)
    assert (off.gt_inds >= 0).all()


def test_bad_level_sizes():
    with pytest.raises(ValueError, match="level_sizes"):
        atss_assign(torch.zeros(3, 4), [2], torch.zeros(1, 4))
