"""RoI head parity with the official Co-DETR fixtures (``golden/co_detr``), both models, and
bad-input behaviour.

Fed: the checkpoint's ``roi_head.0.*`` weights, ``eval.query_head.enc_outputs_as_feats`` (the
extractor reads the first ``len(featmap_strides)`` maps), the STORED RPN proposals
(``train.rpn_forward_train.proposal_list``; at test ``extra_eval_aux_heads['two-stage'].rpn_proposals``),
``inputs`` (img_metas, gt boxes and labels) and the RoI sampler's ``random_calls`` replayed; every
number from ``common.config`` (``roi_head[0]``, ``train_cfg[1].rcnn``, ``test_cfg[1].rcnn``).
Compared: ``train.roi0_sampling`` exactly, ``train.roi0_bbox_forward`` (``rois`` exactly, scores /
deltas / mean feats atol 1e-4), ``train.roi0_forward_train`` (losses rtol 1e-5, ``pos_coords``
boxes and labels exactly, targets and feats atol 1e-4), ``extra_eval_aux_heads['two-stage']
.bbox_results_per_class`` as sets per class (boxes 1e-3 px, scores 1e-5).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from torchvision.ops import roi_align

from codetr import rng
from codetr.assign.max_iou import max_iou_assign
from codetr.coders import delta_xywh_encode
from codetr.ops.nms import detections_per_class
from codetr.rcnn.bbox_head import BoxLossConfig, RoITestConfig, Shared2FCBBoxHead, roi_losses, roi_targets
from codetr.rcnn.roi_extractor import RoIExtractor, roi_levels
from codetr.sampling import RCNN_SAMPLING, AssignSampleConfig
from codetr.rcnn.roi_head import (RoIHead, boxes_to_rois, load_official_weights,
                                  roi_head_from_mmdet)
from codetr.sampling import random_sample
from tests.conftest import golden

MODELS = ["co_deformable_detr_r50w16", "co_dino_5scale_r50w16"]


@dataclass
class Case:
    head: RoIHead
    feats: list
    metas: list
    gts: list
    labels: list
    train: dict
    two_stage: dict


@pytest.fixture(scope="module", params=MODELS)
def case(request) -> Case:
    name = request.param
    inputs = golden(f"co_detr/{name}_inputs.pt")
    ev = golden(f"co_detr/{name}_eval.pt")
    train = golden(f"co_detr/{name}_train.pt")["train"]
    state = golden(f"co_detr/{name}_checkpoint.pt")["state_dict"]
    cfg = inputs["common"]["config"]["model"]
    head = roi_head_from_mmdet(cfg["roi_head"][0], cfg["train_cfg"][1]["rcnn"], cfg["test_cfg"][1]["rcnn"])
    load_official_weights(head, state)
    x = inputs["inputs"]
    return Case(head, ev["eval"]["query_head"]["enc_outputs_as_feats"], x["img_metas"], x["gt_bboxes"],
                x["gt_labels"], train, ev["extra_eval_aux_heads"]["two-stage"])


def train_step(case: Case):
    calls = [c for c in case.train["random_calls"] if c["phase"].startswith("roi0_forward_train")]
    with rng.replay(calls):
        return case.head.loss(case.feats, case.train["rpn_forward_train"]["proposal_list"], case.gts, case.labels)


def test_config_numbers_read(case: Case):
    ext = case.head.bbox_roi_extractor
    assert ext.output_size == 7 and ext.sampling_ratio == 0
    assert ext.finest_scale in (56.0, 112.0) and ext.num_inputs == len(case.feats) - 1
    assert case.head.bbox_head.loss_cfg == BoxLossConfig(4.0, 40.0, "giou", -1.0)
    assert case.head.sampling == AssignSampleConfig(0.5, 0.5, 0.5, False, 512, 0.25, -1, True)
    assert case.head.bbox_head.test_cfg == RoITestConfig(0.0, 0.5, 100)


def test_roi_sampling_exact(case: Case):
    out = train_step(case)
    for s, ref in zip(out.samples, case.train["roi0_sampling"], strict=True):
        a, r = ref["assign"], ref["sampling"]
        assert s.assignment.num_gts == a["num_gts"] == r["num_gts"]
        for ours, theirs in ((s.assignment.gt_inds, a["gt_inds"]), (s.assignment.max_overlaps, a["max_overlaps"]),
                             (s.assignment.labels, a["labels"]), (s.pos_inds, r["pos_inds"]), (s.neg_inds, r["neg_inds"]),
                             (s.pos_is_gt, r["pos_is_gt"]), (s.pos_assigned_gt_inds, r["pos_assigned_gt_inds"]),
                             (s.pos_boxes, r["pos_bboxes"]), (s.neg_boxes, r["neg_bboxes"]),
                             (s.pos_gt_labels, r["pos_gt_labels"])):
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_roi_bbox_forward(case: Case):
    fwd, ref = train_step(case).forward, case.train["roi0_bbox_forward"]
    assert torch.equal(fwd.rois, ref["rois"])
    torch.testing.assert_close(fwd.cls_score.detach(), ref["cls_score"], rtol=0, atol=1e-4)
    torch.testing.assert_close(fwd.bbox_pred.detach(), ref["bbox_pred"], rtol=0, atol=1e-4)
    torch.testing.assert_close(fwd.roi_feats.detach().mean((-2, -1)), ref["bbox_feats_spatial_mean"], rtol=0, atol=1e-4)


def test_roi_losses_and_pos_coords(case: Case):
    out, ref = train_step(case), case.train["roi0_forward_train"]
    assert list(out.losses) == ["loss_cls", "acc", "loss_bbox"]
    for key in ("loss_cls", "acc", "loss_bbox"):
        torch.testing.assert_close(out.losses[key].detach(), ref[key], rtol=1e-5, atol=1e-7)
    boxes, labels, targets, feats, kind = ref["pos_coords"]
    assert out.pos_coords.kind == kind == "rcnn"
    assert torch.equal(out.pos_coords.boxes, boxes) and torch.equal(out.pos_coords.labels, labels)
    torch.testing.assert_close(out.pos_coords.targets, targets, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.pos_coords.feats.detach(), feats, rtol=0, atol=1e-4)


def test_roi_losses_backward(case: Case):
    feats = [f.clone().requires_grad_(True) for f in case.feats]
    calls = [c for c in case.train["random_calls"] if c["phase"].startswith("roi0_forward_train")]
    with rng.replay(calls):
        out = case.head.loss(feats, case.train["rpn_forward_train"]["proposal_list"], case.gts, case.labels)
    (out.losses["loss_cls"] + out.losses["loss_bbox"]).backward()
    used = case.head.bbox_roi_extractor.num_inputs
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats[:used])
    assert feats[used].grad is None  # the downsampled extra level is not read


def assert_same_detections(ours: torch.Tensor, ref: torch.Tensor, px: float = 1e-3, score_tol: float = 1e-5):
    """[N, 5] rows as sets: every row of each has a partner within ``px`` / ``score_tol``."""
    assert ours.shape == ref.shape
    for a, b in ((ours, ref), (ref, ours)):
        box = torch.cdist(a[:, :4].double(), b[:, :4].double(), p=float("inf"))  # [N, N]
        near = (box <= px) & ((a[:, None, 4] - b[None, :, 4]).abs() <= score_tol)
        assert near.any(dim=1).all(), f"{int((~near.any(dim=1)).sum())} rows without a match"


def test_roi_simple_test(case: Case):
    metas = case.metas
    results = case.head.predict(case.feats, case.two_stage["rpn_proposals"], [m["img_shape"] for m in metas],
                                [m["scale_factor"] for m in metas])
    k = case.head.bbox_head.num_classes
    for (dets, labels), ref in zip(results, case.two_stage["bbox_results_per_class"], strict=True):
        assert len(ref) == k and len(dets) == sum(len(r) for r in ref) <= 100
        for got_c, ref_c in zip(detections_per_class(dets, labels, k), ref, strict=True):
            assert_same_detections(got_c, ref_c)


# -- the extractor alone ----------------------------------------------------------------------

def test_roi_levels_match_formula():
    torch.manual_seed(1)
    xy = torch.rand(200, 2) * 300
    wh = torch.cat([torch.rand(150, 2) * 600, torch.tensor([[56.0, 56.0], [112.0, 112.0], [111.9, 112.0],
                                                            [224.0, 224.0], [0.0, 10.0]] * 10)])
    rois = torch.cat([torch.zeros(200, 1), xy, xy + wh], dim=1)
    expect = [min(max(math.floor(math.log2(math.sqrt(w * h) / 56 + 1e-6)), 0), 3) for w, h in wh.tolist()]
    got = roi_levels(rois, 56, 4)
    # float32 vs float64 log2 can differ right at a power of two; none of these boxes sits there
    assert got.tolist() == expect
    assert got[150:155].tolist() == [0, 1, 0, 2, 0]
    inverted = torch.tensor([[0.0, 10.0, 10.0, 5.0, 20.0]])
    assert roi_levels(inverted, 56, 4).tolist() == [0]


def test_extractor_equals_per_roi_roi_align():
    torch.manual_seed(2)
    strides = (4, 8, 16)
    feats = [torch.randn(2, 3, 64 // s, 64 // s) for s in strides] + [torch.randn(2, 3, 2, 2)]
    xy = torch.rand(30, 2) * 40
    rois = torch.cat([torch.randint(0, 2, (30, 1)).float(), xy, xy + 1 + torch.rand(30, 2) * 60], dim=1)
    ext = RoIExtractor(strides, output_size=5, finest_scale=8)
    out = ext(feats, rois)
    levels = roi_levels(rois, 8, 3)
    assert set(levels.tolist()) == {0, 1, 2}
    for i in range(len(rois)):
        lvl = int(levels[i])
        one = roi_align(feats[lvl], rois[i:i + 1], 5, spatial_scale=1 / strides[lvl], sampling_ratio=0, aligned=True)
        assert torch.equal(out[i:i + 1], one)
    assert ext(feats, rois[:0]).shape == (0, 3, 5, 5)


# -- bad input (synthetic, no fixture) --------------------------------------------------------

def tiny_head() -> RoIHead:
    torch.manual_seed(0)
    box = Shared2FCBBoxHead(4, 3, roi_size=3, fc_channels=16, loss_cfg=BoxLossConfig(4.0, 40.0, "giou"),
                            test_cfg=RoITestConfig(0.0, 0.5, 20))
    return RoIHead(RoIExtractor((8, 16), output_size=3, finest_scale=16), box, dataclasses.replace(RCNN_SAMPLING, num=16))


def tiny_feats() -> list[torch.Tensor]:
    return [torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 4, 4, requires_grad=True)]


def finite_step(head: RoIHead, feats, proposals, gts, labels):
    out = head.loss(feats, proposals, gts, labels)
    total = out.losses["loss_cls"] + out.losses["loss_bbox"]
    total.backward()
    assert all(torch.isfinite(v).all() for v in out.losses.values())
    assert all(f.grad is None or torch.isfinite(f.grad).all() for f in feats)
    return out


def test_image_without_boxes_has_no_positives():
    head, feats = tiny_head(), tiny_feats()
    props = [torch.tensor([[0.0, 0.0, 20.0, 20.0, 0.9], [30.0, 30.0, 60.0, 50.0, 0.5]])] * 2
    gts = [torch.zeros(0, 4), torch.zeros(0, 4)]
    labels = [torch.zeros(0, dtype=torch.long)] * 2
    out = finite_step(head, feats, props, gts, labels)
    assert float(out.losses["loss_bbox"].detach()) == 0.0 and (out.targets.labels == 3).all()
    assert out.pos_coords.boxes.shape == (2, 2, 4) and (out.pos_coords.labels == 3).all()
    mixed = finite_step(tiny_head(), tiny_feats(), props, [torch.zeros(0, 4), torch.tensor([[1.0, 1.0, 21.0, 19.0]])],
                        [labels[0], torch.tensor([2])])
    assert mixed.pos_coords.boxes.shape == (2, 2, 4)  # n = min(#RoIs) = 2 (image 1 has 3)
    assert float(mixed.losses["loss_bbox"].detach()) > 0


def test_crowd_and_subpixel_boxes():
    head, feats = tiny_head(), tiny_feats()
    crowd = torch.tensor([[10.0, 10.0, 30.0, 30.0]] * 4 + [[11.0, 10.0, 30.0, 31.0]])  # identical / overlapping
    tiny = torch.tensor([[5.0, 5.0, 5.3, 5.2], [40.0, 40.0, 40.0, 41.0]])  # sub-pixel, zero width
    props = [torch.tensor([[10.0, 10.0, 30.0, 30.0, 0.9], [0.0, 0.0, 60.0, 60.0, 0.1]]),
             torch.tensor([[5.0, 5.0, 5.3, 5.2, 0.9], [40.0, 40.0, 40.0, 41.0, 0.1]])]
    out = finite_step(head, feats, props, [crowd, tiny], [torch.tensor([0, 0, 1, 2, 1]), torch.tensor([1, 2])])
    assert (out.targets.labels[:len(out.samples[0].pos_inds)] < 3).all()
    dets = head.predict([f.detach() for f in feats], props, [(64, 64), (64, 64)])
    assert all(torch.isfinite(d).all() and len(d) == len(l) for d, l in dets)


def test_zero_proposals():
    head, feats = tiny_head(), tiny_feats()
    none = [torch.zeros(0, 5), torch.zeros(0, 5)]
    only_gts = finite_step(head, feats, none, [torch.tensor([[2.0, 2.0, 30.0, 20.0]]), torch.zeros(0, 4)],
                           [torch.tensor([1]), torch.zeros(0, dtype=torch.long)])
    assert len(only_gts.forward.rois) == 1 and only_gts.pos_coords.boxes.shape == (2, 0, 4)
    empty = finite_step(tiny_head(), tiny_feats(), none, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert len(empty.forward.rois) == 0 and float(empty.losses["loss_cls"].detach()) == 0.0
    assert empty.pos_coords.feats.shape == (2, 0, 4)
    dets = head.predict([f.detach() for f in feats], none, [(64, 64), (64, 64)])
    assert [(tuple(d.shape), tuple(l.shape)) for d, l in dets] == [((0, 5), (0,)), ((0, 5), (0,))]


def test_l1_delta_targets_and_loss_by_hand():
    """Faster R-CNN's variant (``reg_decoded_bbox`` False): deltas as targets, L1 / #RoIs."""
    gts, labels = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1])
    props = torch.tensor([[1.0, 0.0, 10.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    a = max_iou_assign(props, gts, 0.5, 0.5, 0.5, False, gt_labels=labels)
    s = random_sample(a, props, gts, 8, 0.25, gt_labels=labels)  # pos: gt, prop 0; neg: prop 1
    cfg = BoxLossConfig(1.0, 1.0, "l1")
    t = roi_targets([s], 2, cfg)
    assert t.labels.tolist() == [1, 1, 2] and t.label_weights.tolist() == [1.0, 1.0, 1.0]
    expect = delta_xywh_encode(s.pos_boxes, gts.expand(2, 4), stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(t.box_targets[:2], expect)
    rois = boxes_to_rois([torch.cat([s.pos_boxes, s.neg_boxes])])
    cls, deltas = torch.randn(3, 3), torch.randn(3, 8)
    losses = roi_losses(cls, deltas, rois, t, 2, cfg)
    l1 = (deltas[:2, 4:8] - expect).abs().sum() / 3
    ce = torch.nn.functional.cross_entropy(cls, t.labels)
    torch.testing.assert_close(losses["loss_bbox"], l1)
    torch.testing.assert_close(losses["loss_cls"], ce)
