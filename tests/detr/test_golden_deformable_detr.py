"""Parity with the official Deformable DETR (two-stage + box refine) on ../shared/golden."""
import pytest
import torch

from codetr.boxes import cxcywh_to_xyxy
from codetr.convert import load_official
from codetr.structures import Target
from tests.conftest import golden

FIXTURE = "detr/deformable_detr_2stage_refine_r50_tiny.pt"


@pytest.fixture(scope="module")
def fx():
    return golden(FIXTURE)


@pytest.fixture(scope="module")
def model_and_out(fx):
    torch.set_num_threads(2)
    model = load_official("deformable_detr", fx["checkpoint"], fx["config"]).eval()
    inp = fx["inputs"]
    with torch.no_grad():
        out = model.forward_raw(inp["samples_tensor"], inp["image_sizes"])
    return model, out


def close(a, b, atol):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


def test_config_is_read_from_official_args(model_and_out, fx):
    c = model_and_out[0].config
    assert (c.two_stage, c.with_box_refine, c.enc_layers, c.dec_layers, c.num_queries, c.ffn_dim) == \
        (True, True, 2, 2, 30, 256)
    assert c.num_classes == 91


def test_preprocessing_matches_official(model_and_out, fx):
    """prepare() reproduces the official normalisation; an image whose shorter side already
    equals min_size is not resized (the official resize rule)."""
    model = model_and_out[0]
    spec = model.input_spec
    assert (spec.mean, spec.std, spec.min_size, spec.max_size) == \
        (tuple(fx["meta"]["pixel_mean"]), tuple(fx["meta"]["pixel_std"]), 800, 1333)
    inp = fx["inputs"]
    old = (spec.min_size, spec.max_size)
    try:
        for img, ref, (h, w) in zip(inp["images_uint8"], inp["samples_tensor"], inp["image_sizes"].tolist()):
            spec.min_size, spec.max_size = min(h, w), 1333
            images, sizes, orig = model.prepare([img])
            assert sizes.tolist() == [[h, w]] and orig == [(h, w)]
            assert torch.equal(images[0], ref[:, :h, :w])
    finally:
        spec.min_size, spec.max_size = old


def test_intermediates(model_and_out, fx):
    inter, gi = model_and_out[1]["_inter"], fx["eval_intermediates"]
    for ours, ref in zip(inter["srcs"], gi["srcs"]):
        close(ours, ref, 1e-4)
    for ours, ref in zip(inter["masks"], gi["masks"]):
        assert torch.equal(ours, ref)
    for ours, ref in zip(inter["pos"], gi["pos"]):
        close(ours, ref, 1e-4)
    close(inter["memory"], gi["memory"], 1e-4)
    close(inter["selection_scores"], gi["enc_selection_scores"], 1e-4)
    assert torch.equal(inter["topk"], gi["topk_proposals"])
    assert torch.equal(inter["output_proposals"], gi["output_proposals"]) or \
        torch.allclose(inter["output_proposals"], gi["output_proposals"], atol=1e-5)
    close(inter["hs"], gi["hs"], 1e-4)
    close(inter["init_reference"], gi["init_reference"], 1e-5)
    close(inter["inter_references"], gi["inter_references"], 1e-5)


def test_eval_outputs(model_and_out, fx):
    out, ref = model_and_out[1], fx["eval_outputs"]
    close(out["pred_logits"], ref["pred_logits"], 1e-4)
    close(out["pred_boxes"], ref["pred_boxes"], 1e-5)
    assert len(out["aux_outputs"]) == len(ref["aux_outputs"])
    for a, b in zip(out["aux_outputs"], ref["aux_outputs"]):
        close(a["pred_logits"], b["pred_logits"], 1e-4)
        close(a["pred_boxes"], b["pred_boxes"], 1e-5)
    close(out["enc_outputs"]["pred_logits"], ref["enc_outputs"]["pred_logits"], 1e-4)
    close(out["enc_outputs"]["pred_boxes"], ref["enc_outputs"]["pred_boxes"], 1e-5)


def test_postprocess(model_and_out, fx):
    model, out = model_and_out
    pp = fx["postprocess"]
    assert model.config.num_select == pp["num_select"]
    for d, r in zip(model.postprocess(out, pp["target_sizes"]), pp["results"]):
        assert torch.equal(d.labels, r["labels"])
        close(d.scores, r["scores"], 1e-5)
        close(d.boxes, r["boxes"], 1e-3)


def test_detect_matches_official_postprocess(model_and_out, fx):
    """detect() (eval forward + postprocess + rescale to original pixels) on the official batch."""
    model = model_and_out[0]
    inp = fx["inputs"]
    orig = [tuple(s) for s in inp["orig_target_sizes"].tolist()]
    dets = model.detect(inp["samples_tensor"], inp["image_sizes"], orig)
    for d, r in zip(dets, fx["postprocess"]["results"]):
        assert torch.equal(d.labels, r["labels"])
        close(d.scores, r["scores"], 1e-5)
        close(d.boxes, r["boxes"], 1e-3)


def official_targets(fx):
    """The fixture's DETR targets as codetr Targets (absolute xyxy, labels = COCO ids = slots)."""
    sizes = fx["inputs"]["image_sizes"]
    out = []
    for t, (h, w) in zip(fx["criterion"]["targets"], sizes.tolist()):
        out.append(Target(boxes=cxcywh_to_xyxy(t["boxes"]) * torch.tensor([w, h, w, h]), labels=t["labels"]))
    return out


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
    calls = {"main": (outs, cr["targets"])}
    for i, aux in enumerate(outs["aux_outputs"]):
        calls[f"aux_{i}"] = (aux, cr["targets"])
    binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in cr["targets"]]
    calls["enc"] = (outs["enc_outputs"], binary)
    assert set(calls) == set(cr["matcher_indices"])
    for name, (o, t) in calls.items():
        ours = model.criterion.matcher(o["pred_logits"], o["pred_boxes"], t)
        for (q, j), (rq, rj) in zip(ours, cr["matcher_indices"][name]):
            assert torch.equal(q, rq) and torch.equal(j, rj), name


def test_train_forward_loss(model_and_out, fx):
    """Train-mode forward from codetr Targets reproduces the official total loss."""
    model = model_and_out[0]
    cr = fx["criterion"]
    model.train()
    try:
        with torch.no_grad():
            losses = model(fx["inputs"]["samples_tensor"], fx["inputs"]["image_sizes"], official_targets(fx))
    finally:
        model.eval()
    total = losses.total()
    torch.testing.assert_close(total.float(), cr["total_loss"].float() if torch.is_tensor(cr["total_loss"])
                               else torch.tensor(float(cr["total_loss"])), rtol=1e-5, atol=1e-5)
