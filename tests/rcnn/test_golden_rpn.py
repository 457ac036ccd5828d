"""RPN parity with the official Co-DETR fixtures (``golden/co_detr``), both models.

Fed: the checkpoint's ``rpn_head.*`` weights and ``eval.query_head.enc_outputs_as_feats`` (the
maps the aux heads consume), ``inputs`` (img_metas, gt boxes); numbers from
``common.config``. Compared: ``train.rpn_sampling`` exactly (RPN ``random_calls`` replayed),
``train.rpn_forward_train.losses`` (rtol 1e-5), proposals as sets within 0.25 px
(``train.rpn_forward_train.proposal_list``, ``extra_eval_aux_heads['two-stage'].rpn_proposals``).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from codetr import rng
from codetr.anchors import AnchorGenerator
from codetr.rcnn.rpn import ProposalConfig, RPNHead, rpn_losses
from codetr.sampling import RPN_SAMPLING, AssignSampleConfig
from tests.conftest import golden

MODELS = ["co_deformable_detr_r50w16", "co_dino_5scale_r50w16"]


@dataclass
class Case:
    head: RPNHead
    feats: list
    metas: list
    gts: list
    train: dict
    two_stage: dict
    model_cfg: dict


def _head(model_cfg: dict) -> RPNHead:
    rh = model_cfg["rpn_head"]
    ag, coder = rh["anchor_generator"], rh["bbox_coder"]
    anchors = AnchorGenerator(ag["strides"], ag["ratios"], octave_base_scale=ag["octave_base_scale"],
                              scales_per_octave=ag["scales_per_octave"])
    return RPNHead(rh["in_channels"], rh["feat_channels"], anchors, rh["loss_cls"]["loss_weight"],
                   rh["loss_bbox"]["loss_weight"], stds=coder["target_stds"], means=coder["target_means"])


def _rpn_cfgs(cfg: dict, key: str, stage: int = 1) -> dict:
    return cfg[key][stage] if isinstance(cfg[key], list) else cfg[key]


def target_cfg(model_cfg: dict) -> AssignSampleConfig:
    rpn = _rpn_cfgs(model_cfg, "train_cfg")["rpn"]
    assert rpn["allowed_border"] == -1
    return AssignSampleConfig.from_mmdet(rpn)


@pytest.fixture(scope="module", params=MODELS)
def case(request) -> Case:
    name = request.param
    inputs = golden(f"co_detr/{name}_inputs.pt")
    ev = golden(f"co_detr/{name}_eval.pt")
    train = golden(f"co_detr/{name}_train.pt")["train"]
    state = golden(f"co_detr/{name}_checkpoint.pt")["state_dict"]
    model_cfg = inputs["common"]["config"]["model"]
    head = _head(model_cfg)
    head.load_state_dict({k[len("rpn_head."):]: v for k, v in state.items() if k.startswith("rpn_head.")})
    return Case(head, ev["eval"]["query_head"]["enc_outputs_as_feats"], inputs["inputs"]["img_metas"],
                inputs["inputs"]["gt_bboxes"], train, ev["extra_eval_aux_heads"]["two-stage"], model_cfg)


def rpn_calls(train: dict) -> list[dict]:
    return [c for c in train["random_calls"] if c["phase"].startswith("rpn_forward_train")]


def assert_same_set(ours: torch.Tensor, ref: torch.Tensor, px: float = 0.25, score_tol: float = 1e-5):
    """Each row of either [N, 5] list has a row in the other within ``px`` on every coordinate
    and ``score_tol`` on the score (near-tied rows may swap places)."""
    assert ours.shape == ref.shape
    for a, b in ((ours, ref), (ref, ours)):
        box = torch.cdist(a[:, :4].double(), b[:, :4].double(), p=float("inf"))  # [N, N]
        near = (box <= px) & ((a[:, None, 4] - b[None, :, 4]).abs() <= score_tol)
        assert near.any(dim=1).all(), f"{int((~near.any(dim=1)).sum())} rows without a match"


def test_rpn_sampling_exact(case: Case):
    cls, _ = case.head(case.feats)
    with rng.replay(rpn_calls(case.train)):
        targets = case.head.targets(cls, case.gts, [m["pad_shape"] for m in case.metas], target_cfg(case.model_cfg))
    for t, ref in zip(targets, case.train["rpn_sampling"], strict=True):
        assign, sample = ref["assign"], ref["sampling"]
        assert t.assignment.num_gts == assign["num_gts"]
        assert torch.equal(t.assignment.gt_inds, assign["gt_inds"])
        assert torch.equal(t.assignment.max_overlaps, assign["max_overlaps"])
        assert t.assignment.labels is None and assign["labels"] is None
        for ours, key in ((t.sample.pos_inds, "pos_inds"), (t.sample.neg_inds, "neg_inds"),
                          (t.sample.pos_is_gt, "pos_is_gt"), (t.sample.pos_assigned_gt_inds, "pos_assigned_gt_inds"),
                          (t.sample.pos_boxes, "pos_bboxes"), (t.sample.neg_boxes, "neg_bboxes")):
            assert ours.dtype == sample[key].dtype and torch.equal(ours, sample[key]), key


def test_rpn_losses(case: Case):
    cls, reg = case.head(case.feats)
    with rng.replay(rpn_calls(case.train)):
        losses = case.head.loss(cls, reg, case.gts, [m["pad_shape"] for m in case.metas], target_cfg(case.model_cfg))
    ref = case.train["rpn_forward_train"]["losses"]
    assert list(losses) == list(ref)
    for key in ref:
        torch.testing.assert_close(torch.stack(losses[key]).detach(), torch.stack(ref[key]), rtol=1e-5, atol=1e-7)


def test_rpn_train_proposals(case: Case):
    cls, reg = case.head(case.feats)
    cfg = ProposalConfig.from_mmdet(_rpn_cfgs(case.model_cfg, "train_cfg")["rpn_proposal"])
    props = case.head.proposals(cls, reg, [m["img_shape"] for m in case.metas], cfg)
    for ours, ref in zip(props, case.train["rpn_forward_train"]["proposal_list"], strict=True):
        assert not ours.requires_grad
        assert_same_set(ours, ref)


def test_rpn_test_proposals(case: Case):
    with torch.no_grad():
        cls, reg = case.head(case.feats)
    cfg = ProposalConfig.from_mmdet(_rpn_cfgs(case.model_cfg, "test_cfg")["rpn"])
    props = case.head.proposals(cls, reg, [m["img_shape"] for m in case.metas], cfg)
    for ours, ref in zip(props, case.two_stage["rpn_proposals"], strict=True):
        assert_same_set(ours, ref)


# -- bad input (synthetic, no fixture) --------------------------------------------------------

def tiny_head() -> RPNHead:
    torch.manual_seed(0)
    return RPNHead(8, 8, AnchorGenerator([8, 16], [0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3),
                   cls_weight=4.0, box_weight=4.0)


def tiny_feats() -> list[torch.Tensor]:
    return [torch.randn(2, 8, 8, 8, requires_grad=True), torch.randn(2, 8, 4, 4, requires_grad=True)]


def test_no_gt_boxes_all_negative_finite_loss():
    head, feats = tiny_head(), tiny_feats()
    cls, reg = head(feats)
    gts = [torch.zeros(0, 4), torch.tensor([[4.0, 4.0, 40.0, 30.0]])]
    targets = head.targets(cls, gts, [(64, 64), (48, 60)], RPN_SAMPLING)
    empty = targets[0]
    assert (empty.assignment.gt_inds == 0).all() and len(empty.sample.pos_inds) == 0
    assert len(empty.sample.neg_inds) == 256 and (empty.labels == 1).all()
    losses = rpn_losses(cls, reg, targets, 4.0, 4.0)
    total = sum(sum(v) for v in losses.values())
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(f.grad).all() for f in feats)
    only_empty = rpn_losses([c[:1] for c in cls], [r[:1] for r in reg], targets[:1], 4.0, 4.0)
    assert all(float(x.detach()) == 0.0 for x in only_empty["loss_rpn_bbox"])
    assert all(torch.isfinite(x) for x in only_empty["loss_rpn_cls"])


def test_subpixel_gt_boxes():
    head, feats = tiny_head(), tiny_feats()
    cls, reg = head(feats)
    gts = [torch.tensor([[10.0, 10.0, 10.4, 10.3]]), torch.tensor([[5.0, 5.0, 5.0, 5.5]])]  # second: zero width
    targets = head.targets(cls, gts, [(64, 64), (64, 64)], RPN_SAMPLING)
    losses = rpn_losses(cls, reg, targets, 4.0, 4.0)
    assert all(torch.isfinite(x) for v in losses.values() for x in v)
    # tiny IoUs stay below min_pos_iou: nothing is positive, nothing is ignored
    for t in targets:
        assert len(t.sample.pos_inds) == 0 and torch.isfinite(t.box_targets).all()


def test_every_proposal_filtered_gives_empty():
    head, feats = tiny_head(), tiny_feats()
    with torch.no_grad():
        cls, reg = head(feats)
    props = head.proposals(cls, reg, [(64, 64), (64, 64)], ProposalConfig(min_bbox_size=1e4))
    assert [tuple(p.shape) for p in props] == [(0, 5), (0, 5)]
    props = head.proposals(cls, reg, [(64, 64), (64, 64)], ProposalConfig(nms_pre=5, max_per_img=3))
    assert all(p.shape[0] <= 3 and p.shape[1] == 5 for p in props)
