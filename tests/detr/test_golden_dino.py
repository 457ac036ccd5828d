"""Parity with the official DINO (DINO_4scale, shrunk) on ../shared/golden."""
import pytest
import torch

from codetr.boxes import cxcywh_to_xyxy
from codetr.convert import load_official
from codetr.detr.denoising import dn_positive_indices, draw_dn_noise, num_dn_groups
from codetr.structures import Target
from tests.conftest import golden

FIXTURE = "detr/dino_4scale_r50_tiny.pt"


@pytest.fixture(scope="module")
def fx():
    return golden(FIXTURE)


@pytest.fixture(scope="module")
def model_and_out(fx):
    torch.set_num_threads(2)
    model = load_official("dino", fx["checkpoint"], fx["config"]).eval()
    inp = fx["inputs"]
    with torch.no_grad():
        out = model.forward_raw(inp["samples_tensor"], inp["image_sizes"])
    return model, out


@pytest.fixture(scope="module")
def train_out(model_and_out, fx):
    """Train-mode forward on the official targets with the official (recorded) denoising noise."""
    model = model_and_out[0]
    cr, inp = fx["criterion"], fx["inputs"]
    noise = (cr["dn_inputs"]["known_labels_expaned"], cr["dn_inputs"]["known_bbox_expand"])
    model.train()
    try:
        with torch.no_grad():
            out = model.forward_raw(inp["samples_tensor"], inp["image_sizes"], cr["targets"], noise)
    finally:
        model.eval()
    return out


def close(a, b, atol):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


def close_outputs(ours, ref):
    close(ours["pred_logits"], ref["pred_logits"], 1e-4)
    close(ours["pred_boxes"], ref["pred_boxes"], 1e-5)


def test_config_is_read_from_official_args(model_and_out):
    c = model_and_out[0].config
    assert (c.enc_layers, c.dec_layers, c.num_queries, c.ffn_dim, c.dn_number, c.num_select) == (2, 2, 30, 256, 5, 20)
    assert (c.num_classes, c.labelbook_size, c.return_interm_indices, c.num_feature_levels) == (91, 91, [1, 2, 3], 4)
    assert (c.pe_temperature_h, c.pe_temperature_w, c.dn_box_noise_scale, c.dn_label_noise_ratio) == (20, 20, 0.4, 0.5)
    model = model_and_out[0]
    assert model.class_embed[0] is model.class_embed[1] and model.enc_class_embed is not model.class_embed[0]


def test_intermediates(model_and_out, fx):
    inter, gi = model_and_out[1]["_inter"], fx["eval_intermediates"]
    for ours, ref in zip(inter["srcs"], gi["srcs"], strict=True):
        close(ours, ref, 1e-4)
    for ours, ref in zip(inter["masks"], gi["masks"], strict=True):
        assert torch.equal(ours, ref)
    for ours, ref in zip(inter["pos"], gi["pos"], strict=True):
        close(ours, ref, 1e-4)
    close(inter["memory"], gi["memory"], 1e-4)
    close(inter["enc_logits"], gi["enc_outputs_class_unselected"], 1e-4)
    close(inter["selection_scores"], gi["enc_selection_scores"], 1e-4)
    assert torch.equal(inter["topk"], gi["topk_proposals"])
    ours, ref = inter["output_proposals"], gi["output_proposals"]
    assert torch.equal(ours.isinf(), ref.isinf())
    close(ours[~ours.isinf()], ref[~ref.isinf()], 1e-5)
    close(inter["init_box_proposal"], gi["init_box_proposal"], 1e-5)
    close(inter["hs"], gi["hs"], 1e-4)
    close(inter["references"], gi["references"], 1e-5)
    close(inter["memory_topk"], gi["hs_enc"][0], 1e-4)
    close(inter["ref_unact"].sigmoid(), gi["ref_enc"][0], 1e-5)


def test_eval_outputs(model_and_out, fx):
    out, ref = model_and_out[1], fx["eval_outputs"]
    close_outputs(out, ref)
    assert len(out["aux_outputs"]) == len(ref["aux_outputs"]) == 1
    for a, b in zip(out["aux_outputs"], ref["aux_outputs"]):
        close_outputs(a, b)
    close_outputs(out["interm_outputs"], ref["interm_outputs"])
    assert "dn_meta" not in out


def test_eval_forward_returns_official_keys(model_and_out, fx):
    model = model_and_out[0]
    with torch.no_grad():
        out = model(fx["inputs"]["samples_tensor"], fx["inputs"]["image_sizes"])
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs", "interm_outputs"}


def test_postprocess(model_and_out, fx):
    model, out = model_and_out
    pp = fx["postprocess"]
    assert model.config.num_select == pp["num_select"] and model.config.nms_iou_threshold == pp["nms_iou_threshold"]
    for d, r in zip(model.postprocess(out, pp["target_sizes"]), pp["results"], strict=True):
        assert torch.equal(d.labels, r["labels"])
        close(d.scores, r["scores"], 1e-5)
        close(d.boxes, r["boxes"], 1e-3)


def test_detect_matches_official_postprocess(model_and_out, fx):
    model = model_and_out[0]
    inp = fx["inputs"]
    dets = model.detect(inp["samples_tensor"], inp["image_sizes"], [tuple(s) for s in inp["orig_target_sizes"].tolist()])
    for d, r in zip(dets, fx["postprocess"]["results"], strict=True):
        assert torch.equal(d.labels, r["labels"])
        close(d.scores, r["scores"], 1e-5)
        close(d.boxes, r["boxes"], 1e-3)


def test_criterion_on_official_outputs(model_and_out, fx):
    model = model_and_out[0]
    cr = fx["criterion"]
    assert model.criterion.weight_dict == {k: float(v) for k, v in cr["weight_dict"].items()}
    with torch.no_grad():
        losses = model.criterion(cr["outputs"], cr["targets"])
    assert set(losses) == set(cr["loss_dict"])
    for k, v in cr["loss_dict"].items():
        torch.testing.assert_close(losses[k].float(), v.float(), rtol=1e-5, atol=1e-6, msg=k)


def test_matcher_indices(model_and_out, fx):
    model = model_and_out[0]
    cr = fx["criterion"]
    outs = cr["outputs"]
    calls = {"main": outs, "aux_0": outs["aux_outputs"][0], "interm": outs["interm_outputs"]}
    assert set(calls) == set(cr["matcher_indices"])
    for name, o in calls.items():
        ours = model.criterion.matcher(o["pred_logits"], o["pred_boxes"], cr["targets"])
        for (q, j), (rq, rj) in zip(ours, cr["matcher_indices"][name], strict=True):
            assert torch.equal(q, rq) and torch.equal(j, rj), name


def test_denoising_indices_are_official(fx):
    """The denoising loss's fixed assignment equals the official dn_pos_idx of every dn call."""
    cr = fx["criterion"]
    meta = cr["outputs"]["dn_meta"]
    counts = [len(t["labels"]) for t in cr["targets"]]
    ours = dn_positive_indices(counts, meta["num_dn_group"], meta["pad_size"], torch.device("cpu"))
    dn_calls = [c for c in cr["get_loss_calls"] if c["num_boxes"] == sum(counts) * meta["num_dn_group"]]
    assert len(dn_calls) == 6  # labels, boxes, cardinality x (final, aux_0)
    for call in dn_calls:
        for (q, j), (rq, rj) in zip(ours, call["indices"], strict=True):
            assert torch.equal(q, rq) and torch.equal(j, rj)


def test_noise_draw_reproduces_official_stream(fx):
    """Same seed, same random calls in the same order: the official noise, bit for bit."""
    cr = fx["criterion"]
    cfg, dn_in = fx["config"], cr["dn_inputs"]
    labels = torch.cat([t["labels"] for t in cr["targets"]])
    boxes = torch.cat([t["boxes"] for t in cr["targets"]])
    groups = num_dn_groups(cfg["dn_number"], max(len(t["labels"]) for t in cr["targets"]))
    assert groups == dn_in["dn_meta_in"]["num_dn_group"] == 10
    torch.manual_seed(cr["train_forward_seed"])
    noised_labels, noised_boxes = draw_dn_noise(labels, boxes, groups, cfg["num_classes"],
                                                cfg["dn_label_noise_ratio"], cfg["dn_box_noise_scale"])
    assert torch.equal(noised_labels, dn_in["known_labels_expaned"])
    assert torch.equal(noised_boxes, dn_in["known_bbox_expand"])


def test_denoising_queries(train_out, fx):
    dn, dn_in = train_out["_inter"]["dn"], fx["criterion"]["dn_inputs"]
    assert (dn.pad_size, dn.num_groups) == (dn_in["dn_meta_in"]["pad_size"], dn_in["dn_meta_in"]["num_dn_group"])
    close(dn.content, dn_in["input_query_label"], 1e-6)
    close(dn.boxes, dn_in["input_query_bbox"], 1e-5)
    assert torch.equal(dn.attn_mask, dn_in["attn_mask"])


def test_train_outputs(train_out, fx):
    ref = fx["criterion"]["outputs"]
    close_outputs(train_out, ref)
    close_outputs(train_out["aux_outputs"][0], ref["aux_outputs"][0])
    close_outputs(train_out["interm_outputs"], ref["interm_outputs"])
    meta, ref_meta = train_out["dn_meta"], ref["dn_meta"]
    assert (meta["pad_size"], meta["num_dn_group"]) == (ref_meta["pad_size"], ref_meta["num_dn_group"])
    known, ref_known = meta["output_known_lbs_bboxes"], ref_meta["output_known_lbs_bboxes"]
    close_outputs(known, ref_known)
    close_outputs(known["aux_outputs"][0], ref_known["aux_outputs"][0])


def test_train_losses_with_recorded_noise(model_and_out, train_out, fx):
    cr = fx["criterion"]
    with torch.no_grad():
        losses = model_and_out[0].criterion(train_out, cr["targets"])
    assert set(losses) == set(cr["loss_dict"])
    for k, v in cr["loss_dict"].items():
        torch.testing.assert_close(losses[k].float(), v.float(), rtol=1e-5, atol=1e-5, msg=k)


def official_targets(fx):
    """The fixture's DETR targets as codetr Targets (absolute xyxy, labels = COCO ids = slots)."""
    out = []
    for t, (h, w) in zip(fx["criterion"]["targets"], fx["inputs"]["image_sizes"].tolist()):
        out.append(Target(boxes=cxcywh_to_xyxy(t["boxes"]) * torch.tensor([w, h, w, h]), labels=t["labels"]))
    return out


def test_train_forward_total_loss(model_and_out, fx):
    """model(images, sizes, Targets) in train mode, seeded as the official run: the official
    total loss (the noise is drawn from the same random stream)."""
    model, cr = model_and_out[0], fx["criterion"]
    model.train()
    try:
        torch.manual_seed(cr["train_forward_seed"])
        with torch.no_grad():
            losses = model(fx["inputs"]["samples_tensor"], fx["inputs"]["image_sizes"], official_targets(fx))
    finally:
        model.eval()
    assert set(losses.losses) == set(model.criterion.weight_dict)
    total = losses.total()
    torch.testing.assert_close(total.float(), cr["total_loss"].float(), rtol=1e-5, atol=1e-5)
