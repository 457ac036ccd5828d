"""DINO on CPU with small configs: train/eval contract, empty targets, 5 scales, learning,
converter errors and the convert command."""
import argparse

import pytest
import torch

import codetr
from codetr.cli import main
from codetr.convert import load_official
from codetr.structures import Target
from tests.conftest import golden

SMALL = dict(hidden_dim=64, num_heads=4, enc_layers=1, dec_layers=2, ffn_dim=64, num_queries=10, num_select=10,
             dn_number=3)


@pytest.fixture(autouse=True)
def _one_thread():
    """These small models run fastest on one thread (two are much slower on a shared CPU)."""
    torch.set_num_threads(1)


def batch(n_objects=(2, 0)):
    images = torch.randn(len(n_objects), 3, 64, 80)
    sizes = torch.tensor([[64, 80], [48, 60]])[: len(n_objects)]
    targets = []
    for n in n_objects:
        xy = torch.rand(n, 2) * 30
        targets.append(Target(boxes=torch.cat([xy, xy + 10 + torch.rand(n, 2) * 10], 1),
                              labels=torch.randint(0, 3, (n,))))
    return images, sizes, targets


def test_zoo_defaults_are_official():
    c = codetr.create("dino_r50_4scale", num_classes=91).config
    assert (c.num_queries, c.dn_number, c.enc_layers, c.dec_layers, c.ffn_dim, c.num_select) == (900, 100, 6, 6, 2048, 300)
    assert (c.cls_loss_coef, c.bbox_loss_coef, c.giou_loss_coef, c.pe_temperature_h) == (1.0, 5.0, 2.0, 20.0)
    model = codetr.create("dino_r50_5scale", num_classes=5)
    assert model.config.return_interm_indices == [0, 1, 2, 3] and len(model.input_proj) == 5
    assert model.label_enc.num_embeddings == 6  # dn_labelbook_size derived from the class count


def test_train_step_image_without_objects():
    """One image with objects, one without: denoising pads the empty image, every loss is
    finite and the gradient reaches the backbone and the label embedding."""
    model = codetr.create("dino_tiny", num_classes=3, **SMALL)
    images, sizes, targets = batch((2, 0))
    out = model(images, sizes, targets)
    assert set(out.losses) == set(model.criterion.weight_dict)
    assert {"class_error", "cardinality_error_dn", "loss_xy_dn_0", "loss_hw"} <= set(out.logs)  # official names
    loss = out.total()
    loss.backward()
    assert torch.isfinite(loss) and out.losses["loss_bbox_dn"] > 0
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert model.label_enc.weight.grad.abs().sum() > 0


def test_train_step_under_bf16_autocast_has_float32_losses_near_full_precision():
    """Mixed precision (``train.amp=bf16``): the network runs in bfloat16, matching and
    losses in float32 (``Detector.float32_loss``). The denoising losses, which need no matching
    (near-ties of an untrained model's matching flip under any perturbation), stay near float32's."""
    model = codetr.create("dino_tiny", num_classes=3, **SMALL)
    images, sizes, targets = batch((3, 2))
    torch.manual_seed(1)
    full = model(images, sizes, targets)
    torch.manual_seed(1)  # the same denoising noise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(images, sizes, targets)
    for name in model.criterion.weight_dict:
        assert mixed.losses[name].dtype == torch.float32, name
        if "_dn" in name:
            torch.testing.assert_close(mixed.losses[name], full.losses[name], rtol=0.02, atol=0.01, msg=name)
    mixed.total().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_denoising_queries_in_train_forward():
    model = codetr.create("dino_tiny", num_classes=3, **SMALL)
    images, sizes, targets = batch((2, 0))
    from codetr.detr.deformable_detr import detr_targets
    out = model.forward_raw(images, sizes, detr_targets(targets, sizes))
    dn = out["_inter"].dn
    assert (dn.num_groups, dn.pad_size) == (6, 24)  # dn_number 3 -> 6 groups of 2 x 2 slots
    assert out["dn_meta"]["output_known_lbs_bboxes"]["pred_logits"].shape == (2, 24, 3)
    assert out["pred_logits"].shape == (2, 10, 3)
    assert not dn.content[1].any()  # the image without objects only has padding


def test_batch_without_any_object_trains():
    model = codetr.create("dino_tiny", num_classes=3, **SMALL)
    images, sizes, targets = batch((0, 0))
    out = model(images, sizes, targets)
    loss = out.total()
    loss.backward()
    assert torch.isfinite(loss) and out.losses["loss_bbox"] == 0 and out.losses["loss_ce_dn"] == 0
    assert loss > 0  # the classifiers still learn "no object"


def test_eval_outputs_and_five_scales():
    model = codetr.create("dino_tiny", num_classes=3, **SMALL, return_interm_indices=[0, 1, 2, 3],
                          num_feature_levels=5).eval()
    images, sizes, _ = batch()
    out = model(images, sizes)
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs", "interm_outputs"}
    assert out["pred_logits"].shape == (2, 10, 3) and out["interm_outputs"]["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 1
    dets = model.postprocess(out, sizes)
    assert dets[0].boxes.shape == (10, 4) and (dets[0].scores[:-1] >= dets[0].scores[1:]).all()


def test_unshared_heads_and_dn_off():
    model = codetr.create("dino_tiny", num_classes=3, **{**SMALL, "dn_number": 0},
                          dec_pred_class_embed_share=False, dec_pred_bbox_embed_share=False)
    assert model.class_embed[0] is not model.class_embed[1]
    assert "loss_ce_dn" not in model.criterion.weight_dict
    images, sizes, targets = batch((2, 1))
    out = model(images, sizes, targets)
    assert "loss_ce_dn" not in out.losses and out.logs["loss_ce_dn"] == 0  # official zeros, logged only
    out.total().backward()
    assert model.class_embed[0].weight.grad.abs().sum() > 0 and model.class_embed[1].weight.grad.abs().sum() > 0


def test_overfits_two_images():
    """30 steps on two images cut the loss by more than half and put the top detection on
    each object."""
    torch.manual_seed(0)
    model = codetr.create("dino_tiny", num_classes=3, **SMALL)
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, 8:40, 8:40] = 2.0
    images[1, 0, 30:60, 20:44] = 2.0
    sizes = torch.tensor([[64, 64], [64, 64]])
    targets = [Target(torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([1])),
               Target(torch.tensor([[20.0, 30.0, 44.0, 60.0]]), torch.tensor([2]))]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss = model(images, sizes, targets).total()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    dets = model.detect(images, sizes, [(64, 64), (64, 64)])
    for det, target in zip(dets, targets):
        assert det.labels[0] == target.labels[0]
        assert codetr.boxes.box_iou(det.boxes[:1], target.boxes)[0, 0] > 0.5


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="dn_labelbook_size"):
        codetr.create("dino_tiny", num_classes=10, dn_labelbook_size=5)
    with pytest.raises(ValueError, match="return_interm_indices"):
        codetr.create("dino_tiny", num_classes=3, return_interm_indices=[3, 2])


# -- converter ------------------------------------------------------------------------------------
DINO_FX = "detr/dino_4scale_r50_tiny.pt"


@pytest.fixture(scope="module")
def dino_fx():
    return golden(DINO_FX)


def test_deformable_detr_checkpoint_is_refused(dino_fx):
    fx = golden("detr/deformable_detr_2stage_refine_r50_tiny.pt")
    with pytest.raises(ValueError, match="Deformable DETR checkpoint"):
        load_official("dino", fx["checkpoint"], fx["config"])
    with pytest.raises(ValueError, match="DINO checkpoint"):  # and the other way round
        load_official("deformable_detr", dino_fx["checkpoint"], dino_fx["config"])


def test_unmapped_and_missing_keys_are_named(dino_fx):
    state = dict(dino_fx["checkpoint"]["model"])
    state["transformer.extra_head.weight"] = torch.zeros(1)
    del state["transformer.tgt_embed.weight"]
    with pytest.raises(ValueError) as err:
        load_official("dino", {"model": state}, dino_fx["config"])
    assert "transformer.extra_head.weight" in str(err.value) and "transformer.tgt_embed.weight" in str(err.value)
    with pytest.raises(ValueError, match="'model'"):
        load_official("dino", {"state_dict": state}, dino_fx["config"])


def test_unsupported_official_options_are_named(dino_fx):
    with pytest.raises(ValueError, match="two_stage_type='no'"):
        load_official("dino", dino_fx["checkpoint"], {**dino_fx["config"], "two_stage_type": "no"})


def test_ema_weights(dino_fx):
    state = dino_fx["checkpoint"]["model"]
    ema = {k: v.clone() for k, v in state.items()}
    ema["label_enc.weight"] += 1.0
    model = load_official("dino", {"model": state, "ema_model": ema}, dino_fx["config"], ema=True)
    assert torch.equal(model.label_enc.weight, ema["label_enc.weight"])
    with pytest.raises(ValueError, match="ema_model"):
        load_official("dino", {"model": state}, dino_fx["config"], ema=True)


def test_convert_command_with_args_in_checkpoint(dino_fx, tmp_path):
    """`codetr convert dino IN OUT` on an official-format file carrying its args; the written
    checkpoint reproduces the official outputs."""
    official = tmp_path / "dino_official.pth"
    state = {k: v.contiguous().clone() for k, v in dino_fx["checkpoint"]["model"].items()}
    torch.save({"model": state, "args": argparse.Namespace(**dino_fx["config"])}, official)
    out = tmp_path / "dino.ckpt"
    assert main(["convert", "dino", str(official), str(out)]) == 0
    model = codetr.load(out).eval()
    assert model.classes.category_ids[:3] == [0, 1, 2] and model.num_classes == 91
    inp = dino_fx["inputs"]
    with torch.no_grad():
        logits = model(inp["samples_tensor"], inp["image_sizes"])["pred_logits"]
    torch.testing.assert_close(logits, dino_fx["eval_outputs"]["pred_logits"], atol=1e-4, rtol=0)
