"""Co-DETR eval parity with the official fixtures (``golden/co_detr``), both models, through
``load_official('co_detr', checkpoint, common.config)``.

Fed: ``inputs.img`` and the valid sizes of ``inputs.img_metas``. Compared (fixture README
tolerances): backbone maps (Co-Def) / their summary (Co-DINO) and neck maps (atol 1e-3),
``enc_outputs_as_feats`` (1e-3), the two-stage selection (``enc_topk_indices`` exactly; scores and
boxes 1e-4), every decoder layer (``transformer.inter_states``, ``inter_references``,
``query_head.all_cls_scores`` / ``all_bbox_preds``, 1e-4), final detections as sets per class
(``bbox_results_per_class``: boxes 1e-3 px, scores 1e-5; Co-DINO through soft-NMS), the aux test
paths ``extra_eval_aux_heads['one-stage' | 'two-stage']`` through ``eval_module``, the positive
queries (``train.aux_targets[k]`` -> ``train.query_head_forward_aux[k]``), and the Detector
contract (``detect`` / ``predict`` give Detections in original pixels).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import pytest
import torch

from codetr.co_detr import CoDETR
from codetr.convert import load_official
from codetr.ops.nms import detections_per_class
from codetr.structures import Detections
from tests.conftest import golden
from tests.rcnn.test_golden_roi import assert_same_detections

MODELS = ["co_deformable_detr_r50w16", "co_dino_5scale_r50w16"]
HEAD_ATOL, FEAT_ATOL = 1e-4, 1e-3


@dataclass
class Case:
    name: str
    model: CoDETR
    raw: dict
    config: dict       # the full official config
    checkpoint: dict
    inputs: dict
    ev: dict           # eval.pt['eval']
    extra: dict        # eval.pt['extra_eval_aux_heads']
    train: dict

    @property
    def sizes(self) -> torch.Tensor:
        return torch.tensor([m["img_shape"][:2] for m in self.inputs["img_metas"]])

    @property
    def scale_factors(self) -> list[torch.Tensor]:
        return [m["scale_factor"] for m in self.inputs["img_metas"]]


@pytest.fixture(scope="module", params=MODELS)
def case(request) -> Case:
    name = request.param
    inputs, ev = golden(f"co_detr/{name}_inputs.pt"), golden(f"co_detr/{name}_eval.pt")
    ckpt = golden(f"co_detr/{name}_checkpoint.pt")
    config = inputs["common"]["config"]
    model = load_official("co_detr", ckpt, config).eval()
    x = inputs["inputs"]
    sizes = torch.tensor([m["img_shape"][:2] for m in x["img_metas"]])
    with torch.no_grad():
        raw = model.forward_raw(x["img"], sizes)
    return Case(name, model, raw, config, ckpt, x, ev["eval"], ev["extra_eval_aux_heads"],
                golden(f"co_detr/{name}_train.pt")["train"])


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(ours.detach(), ref, rtol=0, atol=atol)


def assert_same_per_class(results: list[tuple[torch.Tensor, torch.Tensor]] | list[Detections], refs: list,
                          num_classes: int) -> None:
    """Per image, per class: the same rows as a set (boxes 1e-3 px, scores 1e-5)."""
    assert len(results) == len(refs)
    for res, ref in zip(results, refs):
        if isinstance(res, Detections):
            res = (torch.cat([res.boxes, res.scores[:, None]], 1), res.labels)
        for ours, theirs in zip(detections_per_class(*res, num_classes), ref, strict=True):
            assert_same_detections(ours, theirs)


def test_config_read(case: Case):
    c = case.model.config
    assert c.variant == ("deformable" if "deformable" in case.name else "dino")
    assert (c.num_classes, c.embed_dims, c.enc_layers, c.dec_layers, c.ffn_dim) == (20, 64, 2, 2, 256)
    assert c.num_queries == (60 if c.variant == "deformable" else 80)
    assert c.num_levels == len(case.ev["neck_feats"]) and c.eval_module == "detr" and c.with_attn_mask
    if c.variant == "deformable":
        assert (c.pe_offset, c.pe_temperature, c.max_per_img, c.nms, c.cls_loss) == (0.5, 10000.0, 100, None, "focal")
        assert c.look_forward_twice and c.with_coord_feat and c.max_pos_coords == 32
    else:
        assert (c.pe_offset, c.pe_temperature, c.max_per_img, c.cls_loss) == (0.0, 20.0, 300, "qfl")
        assert c.nms == {"type": "soft_nms", "iou_threshold": 0.8} and not c.with_coord_feat
        assert (c.dn_label_noise, c.dn_box_noise, c.dn_num_queries) == (0.5, 1.0, 100)
    assert len(c.roi_heads) == len(c.atss_heads) == 1 and c.rpn is not None
    spec = case.model.input_spec
    assert (spec.min_size, spec.max_size, spec.size_divisibility, spec.scale_255) == (256, 320, 1, True)


def test_converter_is_strict_and_names_keys(case: Case):
    state = dict(case.checkpoint["state_dict"])
    state["query_head.extra.weight"] = torch.zeros(1)
    missing = "query_head.transformer.encoder.layers.0.norms.1.weight"
    del state[missing]
    with pytest.raises(ValueError, match=r"query_head\.extra\.weight.*encoder\.layers\.0\.norm2\.weight"):
        load_official("co_detr", {**case.checkpoint, "state_dict": state}, case.config)


def test_config_from_checkpoint_meta(case: Case):
    """No config given: the mmcv text in ``meta['config']`` builds the same architecture."""
    model = load_official("co_detr", case.checkpoint)
    assert model.config == case.model.config


def test_backbone_and_neck(case: Case):
    inter = case.raw["_inter"]
    if "backbone_feats" in case.ev:
        for ours, ref in zip(inter.backbone_feats, case.ev["backbone_feats"], strict=True):
            close(ours, ref, FEAT_ATOL)
    else:
        for ours, s in zip(inter.backbone_feats, case.ev["backbone_feats_summary"], strict=True):
            assert list(ours.shape) == list(s["shape"])
            assert float(ours.double().sum()) == pytest.approx(s["sum"], rel=1e-5)
            assert float(ours.abs().max()) == pytest.approx(s["absmax"], abs=FEAT_ATOL)
    for ours, ref in zip(inter.neck_feats, case.ev["neck_feats"], strict=True):
        close(ours, ref, FEAT_ATOL)


def test_encoder_as_multiscale_maps(case: Case):
    maps = case.raw["enc_outputs_as_feats"]
    refs = case.ev["query_head"]["enc_outputs_as_feats"]
    assert len(maps) == len(refs) == case.model.config.num_levels + 1
    for ours, ref in zip(maps, refs):
        close(ours, ref, FEAT_ATOL)


def test_two_stage_selection(case: Case):
    qh, sel = case.ev["query_head"], case.raw["_inter"].head.selection
    assert torch.equal(sel.topk, qh["enc_topk_indices"])
    if case.model.config.variant == "deformable":
        close(case.raw["enc_outputs_class"], qh["enc_outputs_class"], HEAD_ATOL)
        close(case.raw["enc_outputs_coord"], qh["enc_outputs_coord"], HEAD_ATOL)
        close(sel.coords_unact, case.ev["transformer"]["enc_outputs_coord_unact"], HEAD_ATOL)
    else:
        close(sel.logits, qh["enc_outputs_class_full"], HEAD_ATOL)
        close(case.raw["enc_topk_scores"], qh["enc_topk_scores"], HEAD_ATOL)
        close(case.raw["enc_topk_anchors"], qh["enc_topk_anchors"], HEAD_ATOL)


def test_decoder_layers(case: Case):
    head, tr, qh = case.raw["_inter"].head, case.ev["transformer"], case.ev["query_head"]
    close(head.dec.hidden, tr["inter_states"].transpose(1, 2), HEAD_ATOL)        # [L, Q, B, C] -> [L, B, Q, C]
    refs = torch.stack(head.dec.references)                                       # [L + 1, B, Q, 4]
    if case.model.config.variant == "deformable":
        close(refs[0], tr["init_reference"], HEAD_ATOL)
        close(refs[1:], tr["inter_references"], HEAD_ATOL)
    else:
        close(refs, tr["inter_references"], HEAD_ATOL)
    close(case.raw["all_cls_scores"], qh["all_cls_scores"], HEAD_ATOL)
    close(case.raw["all_bbox_preds"], qh["all_bbox_preds"], HEAD_ATOL)


def test_detections(case: Case):
    dets = case.model.postprocess(case.raw, case.sizes, case.scale_factors)
    for d, ref in zip(dets, case.ev["det_results"], strict=True):
        assert len(d.scores) == len(ref["det_labels"])
    assert_same_per_class(dets, case.ev["bbox_results_per_class"], case.model.num_classes)


def test_soft_nms_inputs(case: Case):
    """Co-DINO: the boxes handed to the soft-NMS are already in original pixels (official rescale)."""
    if not case.ev["batched_nms_calls"]:
        pytest.skip("Co-Deformable-DETR runs no NMS")
    logits, boxes = case.raw["all_cls_scores"][-1], case.raw["all_bbox_preds"][-1]
    model = copy.copy(case.model)  # same weights, the NMS off: query_detections stops at the NMS input
    model.config = dataclasses.replace(model.config, nms=None, max_per_img=model.config.num_queries)
    for i, call in enumerate(case.ev["batched_nms_calls"]):
        d = model.query_detections(logits[i], boxes[i], tuple(case.sizes[i].tolist()), case.scale_factors[i])
        assert torch.equal(d.labels.sort()[0], call["idxs"].sort()[0])
        assert_same_detections(torch.cat([d.boxes, d.scores[:, None]], 1),
                               torch.cat([call["boxes"], call["scores"][:, None]], 1))


@pytest.mark.parametrize("module", ["one-stage", "two-stage"])
def test_aux_test_paths(case: Case, module: str):
    config = copy.deepcopy(case.config)
    config["model"]["eval_module"] = module
    model = load_official("co_detr", case.checkpoint, config).eval()
    with torch.no_grad():
        dets = model.postprocess(model(case.inputs["img"], case.sizes), case.sizes, case.scale_factors)
        if module == "two-stage":
            props = model.aux_heads.test_proposals(case.raw["enc_outputs_as_feats"], case.sizes.tolist())
            for ours, ref in zip(props, case.extra[module]["rpn_proposals"], strict=True):
                assert_same_detections(ours, ref, px=0.25, score_tol=1e-5)
    assert_same_per_class(dets, case.extra[module]["bbox_results_per_class"], model.num_classes)


@pytest.mark.parametrize("head", [0, 1])
def test_positive_queries(case: Case, head: int):
    """``forward_positive`` on the stored ``aux_targets[head]`` (0: RoI, 1: ATSS positives) ->
    ``query_head_forward_aux[head]``; the memory equals the eval one (README)."""
    coords, *_, feats, _ = case.train["aux_targets"][head]
    ref_logits, ref_boxes, _, _ = case.train["query_head_forward_aux"][head]
    with torch.no_grad():
        logits, boxes = case.model.query_head.forward_positive(case.raw["_inter"].head.enc, coords, feats, head)
    close(logits, ref_logits, HEAD_ATOL)
    close(boxes, ref_boxes, HEAD_ATOL)


def test_one_pass_equals_separate_passes(case: Case):
    """``decode`` with both heads' positive queries joined to the main queries (training's one
    decoder pass, block-diagonal self-attention) = the main pass and each head's own pass."""
    head = case.raw["_inter"].head
    positives = [(aux[0], aux[-2]) for aux in case.train["aux_targets"]]
    with torch.no_grad():
        joint, per_head = case.model.query_head.decode(head.enc, head.maps, None, positives)
        for k, (coords, feats) in enumerate(positives):
            alone = case.model.query_head.forward_positive(head.enc, coords, feats, k)
            close(per_head[k][0], alone[0], 1e-5)
            close(per_head[k][1], alone[1], 1e-5)
    close(joint.logits, head.logits, 1e-5)
    close(joint.boxes, head.boxes, 1e-5)
    close(joint.dec.hidden, head.dec.hidden, 1e-5)


def test_detect_gives_original_pixels(case: Case):
    """``detect`` (the predict path) with the fixture's batch = the official rescaled results;
    factors from (valid size / original size) match the official scale_factor to ~1e-7."""
    orig = [tuple(m["ori_shape"][:2]) for m in case.inputs["img_metas"]]
    dets = case.model.detect(case.inputs["img"], case.sizes, orig)
    assert_same_per_class(dets, case.ev["bbox_results_per_class"], case.model.num_classes)


def test_predict_contract(case: Case):
    image = torch.as_tensor(case.inputs["raw_images_bgr_uint8"][1]).flip(-1).permute(2, 0, 1)  # BGR -> RGB [3, H, W]
    (det,) = case.model.predict(image)
    h, w = image.shape[-2:]
    assert isinstance(det, Detections) and len(det.scores) <= case.model.config.max_per_img
    assert det.boxes.shape[1] == 4 and (det.boxes[:, 2:] <= torch.tensor([w, h]) + 1e-3).all()
    assert not case.model.training
