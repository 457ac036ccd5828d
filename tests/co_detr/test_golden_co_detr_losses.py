"""Co-DETR query-head losses and positive-query targets against the official code (both
fixtures of ../shared/golden/co_detr), from the recorded head outputs; then gradients and empty
ground truth on the same outputs."""
import math

import pytest
import torch

from codetr import rng
from codetr.co_detr.aux_targets import AuxTargets, get_aux_targets
from codetr.co_detr.criterion import (GroundTruth, LossWeights, co_deformable_detr_criterion, co_dino_criterion,
                                      layer_losses)
from codetr.dense.atss import PosCoords
from codetr.detr.criterion import FocalClassLoss, Matched, QualityFocalClassLoss
from codetr.rcnn.roi_head import RoIPosCoords
from tests.conftest import golden

NUM_CLASSES = 20
VARIANTS = {  # fixture prefix -> (criterion factory, max_pos_coords of its config)
    "co_deformable_detr_r50w16": (co_deformable_detr_criterion, 32),
    "co_dino_5scale_r50w16": (co_dino_criterion, 300),
}
QUERY_HEAD_KEY = ("loss_cls", "loss_bbox", "loss_iou")


@pytest.fixture(scope="module", params=list(VARIANTS))
def fx(request):
    name = request.param
    train = golden(f"co_detr/{name}_train.pt")["train"]
    inputs = golden(f"co_detr/{name}_inputs.pt")["inputs"]
    gt = GroundTruth(list(inputs["gt_bboxes"]), list(inputs["gt_labels"]),
                     [tuple(m["img_shape"][:2]) for m in inputs["img_metas"]])
    make, max_pos_coords = VARIANTS[name]
    # the L+1 maps the aux heads ran on (the train ones are equal, not stored twice)
    feats = golden(f"co_detr/{name}_eval.pt")["eval"]["query_head"]["enc_outputs_as_feats"]
    return {"train": train, "gt": gt, "make": make, "max_pos_coords": max_pos_coords, "feats": feats}


def head_inputs(train: dict, requires_grad: bool = False) -> tuple:
    """(all_cls_scores, all_bbox_preds, enc scores, enc boxes, dn_meta) of the recorded forward."""
    f = train["query_head_forward"]
    two_stage = ("enc_outputs_class", "enc_outputs_coord"), ("enc_topk_scores", "enc_topk_anchors")
    enc = two_stage[0] if "enc_outputs_class" in f else two_stage[1]
    tensors = [f[k].clone().requires_grad_(requires_grad) for k in ("all_cls_scores", "all_bbox_preds") + enc]
    dn_meta = train["dn_generator"]["dn_meta"] if "dn_generator" in train else None
    return (*tensors, dn_meta)


class RecordingMatcher:
    """Wraps a matcher, keeping (num queries, labels, match) of every call in order."""

    def __init__(self, matcher):
        self.matcher, self.calls = matcher, []

    def __call__(self, logits, boxes, labels, gt_boxes, img_wh):
        match = self.matcher(logits, boxes, labels, gt_boxes, img_wh)
        self.calls.append((logits.shape[0], labels, match))
        return match


def official_assignment(num_queries: int, labels: torch.Tensor, match) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet AssignResult fields: gt_inds [Q] (0 unmatched, i > 0 gt i-1), labels [Q] (-1 unmatched)."""
    rows, cols = match
    gt_inds = torch.zeros(num_queries, dtype=torch.long)
    gt_inds[rows] = cols + 1
    assigned = torch.full((num_queries,), -1, dtype=torch.long)
    assigned[rows] = labels[cols]
    return gt_inds, assigned


def test_hungarian_reproduces_every_official_call_in_order(fx):
    criterion = fx["make"]()
    criterion.matcher = RecordingMatcher(criterion.matcher)
    *tensors, dn_meta = head_inputs(fx["train"])
    criterion(*tensors, fx["gt"], dn_meta)
    official = fx["train"]["query_head_hungarian_assign"]
    assert len(criterion.matcher.calls) == len(official) == 6
    for (num_queries, labels, match), ref in zip(criterion.matcher.calls, official):
        gt_inds, assigned = official_assignment(num_queries, labels, match)
        assert ref["num_gts"] == len(labels)
        assert torch.equal(gt_inds, ref["gt_inds"]) and torch.equal(assigned, ref["labels"])


def check_losses(ours: dict, official: dict, keys: list[str]) -> None:
    assert list(ours) == keys
    for key in keys:
        torch.testing.assert_close(ours[key].reshape(()), official[key].reshape(()), rtol=1e-5, atol=0, msg=key)


def test_query_head_losses_match_official(fx):
    train = fx["train"]
    *tensors, dn_meta = head_inputs(train)
    ours = fx["make"]()(*tensors, fx["gt"], dn_meta)
    keys = [k for k in train["loss_keys_in_order"] if k.split(".")[-1].removeprefix("enc_").removeprefix("dn_")
            in QUERY_HEAD_KEY]
    assert len(keys) == (15 if dn_meta else 9)
    check_losses(ours, train["losses"], keys)


def aux_targets_from_fixture(fx) -> list[AuxTargets]:
    """get_aux_targets of the RoI head (0) and the ATSS head (1), the recorded draws replayed."""
    train, gt = fx["train"], fx["gt"]
    roi = RoIPosCoords(*train["roi0_forward_train"]["pos_coords"][:4])
    atss = PosCoords(*train["atss0_forward_train"]["pos_coords"][:3])
    draws = [c for c in train["random_calls"] if c["phase"] == "forward_train_aux/aux_targets"]
    with rng.replay(draws):  # RoI then ATSS, each image: subsampling, padding; all consumed
        return [get_aux_targets(roi, gt.img_hw, NUM_CLASSES, fx["max_pos_coords"]),
                get_aux_targets(atss, gt.img_hw, NUM_CLASSES, fx["max_pos_coords"], fx["feats"])]


def test_aux_targets_match_official(fx):
    for ours, ref in zip(aux_targets_from_fixture(fx), fx["train"]["aux_targets"]):
        coords, labels, targets, label_weights, bbox_weights, feats, attn_masks = ref
        assert torch.equal(ours.labels, labels) and attn_masks is None
        assert torch.equal(ours.label_weights, label_weights) and torch.equal(ours.bbox_weights, bbox_weights)
        for a, b in ((ours.coords, coords), (ours.targets, targets), (ours.feats, feats)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_aux_losses_match_official(fx):
    train = fx["train"]
    criterion = fx["make"]()
    for k, (aux, ref) in enumerate(zip(aux_targets_from_fixture(fx), train["aux_targets"])):
        official = AuxTargets(ref[0], ref[1], ref[2], ref[5], NUM_CLASSES)
        assert torch.equal(aux.labels, official.labels)
        cls_scores, bbox_preds = train["query_head_forward_aux"][k][:2]
        ours = criterion.aux_losses(cls_scores, bbox_preds, official, fx["gt"].img_hw, k)
        check_losses(ours, train["losses"], [key for key in train["loss_keys_in_order"] if key.endswith(f"_aux{k}")])


# -- gradients ---------------------------------------------------------------------------

def test_losses_are_differentiable_in_every_input(fx):
    *tensors, dn_meta = head_inputs(fx["train"], requires_grad=True)
    losses = fx["make"]()(*tensors, fx["gt"], dn_meta)
    sum(losses.values()).backward()
    for t in tensors:
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def qfl_case():
    """One image, 2 queries, 3 classes; query 1 matched to class 2 with IoU 0.6: pred
    (0.3, 0.3, 0.7, 0.7), target (0.4, 0.3, 0.8, 0.7): inter 0.12, union 0.2."""
    logits = torch.tensor([[[0.3, -1.2, 0.5], [-0.4, 0.8, 1.1]]], dtype=torch.float64)
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4]]], dtype=torch.float64)
    target = torch.tensor([[0.6, 0.5, 0.4, 0.4]], dtype=torch.float64)
    matched = Matched(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), target)
    return logits, boxes, matched


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_quality_focal_loss_is_the_gfl_formula():
    logits, boxes, matched = qfl_case()
    p = logits.sigmoid()[0].tolist()
    expected = sum(bce(p[q][c], 0.0) * p[q][c] ** 2 for q in range(2) for c in range(3) if (q, c) != (1, 2))
    expected += bce(p[1][2], 0.6) * abs(0.6 - p[1][2]) ** 2
    ours = QualityFocalClassLoss(beta=2.0)(logits, boxes, matched, normaliser=2.0)
    assert ours.item() == pytest.approx(expected / 2.0, rel=1e-12)


def test_focal_loss_is_the_retinanet_formula():
    logits, boxes, matched = qfl_case()
    p = logits.sigmoid()[0].tolist()
    expected = sum(0.75 * p[q][c] ** 2 * -math.log(1 - p[q][c]) for q in range(2) for c in range(3) if (q, c) != (1, 2))
    expected += 0.25 * (1 - p[1][2]) ** 2 * -math.log(p[1][2])
    assert FocalClassLoss(0.25, 2.0)(logits, boxes, matched, 1.0).item() == pytest.approx(expected, rel=1e-12)


def test_layer_losses_gradients_match_finite_differences():
    """Brute force (float64 central differences) on a small case. The quality target is the
    detached IoU (official): finite differences would see it move with the boxes, so the box
    gradients are checked with the focal class loss, the logits' with both."""
    logits, boxes, matched = qfl_case()
    scales = torch.tensor([[320.0, 240.0, 320.0, 240.0]], dtype=torch.float64)
    logits.requires_grad_()

    def total(class_loss, lg, bx):
        return sum(layer_losses(lg, bx, matched, scales, class_loss, LossWeights(cls=1.0)))

    box_leaf = boxes.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda lg, bx: total(FocalClassLoss(), lg, bx), (logits, box_leaf))
    assert torch.autograd.gradcheck(lambda lg: total(QualityFocalClassLoss(), lg, boxes), (logits,))
    cls = QualityFocalClassLoss()(logits, boxes.requires_grad_(), matched, 1.0)
    assert torch.autograd.grad(cls, boxes, allow_unused=True)[0] is None


# -- empty ground truth ------------------------------------------------------------------

def empty_gt(gt: GroundTruth, images: list[int]) -> GroundTruth:
    boxes = [b[:0] if i in images else b for i, b in enumerate(gt.boxes)]
    labels = [lab[:0] if i in images else lab for i, lab in enumerate(gt.labels)]
    return GroundTruth(boxes, labels, gt.img_hw)


@pytest.mark.parametrize("empty", [[0], [0, 1]])
def test_empty_ground_truth_gives_finite_losses(fx, empty):
    cls_scores, bbox_preds, enc_scores, enc_boxes, dn_meta = head_inputs(fx["train"])
    if dn_meta is not None and len(empty) == 2:  # no objects in the batch: one group, no dn queries
        pad, dn_meta = dn_meta["pad_size"], {"pad_size": 0, "num_dn_group": 1}
        cls_scores, bbox_preds = cls_scores[:, :, pad:].clone(), bbox_preds[:, :, pad:].clone()
    inputs = [t.requires_grad_() for t in (cls_scores, bbox_preds, enc_scores, enc_boxes)]
    losses = fx["make"]()(*inputs, empty_gt(fx["gt"], empty), dn_meta)
    assert all(torch.isfinite(v) for v in losses.values())
    if len(empty) == 2:
        assert all(v.item() == 0 for k, v in losses.items() if "loss_cls" not in k)
        assert all(v.item() > 0 for k, v in losses.items() if "loss_cls" in k and "dn_" not in k)
    sum(losses.values()).backward()
    assert all(t.grad is None or torch.isfinite(t.grad).all() for t in inputs) and inputs[0].grad is not None


def test_empty_ground_truth_gives_nine_negative_aux_queries(fx):
    """Every ATSS anchor negative: M = 9 random negatives per image, finite aux losses."""
    train = fx["train"]
    anchors, labels, targets = train["atss0_forward_train"]["pos_coords"][:3]
    pos_coords = PosCoords(anchors, [torch.full_like(lab, NUM_CLASSES) for lab in labels], [t * 0 for t in targets])
    aux = get_aux_targets(pos_coords, fx["gt"].img_hw, NUM_CLASSES, fx["max_pos_coords"], fx["feats"])
    assert aux.labels.shape == (2, 9) and (aux.labels == NUM_CLASSES).all() and aux.bbox_weights.sum() == 0
    cls_scores = train["query_head_forward_aux"][1][0][:, :, :9].clone().requires_grad_()
    bbox_preds = train["query_head_forward_aux"][1][1][:, :, :9]
    losses = fx["make"]().aux_losses(cls_scores, bbox_preds, aux, fx["gt"].img_hw, 1)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all((v.item() > 0) == ("loss_cls" in k) for k, v in losses.items())
    sum(losses.values()).backward()
    assert torch.isfinite(cls_scores.grad).all()


def test_lambda_1_scales_only_the_aux_losses(fx):
    train = fx["train"]
    ref = train["aux_targets"][0]
    official = AuxTargets(ref[0], ref[1], ref[2], ref[5], NUM_CLASSES)
    cls_scores, bbox_preds = train["query_head_forward_aux"][0][:2]
    base = fx["make"]().aux_losses(cls_scores, bbox_preds, official, fx["gt"].img_hw, 0)
    scaled = fx["make"](lambda_1=3.0).aux_losses(cls_scores, bbox_preds, official, fx["gt"].img_hw, 0)
    assert list(scaled) == list(base) and all(torch.allclose(scaled[k], 3 * base[k]) for k in base)
