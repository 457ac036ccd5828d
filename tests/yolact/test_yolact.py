"""The YOLACT model on tiny sizes: the data contract, training, prediction with masks,
checkpoints, the deformable backbone and the converter's error reports."""
from dataclasses import replace

import pytest
import torch
from PIL import Image
from torchvision.models import resnet50, resnet101

import codetr
from codetr.backbones import BackboneConfig
from codetr.backbones.dcn import ModulatedDeformConv2d, add_deformable_convs
from codetr.structures import ClassInfo, Target
from codetr.yolact.yolact import Yolact, YolactConfig, loss_targets

TINY = YolactConfig(num_classes=3, max_size=64, backbone=BackboneConfig(depth=18, norm="bn", frozen_stages=-1),
                    fpn_features=32, num_prototypes=8, pred_scales=[[16], [32], [64], [128], [256]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Yolact(TINY, ClassInfo([1, 5, 9], ["a", "b", "c"]))


def targets():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 40:60, 30:62] = True
    masks[2, 0:64, 0:40] = True   # a crowd region
    with_objects = Target(torch.tensor([[5.0, 10, 25, 30], [30, 40, 62, 60], [0, 0, 40, 64]]),
                          torch.tensor([0, 2, 1]), size=(64, 64), iscrowd=torch.tensor([False, False, True]),
                          masks=masks)
    empty = Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), size=(64, 64),
                   masks=torch.zeros(0, 64, 64, dtype=torch.bool))
    return [with_objects, empty]


def test_eval_outputs_official_names_and_shapes(model):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), torch.tensor([[64, 64]] * 2))
    num_priors = (8 * 8 + 4 * 4 + 2 * 2 + 1 + 1) * 3
    assert set(out) == {"loc", "conf", "mask", "priors", "proto"}
    assert out["loc"].shape == (2, num_priors, 4) and out["conf"].shape == (2, num_priors, 4)
    assert out["mask"].shape == (2, num_priors, 8) and out["priors"].shape == (num_priors, 4)
    assert out["proto"].shape == (2, 16, 16, 8) and bool((out["proto"] >= 0).all())
    assert torch.allclose(out["conf"].sum(-1), torch.ones(2, num_priors))
    assert bool((out["mask"].abs() <= 1).all())


def test_training_step_reaches_every_part(model):
    model.train()
    model.zero_grad()
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([[64, 64]] * 2), targets())
    assert set(out.losses) == {"loss_box", "loss_conf", "loss_mask", "loss_segm"} and not out.logs
    assert all(bool(torch.isfinite(v)) and float(v.detach()) > 0 for v in out.losses.values())
    out.total().backward()
    for name in ("backbone.body.conv1.weight", "fpn.lateral.0.weight", "proto_net.out.weight",
                 "head.conf_layer.weight", "semantic_seg_conv.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_training_step_under_bf16_autocast_matches_float32(model):
    """Mixed precision (as ``train.amp=bf16``) runs; the mask BCE stays in float32."""
    model.train()
    images, sizes = torch.randn(2, 3, 64, 64), torch.tensor([[64, 64]] * 2)
    torch.manual_seed(1)
    full = model(images, sizes, targets())
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(images, sizes, targets())
    for name, value in full.losses.items():
        assert bool(torch.isfinite(mixed.losses[name])), name
        torch.testing.assert_close(mixed.losses[name].float(), value, rtol=0.1, atol=0.05)


def test_loss_targets_relative_to_padded_batch():
    t = targets()[0]
    small = Target(t.boxes[:2] / 2, t.labels[:2], size=(32, 32), masks=t.masks[:2, ::2, ::2])
    [lt] = loss_targets([small], (64, 48))
    assert lt.masks.shape == (2, 64, 48) and torch.equal(lt.masks[:, :32, :32].bool(), small.masks)
    assert torch.allclose(lt.boxes, small.boxes / torch.tensor([48, 64, 48, 64]))
    assert lt.crowd_boxes is None


def test_predict_gives_masks_in_original_pixels(model):
    image = Image.new("RGB", (70, 50), (120, 30, 200))
    model.config = replace(model.config, conf_threshold=0.0)  # keep candidates even for an untrained model
    try:
        [det] = model.predict(image)
    finally:
        model.config = replace(model.config, conf_threshold=TINY.conf_threshold)
    assert len(det) > 0 and det.masks.shape == (len(det), 50, 70) and det.masks.dtype == torch.bool
    assert bool((det.boxes[:, 0::2] <= 70).all()) and bool((det.boxes[:, 1::2] <= 50).all())
    assert bool((det.boxes >= 0).all()) and bool((det.labels < 3).all())


def test_checkpoint_round_trip(model, tmp_path):
    codetr.save(model, tmp_path / "y.ckpt", model_name="yolact_tiny")
    loaded = codetr.load(tmp_path / "y.ckpt").eval()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x, torch.tensor([[64, 64]])), loaded(x, torch.tensor([[64, 64]]))
    assert loaded.config == model.config and loaded.classes.category_ids == [1, 5, 9]
    assert loaded.input_spec.square and all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_entries():
    tiny = codetr.create("yolact_tiny", num_classes=6)
    assert tiny.config.backbone.depth == 18 and tiny.head.num_priors == 3 and tiny.config.max_size == 128
    assert tiny.backbone.out_channels == [64, 128, 256] and tiny.backbone.body.conv1.out_channels == 32
    plus = codetr.create("yolact_plus_r50_550", num_classes=80)
    assert plus.head.num_priors == 9 and not plus.config.square_anchors
    assert sum(isinstance(m, ModulatedDeformConv2d) for m in plus.modules()) == 4 + 6 + 3


def test_modulated_deform_conv_starts_as_half_a_conv():
    conv = ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 4, 9, 9)
    plain = torch.nn.functional.conv2d(x, conv.weight, None, 2, 1)
    assert torch.allclose(conv(x), 0.5 * plain + conv.bias[:, None, None], atol=1e-5)  # masks sigmoid(0)


def test_deformable_blocks_follow_the_official_rule():
    body = resnet101()
    add_deformable_convs(body, [0, 4, 23, 3], interval=3)
    where = [(s, i) for s in range(1, 5) for i, b in enumerate(getattr(body, f"layer{s}"))
             if isinstance(b.conv2, ModulatedDeformConv2d)]
    assert where == [(2, 0), (2, 3)] + [(3, i) for i in range(0, 23, 3)] + [(4, 0)]
    body = resnet50()
    add_deformable_convs(body, [0, 4, 6, 3])
    assert sum(isinstance(b.conv2, ModulatedDeformConv2d) for s in (2, 3, 4) for b in getattr(body, f"layer{s}")) == 13


def test_predict_files_writes_rle_masks(model, tmp_path):
    import json

    from pycocotools import mask as mask_utils

    from codetr.engine.predict import predict_files

    Image.new("RGB", (70, 50), (10, 200, 90)).save(tmp_path / "a.png")
    model.config = replace(model.config, conf_threshold=0.0)
    try:
        path = predict_files(model, [tmp_path / "a.png"], tmp_path / "out", score_threshold=0.0)
    finally:
        model.config = replace(model.config, conf_threshold=TINY.conf_threshold)
    records = json.loads(path.read_text())
    assert records and all(r["category_id"] in (1, 5, 9) for r in records)
    for r in records[:5]:
        mask = mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        assert mask.shape == (50, 70)
    assert (tmp_path / "out" / "a.png").is_file()


def test_detect_refuses_padded_batches(model):
    with pytest.raises(ValueError, match="unpadded"):
        model.detect(torch.zeros(1, 3, 64, 64), torch.tensor([[60, 64]]), [(60, 64)])


def test_mask_targets_official_binary_and_soft_area_fractions():
    from codetr.yolact.loss import YolactLoss

    mask = torch.zeros(1, 8, 8)
    mask[0, 0:3, 0:4] = 1          # 3 of the 4 rows of the top-left 4x4 cell, none of the others
    official = YolactLoss().mask_targets(mask, (2, 2))
    soft = YolactLoss(soft_mask_targets=True).mask_targets(mask, (2, 2))
    # bilinear 8 -> 2 samples rows/cols 1.5 (between pixels 1 and 2, both set) and 5.5: binary
    assert torch.equal(official, torch.tensor([[[1.0, 0], [0, 0]]]))
    assert torch.allclose(soft, torch.tensor([[[0.75, 0], [0, 0]]]))
