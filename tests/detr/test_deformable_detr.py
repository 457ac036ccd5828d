"""Deformable DETR on CPU with small configs: shapes, empty targets, variants, learning."""
import pytest
import torch

import codetr
from codetr.detector import InputSpec
from codetr.structures import Target

SMALL = dict(hidden_dim=64, num_heads=4, enc_layers=1, dec_layers=2, ffn_dim=64, num_queries=10, num_select=10)


def batch(n_objects=(2, 0)):
    images = torch.randn(len(n_objects), 3, 64, 80)
    sizes = torch.tensor([[64, 80], [48, 60]])[: len(n_objects)]
    targets = []
    for n in n_objects:
        xy = torch.rand(n, 2) * 30
        targets.append(Target(boxes=torch.cat([xy, xy + 10 + torch.rand(n, 2) * 10], 1),
                              labels=torch.randint(0, 3, (n,))))
    return images, sizes, targets


@pytest.mark.parametrize("variant", [dict(with_box_refine=False, two_stage=False),
                                     dict(with_box_refine=True, two_stage=False),
                                     dict(with_box_refine=True, two_stage=True)])
def test_train_and_eval_outputs(variant):
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL, **variant)
    images, sizes, targets = batch()
    losses = model(images, sizes, targets)
    expected = {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} | ({"loss_ce_enc"} if variant["two_stage"] else set())
    assert expected <= set(losses.losses) and {"class_error", "cardinality_error_0"} <= set(losses.logs)
    total = losses.total()
    total.backward()
    assert torch.isfinite(total)
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0  # the signal reaches the backbone
    model.eval()
    out = model(images, sizes)
    assert out["pred_logits"].shape == (2, 10, 3) and out["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 1
    assert ("enc_outputs" in out) == variant["two_stage"]


def test_batch_without_any_object_trains():
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL)
    images, sizes, targets = batch((0, 0))
    losses = model(images, sizes, targets)
    total = losses.total()
    total.backward()
    assert torch.isfinite(total) and losses.losses["loss_bbox"] == 0


def test_crowd_boxes_are_not_matched():
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL)
    images, sizes, targets = batch((2, 2))
    crowd = [Target(t.boxes, t.labels, iscrowd=torch.ones(2, dtype=torch.bool)) for t in targets]
    losses = model(images, sizes, crowd)
    assert losses.losses["loss_bbox"] == 0


def test_predict_returns_original_pixels():
    """predict = prepare (resize by the DETR rule) + forward + postprocess + rescale."""
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL).eval()
    model.input_spec = InputSpec(min_size=128, max_size=170)
    image = torch.randint(0, 255, (3, 90, 200), dtype=torch.uint8)
    det = model.predict(image)[0]
    images, sizes, orig = model.prepare([image])
    # shorter side 128 would make the longer 284 > 170: round(170 * 90 / 200) = 76 (official rule)
    assert sizes.tolist() == [[76, 168]] and orig == [(90, 200)]
    ref = model.postprocess(model(images, sizes), sizes)[0]
    scale = torch.tensor([200 / 168, 90 / 76, 200 / 168, 90 / 76])
    torch.testing.assert_close(det.boxes, ref.boxes * scale)
    assert torch.equal(det.labels, ref.labels) and det.boxes.shape == (10, 4)


def test_overfits_two_images():
    """Convergence on small data: 100 steps on two images cut the loss by more than half and
    put the top detection on each object."""
    torch.manual_seed(0)
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL, two_stage=True, with_box_refine=True)
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, 8:40, 8:40] = 2.0
    images[1, 0, 30:60, 20:44] = 2.0
    sizes = torch.tensor([[64, 64], [64, 64]])
    targets = [Target(torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([1])),
               Target(torch.tensor([[20.0, 30.0, 44.0, 60.0]]), torch.tensor([2]))]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(100):
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


def test_save_load_round_trip(tmp_path):
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL).eval()
    codetr.save(model, tmp_path / "m.ckpt")
    loaded = codetr.load(tmp_path / "m.ckpt").eval()
    images, sizes, _ = batch()
    assert torch.equal(model(images, sizes)["pred_logits"], loaded(images, sizes)["pred_logits"])
    assert loaded.classes.category_ids == model.classes.category_ids
    assert loaded.input_spec == model.input_spec


def test_load_rejects_wrong_files(tmp_path):
    from codetr.engine.checkpoint import CheckpointError
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        codetr.load(bad)
    torch.save({"model": {}}, tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match="not a codetr checkpoint"):
        codetr.load(tmp_path / "official.pth")


def test_unknown_zoo_name_and_field():
    with pytest.raises(ValueError, match="available"):
        codetr.create("deformable_detr_r51")
    with pytest.raises(ValueError, match="num_querys"):
        codetr.create("deformable_detr_tiny", num_querys=3)


def test_class_aware_proposals_use_real_labels_and_best_class():
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL, enc_class_aware=True)
    outputs = {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": torch.rand(1, 4, 4) * 0.5 + 0.25,
               "enc_outputs": {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": torch.full((1, 4, 4), 0.5)}}
    outputs["enc_outputs"]["pred_logits"][0, 2, 1] = 5.0  # token 2 is confident about class 1
    target = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]
    aware = model.criterion(outputs, target)["loss_ce_enc"]
    model.criterion.enc_class_aware = False  # class-agnostic: token 2's class-0 logit is 0
    agnostic = model.criterion(outputs, target)["loss_ce_enc"]
    assert aware < agnostic
    model.eval()
    with torch.no_grad():
        images, sizes, _ = batch()
        out = model.forward_raw(images, sizes)
    torch.testing.assert_close(out["_inter"].selection.scores, out["enc_outputs"]["pred_logits"].max(-1)[0])
