"""DINO's contrastive denoising on hand-computed small cases."""
import math

import pytest
import torch
from torch import nn

from codetr.assign import HungarianMatcher
from codetr.boxes import cxcywh_to_xyxy, inverse_sigmoid
from codetr.detr.denoising import (build_dn_queries, dn_attention_mask, dn_positive_indices, draw_dn_noise,
                                   num_dn_groups)
from codetr.detr.dino_criterion import DINOCriterion, dino_loss_weights


@pytest.mark.parametrize("dn_number, max_objects, groups", [
    (5, 3, 10),     # 2 * dn_number < 100: that many groups, whatever the object count
    (49, 7, 98),
    (50, 7, 7),     # >= 100: a query budget, 100 // (2 * 7)
    (100, 5, 20),   # official default: 200 // 10
    (100, 150, 1),  # budget smaller than one group: still one
    (100, 0, 1),    # no object in the batch
])
def test_group_count(dn_number, max_objects, groups):
    assert num_dn_groups(dn_number, max_objects) == groups


def test_attention_mask_pattern():
    """single_pad 1, 2 groups (each: 1 positive + 1 negative), 2 matching queries."""
    T, F = True, False
    expected = torch.tensor([
        # g0  g0  g1  g1  m   m
        [F, F, T, T, F, F],   # group 0 sees itself and the matching queries
        [F, F, T, T, F, F],
        [T, T, F, F, F, F],   # group 1 likewise
        [T, T, F, F, F, F],
        [T, T, T, T, F, F],   # matching queries see no denoising query
        [T, T, T, T, F, F],
    ])
    assert torch.equal(dn_attention_mask(1, 2, 2, torch.device("cpu")), expected)


def test_attention_mask_blocks_other_groups():
    sp, groups, nq = 2, 3, 4
    mask = dn_attention_mask(sp, groups, nq, torch.device("cpu"))
    pad = 2 * sp * groups
    assert mask.shape == (pad + nq, pad + nq)
    for i in range(pad):
        for j in range(pad):
            assert mask[i, j] == (i // (2 * sp) != j // (2 * sp))
    assert mask[pad:, :pad].all() and not mask[:, pad:].any()


def test_noise_layout_and_box_ranges():
    """Copies are ordered group by group, positives then negatives; positive corners move by
    less than scale * half the side, negatives by [1, 2) times that (no clamping here)."""
    torch.manual_seed(0)
    n, groups, scale = 3, 50, 0.4
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.1], [0.4, 0.6, 0.1, 0.3], [0.5, 0.45, 0.3, 0.3]])
    labels = torch.tensor([1, 2, 3])
    noised_labels, noised = draw_dn_noise(labels, boxes, groups, num_classes=5, label_noise_ratio=0.0,
                                          box_noise_scale=scale)
    assert noised.shape == (2 * groups * n, 4)
    assert torch.equal(noised_labels, labels.repeat(2 * groups))
    moved = (cxcywh_to_xyxy(noised) - cxcywh_to_xyxy(boxes.repeat(2 * groups, 1))).abs()
    half = boxes[:, 2:].repeat(1, 2).repeat(2 * groups, 1) / 2
    ratio = (moved / (scale * half)).view(groups, 2, n, 4)  # [group, positive/negative, object, corner]
    eps = 1e-4
    assert ratio[:, 0].max() < 1 + eps
    assert ratio[:, 1].min() > 1 - eps and ratio[:, 1].max() < 2 + eps
    assert ratio[:, 0].mean() < 0.6 and ratio[:, 1].mean() > 1.4  # roughly uniform over each range


def test_label_flips():
    torch.manual_seed(0)
    labels = torch.full((1000,), 7)
    boxes = torch.full((1000, 4), 0.5)
    flipped, _ = draw_dn_noise(labels, boxes, 1, num_classes=1000, label_noise_ratio=0.6, box_noise_scale=0.0)
    changed = (flipped != 7).float().mean().item()
    assert abs(changed - 0.3) < 0.03  # ratio / 2 of the labels are redrawn (a redraw may hit 7: 1/1000)
    assert flipped.min() >= 0 and flipped.max() < 1000


def test_boxes_at_the_border_are_clamped():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.02, 0.98, 0.04, 0.04]])
    _, noised = draw_dn_noise(torch.tensor([0]), boxes, 20, 2, 0.0, 1.0)
    corners = cxcywh_to_xyxy(noised)
    assert corners.min() >= 0 and corners.max() <= 1


def test_queries_are_scattered_into_padded_slots():
    """Images with 1 and 2 objects, 2 groups: single_pad 2, pad 8. Copy k of object j of an
    image sits at slot k * 2 + j; image 0's second slot of every copy is padding."""
    label_enc = nn.Embedding(6, 4)
    counts, groups = [1, 2], 2
    # objects in batch order: (image 0, obj 0), (image 1, obj 0), (image 1, obj 1); 4 copies each
    labels = torch.tensor([0, 1, 2] * 4)
    boxes = torch.rand(12, 4) * 0.8 + 0.1
    dn = build_dn_queries(counts, labels, boxes, label_enc, groups, num_queries=3)
    assert (dn.pad_size, dn.single_pad, dn.num_groups) == (8, 2, 2)
    assert dn.content.shape == (2, 8, 4) and dn.boxes.shape == (2, 8, 4) and dn.attn_mask.shape == (11, 11)
    for copy in range(4):
        rows = slice(3 * copy, 3 * copy + 3)
        c_labels, c_boxes = labels[rows], boxes[rows]
        torch.testing.assert_close(dn.content[0, 2 * copy], label_enc.weight[c_labels[0]])
        torch.testing.assert_close(dn.content[1, 2 * copy:2 * copy + 2], label_enc.weight[c_labels[1:]])
        torch.testing.assert_close(dn.boxes[0, 2 * copy], inverse_sigmoid(c_boxes[0], eps=1e-3))
        torch.testing.assert_close(dn.boxes[1, 2 * copy:2 * copy + 2], inverse_sigmoid(c_boxes[1:], eps=1e-3))
        assert not dn.content[0, 2 * copy + 1].any() and not dn.boxes[0, 2 * copy + 1].any()


def test_no_objects_gives_no_queries():
    dn = build_dn_queries([0, 0], torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), nn.Embedding(3, 4),
                          num_dn_groups(100, 0), num_queries=5)
    assert dn.pad_size == 0 and dn.content.shape == (2, 0, 4)
    assert not dn.attn_mask.any() and dn.attn_mask.shape == (5, 5)


def test_positive_indices():
    """counts [1, 2], 2 groups of 4 slots: positives of group g start at 4 g."""
    (q0, t0), (q1, t1), (q2, t2) = dn_positive_indices([1, 2, 0], 2, 8, torch.device("cpu"))
    assert q0.tolist() == [0, 4] and t0.tolist() == [0, 0]
    assert q1.tolist() == [0, 1, 4, 5] and t1.tolist() == [0, 1, 0, 1]
    assert q2.numel() == 0 and t2.numel() == 0


def dn_outputs(targets, groups, pad, num_classes, exact: bool):
    """Fake model outputs whose positive denoising boxes equal their own object (``exact``) or
    another object of the image."""
    B = len(targets)
    boxes = torch.rand(B, pad, 4) * 0.3 + 0.3
    for b, (q, t) in enumerate(dn_positive_indices([len(x["labels"]) for x in targets], groups, pad, torch.device("cpu"))):
        src = t if exact else t.flip(0)
        boxes[b, q] = targets[b]["boxes"][src]
    known = {"pred_logits": torch.zeros(B, pad, num_classes), "pred_boxes": boxes}
    return {"pred_logits": torch.zeros(B, 5, num_classes), "pred_boxes": torch.rand(B, 5, 4) * 0.3 + 0.3,
            "dn_meta": {"pad_size": pad, "num_dn_group": groups, "output_known_lbs_bboxes": known}}


def test_dn_loss_uses_index_correspondence_and_official_normalisation():
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])},
               {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.6, 0.6, 0.2, 0.3], [0.4, 0.5, 0.3, 0.1]])}]
    crit = DINOCriterion(3, HungarianMatcher(), dino_loss_weights(0, True, 1, 5, 2), enc_class_aware=True)
    exact = crit(dn_outputs(targets, 2, 8, 3, exact=True), targets)
    assert exact["loss_bbox_dn"] == 0 and exact["loss_giou_dn"].abs() < 1e-3  # GIoU eps 1e-6 / area
    swapped = crit(dn_outputs(targets, 2, 8, 3, exact=False), targets)
    assert swapped["loss_bbox_dn"] > 0.1  # image 1's copies swapped: no matching rescues them
    # zero logits: focal = alpha_t * 0.25 * ln 2 per element; positives (3 objects x 2 groups)
    # get alpha 0.25, the other 2 * 8 * 3 - 6 elements 0.75; divided by num_boxes * groups = 6
    expected = (6 * 0.25 + 42 * 0.75) * 0.25 * math.log(2) / 6
    assert math.isclose(exact["loss_ce_dn"].item(), expected, rel_tol=1e-5)


def test_dn_losses_are_zero_without_denoising():
    crit = DINOCriterion(3, HungarianMatcher(), dino_loss_weights(1, True, 1, 5, 2), enc_class_aware=True)
    out = {"pred_logits": torch.zeros(1, 5, 3), "pred_boxes": torch.full((1, 5, 4), 0.5),
           "aux_outputs": [{"pred_logits": torch.zeros(1, 5, 3), "pred_boxes": torch.full((1, 5, 4), 0.5)}],
           "interm_outputs": {"pred_logits": torch.zeros(1, 5, 3), "pred_boxes": torch.full((1, 5, 4), 0.5)},
           "dn_meta": {"pad_size": 0, "num_dn_group": 1}}
    losses = crit(out, [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}])
    for key in ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_xy_dn", "loss_hw_dn", "cardinality_error_dn",
                "loss_ce_dn_0", "loss_bbox_dn_0", "cardinality_error_dn_0"):
        assert losses[key] == 0, key
    assert set(losses) >= set(crit.weight_dict)
