"""Faster R-CNN end to end on tiny inputs: the train step and its edge cases (no boxes, sub-pixel
and crowd boxes, no proposals), inference, learning one image, the full-size model, config
checks, and the mmdet converter (a round trip through mmdet's key layout and config text, the
CLI, and the Co-Deformable-DETR fixture's ResNet through the same key table)."""
import re
from dataclasses import replace

import pytest
import torch

import codetr
from codetr.backbones import BackboneConfig
from codetr.convert import load_official
from codetr.convert.mmcv_config import load_config_text
from codetr.rcnn.faster_rcnn import FasterRCNN, FasterRCNNConfig
from codetr.structures import Target
from tests.conftest import golden

LOSSES = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
HW = (128, 128)


def tiny(**overrides) -> FasterRCNN:
    torch.manual_seed(0)
    return codetr.create("faster_rcnn_tiny", num_classes=3, **overrides)


def target(boxes, labels, crowd=None) -> Target:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    iscrowd = None if crowd is None else torch.tensor(crowd, dtype=torch.bool)
    return Target(boxes, torch.tensor(labels, dtype=torch.long), size=HW, iscrowd=iscrowd)


TWO = [target([[10, 12, 60, 70], [70, 20, 110, 50]], [0, 2]), target([[30, 30, 90, 100]], [1])]


def step(model, targets, seed=0):
    """One train forward + backward on fixed images; returns the LossOutput."""
    model.train()
    torch.manual_seed(seed)
    images = torch.randn(len(targets), 3, *HW)
    out = model(images, torch.tensor([HW] * len(targets)), targets)
    assert set(out.losses) == LOSSES and set(out.logs) == {"acc"}
    assert all(bool(torch.isfinite(v)) for v in [*out.losses.values(), *out.logs.values()])
    out.total().backward()
    return type(out)({k: v.detach() for k, v in out.losses.items()}, out.logs)


def test_train_step_names_losses_and_reaches_every_trainable_parameter():
    model = tiny()
    out = step(model, TWO)
    assert all(float(out.losses[k]) > 0 for k in LOSSES)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(("rpn_head", "roi_head")))


def test_images_without_boxes_have_no_positives():
    out = step(tiny(), [target([], []), target([], [])])
    assert float(out.losses["loss_rpn_bbox"]) == 0.0 and float(out.losses["loss_bbox"]) == 0.0
    assert float(out.losses["loss_rpn_cls"]) > 0 and float(out.losses["loss_cls"]) > 0
    mixed = step(tiny(), [TWO[0], target([], [])])
    assert float(mixed.losses["loss_bbox"]) > 0


def test_subpixel_and_empty_boxes_train():
    """A 0.3 x 0.2 px box learns nothing in the RPN (IoU < 0.3 everywhere) but is its own RoI
    positive; a zero-width box is dropped (its delta targets would be infinite)."""
    boxes = [[5.0, 5.0, 5.3, 5.2], [40.0, 40.0, 40.0, 60.0], [64.0, 64.0, 64.5, 65.0]]
    step(tiny(), [target(boxes, [0, 1, 2]), target([[1.0, 1.0, 1.5, 1.4]], [1])])


def test_crowd_boxes_are_ignored():
    """Adding crowd boxes changes nothing: the losses equal those without them."""
    crowd = target([[10, 12, 60, 70], [0, 0, 128, 128], [70, 20, 110, 50]], [0, 1, 2], crowd=[False, True, False])
    with_crowd = step(tiny(), [crowd, TWO[1]])
    without = step(tiny(), TWO)
    for k in LOSSES:
        assert torch.equal(with_crowd.losses[k], without.losses[k]), k
    only_crowd = step(tiny(), [target([[0, 0, 128, 128]], [1], crowd=[True]), target([], [])])
    assert float(only_crowd.losses["loss_bbox"]) == 0.0


def test_every_proposal_filtered():
    """min_bbox_size beyond the image: no proposal survives; the RoIs are the gts alone (none
    for an image without boxes), and the step stays finite."""
    model = tiny(rpn_train_proposals={"min_bbox_size": 1e6}, rpn_test_proposals={"min_bbox_size": 1e6})
    step(model, TWO)
    step(model, [target([], []), target([], [])])
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *HW), torch.tensor([HW, HW]))
    assert [len(p) for p in out["proposals"]] == [0, 0] and out["cls_score"].shape == (0, 4)
    assert [len(d) for d in model.postprocess(out, torch.tensor([HW, HW]))] == [0, 0]


def test_eval_outputs_and_predict():
    model = tiny().eval()
    sizes = torch.tensor([[128, 160], [96, 120]])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 160), sizes)
    assert [tuple(m.shape) for m in out["rpn_cls_score"]] == [(2, 3, 32, 40), (2, 3, 16, 20), (2, 3, 8, 10),
                                                              (2, 3, 4, 5)]  # P2-P5, 3 anchors
    assert out["rpn_bbox_pred"][0].shape == (2, 12, 32, 40)
    n = sum(len(p) for p in out["proposals"])
    assert out["rois"].shape == (n, 5) and out["cls_score"].shape == (n, 4) and out["bbox_pred"].shape == (n, 12)
    assert all(len(p) <= 300 for p in out["proposals"])
    for (h, w), p in zip(sizes.tolist(), out["proposals"]):  # clipped to each image
        assert bool((p[:, 2] <= w).all() and (p[:, 3] <= h).all() and (p[:, :2] >= 0).all())
    [det] = model.predict([torch.rand(3, 50, 70)])
    assert 0 < len(det) <= 100 and bool((det.scores > 0.05).all())
    assert bool((det.boxes[:, 2] <= 70 + 1e-3).all() and (det.boxes[:, 3] <= 50 + 1e-3).all())
    assert bool((det.scores[:-1] >= det.scores[1:]).all())


def synthetic_image() -> tuple[torch.Tensor, Target]:
    """A dark image with two bright rectangles of two classes."""
    image = torch.full((3, *HW), -1.0)
    image[:, 20:70, 16:60] = 1.5
    image[0, 80:120, 70:118] = 2.0
    return image, target([[16, 20, 60, 70], [70, 80, 118, 120]], [0, 1])


def test_training_on_one_image_lowers_the_loss():
    model = tiny().train()
    image, t = synthetic_image()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(12):
        loss = model(image[None], torch.tensor([HW]), [t]).total()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(float(loss.detach()))
    assert sum(totals[-3:]) < 0.5 * sum(totals[:3]), totals  # ~0.33 measured


def test_full_size_model_eval_forward():
    model = codetr.create("faster_rcnn_r50_fpn_1x", num_classes=80).eval()
    assert model.config == FasterRCNNConfig() and model.input_spec.size_divisibility == 32
    assert model.input_spec.mean == (123.675, 116.28, 103.53) and model.input_spec.scale_255
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in frozen)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128), torch.tensor([[96, 128]]))
    assert [tuple(m.shape[-2:]) for m in out["rpn_cls_score"]] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert out["cls_score"].shape[1] == 81 and out["bbox_pred"].shape[1] == 320


@pytest.mark.parametrize("override, message", [
    ({"anchor_strides": (8, 16, 32, 64)}, "anchor_strides"),
    ({"roi_strides": (8, 16)}, "roi_strides"),
    ({"rpn_test_proposals": {"max_per_img": 0}}, "rpn_test_proposals"),
    ({"roi_box_loss": "smooth_l1"}, "roi_box_loss"),
    ({"anchor_ratios": (0.5, 0.0)}, "anchor_ratios"),
    ({"fc_channels": 0}, "fc_channels"),
])
def test_bad_config_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        tiny(**override)


# -- mmdet checkpoints -----------------------------------------------------------------------------

MMDET_CONFIG = """
model = dict(
    type='FasterRCNN',
    backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                  norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch',
                  base_channels=16),
    neck=dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=32, num_outs=5),
    rpn_head=dict(
        type='RPNHead', in_channels=32, feat_channels=32,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=7,
                                sampling_ratio=0), out_channels=32, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared2FCBBoxHead', in_channels=32, fc_out_channels=64, roi_feat_size=7, num_classes=3,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                               match_low_quality=True, ignore_iof_thr=-1),
                 sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                              add_gt_as_proposals=False),
                 allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                match_low_quality=False, ignore_iof_thr=-1),
                  sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                               add_gt_as_proposals=True),
                  pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(1333, 800), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='Normalize', **img_norm_cfg),
                     dict(type='Pad', size_divisor=32)]),
]
"""
# mmdet's faster_rcnn_r50_fpn_1x numbers at the widths above
SMALL = replace(FasterRCNNConfig(), num_classes=3, backbone=BackboneConfig(depth=18, stem_channels=16, res2_channels=16,
                                                                             width_per_group=16),
                fpn_channels=32, rpn_channels=32, fc_channels=64)


def to_mmdet(state: dict) -> dict:
    """codetr -> mmdet key names (the inverse table, written out here), with the BN counters
    mmdet's BatchNorm keeps."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^backbone\.body\.", "backbone.", key)
        key = re.sub(r"^fpn\.lateral\.(\d+)\.", r"neck.lateral_convs.\1.conv.", key)
        key = re.sub(r"^fpn\.output\.(\d+)\.", r"neck.fpn_convs.\1.conv.", key)
        out[key] = value.clone()
        if key.endswith("running_var"):
            out[key.replace("running_var", "num_batches_tracked")] = torch.tensor(100)
    return out


def randomised(model: FasterRCNN) -> FasterRCNN:
    """Every weight and BN statistic random (variances positive), so a misplaced tensor shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(torch.rand_like(value) + 0.5 if key.endswith("running_var") else torch.randn_like(value) * 0.1)
    return model.eval()


def mmdet_checkpoint(model: FasterRCNN) -> dict:
    return {"meta": {"config": MMDET_CONFIG, "CLASSES": ("a", "b", "c")}, "state_dict": to_mmdet(model.state_dict())}


def eval_tensors(model, x):
    with torch.no_grad():
        out = model(x, torch.tensor([list(x.shape[-2:])] * len(x)))
    return [*out["rpn_cls_score"], *out["rpn_bbox_pred"], *out["proposals"], out["cls_score"], out["bbox_pred"]]


def test_config_text_gives_mmdets_numbers():
    converted = load_official("mmdet_faster_rcnn", mmdet_checkpoint(randomised(FasterRCNN(SMALL))))
    assert converted.config == SMALL
    assert converted.classes.names == ["a", "b", "c"]
    assert converted.input_spec == FasterRCNN(SMALL).input_spec  # mmdet's normalisation, 800 / 1333, pad 32


def test_round_trip_through_mmdet_keys_gives_equal_outputs():
    model = randomised(FasterRCNN(SMALL))
    converted = load_official("mmdet_faster_rcnn", mmdet_checkpoint(model)).eval()
    mine, theirs = model.state_dict(), converted.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.randn(1, 3, 96, 128)
    assert all(torch.equal(a, b) for a, b in zip(eval_tensors(model, x), eval_tensors(converted, x), strict=True))


def test_without_a_config_the_defaults_and_the_class_count_are_used():
    model = randomised(codetr.create("faster_rcnn_r50_fpn_1x", num_classes=5))
    converted = load_official("mmdet_faster_rcnn", {"meta": {}, "state_dict": to_mmdet(model.state_dict())})
    assert converted.config == FasterRCNNConfig(num_classes=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), converted.state_dict().values()))


def test_converter_is_strict_and_names_keys():
    ckpt = mmdet_checkpoint(FasterRCNN(SMALL))
    extra = {**ckpt, "state_dict": {**ckpt["state_dict"], "roi_head.mask_head.conv.weight": torch.zeros(1)}}
    with pytest.raises(ValueError, match=r"roi_head\.mask_head\.conv\.weight"):
        load_official("mmdet_faster_rcnn", extra)
    missing = {**ckpt, "state_dict": {k: v for k, v in ckpt["state_dict"].items() if k != "rpn_head.rpn_conv.bias"}}
    with pytest.raises(ValueError, match=r"rpn_head\.rpn_conv\.bias"):
        load_official("mmdet_faster_rcnn", missing)
    with pytest.raises(ValueError, match="no 'state_dict' entry"):
        load_official("mmdet_faster_rcnn", {"model": {}})
    with pytest.raises(ValueError, match="neck.type='PAFPN'"):
        load_official("mmdet_faster_rcnn", ckpt, {"model": {**_model_dict(), "neck": {"type": "PAFPN"}}})


def _model_dict() -> dict:
    return load_config_text(MMDET_CONFIG)["model"]


def test_cli_convert_then_load(tmp_path):
    from codetr.cli import main

    model = randomised(FasterRCNN(SMALL))
    torch.save(mmdet_checkpoint(model), tmp_path / "official.pth")
    assert main(["convert", "mmdet_faster_rcnn", str(tmp_path / "official.pth"), str(tmp_path / "out.ckpt")]) == 0
    loaded = codetr.load(tmp_path / "out.ckpt").eval()
    assert loaded.family == "faster_rcnn" and loaded.config == SMALL
    x = torch.randn(1, 3, 64, 96)
    assert all(torch.equal(a, b) for a, b in zip(eval_tensors(model, x), eval_tensors(loaded, x), strict=True))


def test_co_detr_checkpoint_backbone_and_heads_load_through_the_key_table():
    """The Co-Deformable-DETR fixture's ResNet-50 (w16), RPN and RoI box head are mmdet modules:
    through the converter's key table (its ChannelMapper neck has no FPN counterpart, so the load
    is not strict and names the FPN keys missing) they reproduce ``eval.backbone_feats``."""
    name = "co_detr/co_deformable_detr_r50w16"
    inputs, state = golden(f"{name}_inputs.pt"), golden(f"{name}_checkpoint.pt")["state_dict"]
    feats = golden(f"{name}_eval.pt")["eval"]["backbone_feats"]
    m = inputs["common"]["config"]["model"]
    roi = {**m["roi_head"][0], "type": "StandardRoIHead",
           "bbox_roi_extractor": {**m["roi_head"][0]["bbox_roi_extractor"], "featmap_strides": [4, 8, 16, 32]}}
    rpn = {**m["rpn_head"], "anchor_generator": {**m["rpn_head"]["anchor_generator"], "strides": [4, 8, 16, 32, 64]}}
    config = {"model": {"type": "FasterRCNN", "backbone": {**m["backbone"], "out_indices": [0, 1, 2, 3]},
                        "neck": {"type": "FPN", "in_channels": [64, 128, 256, 512], "out_channels": 64, "num_outs": 5},
                        "rpn_head": rpn, "roi_head": roi}}
    official = {k.replace("roi_head.0.", "roi_head."): v for k, v in state.items()
                if k.startswith(("backbone.", "rpn_head.", "roi_head.0.bbox_head."))}
    with pytest.raises(ValueError, match=r"missing from the checkpoint: fpn\.lateral\.0\.weight"):
        load_official("mmdet_faster_rcnn", {"state_dict": official}, config)
    model = load_official("mmdet_faster_rcnn", {"state_dict": official}, config, strict=False).eval()
    assert model.config.backbone.norm == "frozen_bn" and model.config.roi_box_loss == "giou"
    mine = model.state_dict()
    for key in ("rpn_head.rpn_cls.weight", "roi_head.bbox_head.fc_reg.weight",
                "backbone.body.layer4.2.bn3.running_var"):
        assert torch.equal(mine[key], official[key.replace("body.", "")])
    with torch.no_grad():
        ours = model.backbone(inputs["inputs"]["img"])[1:]  # C3..C5
    for a, b in zip(ours, feats, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), atol=1e-3, rtol=1e-4)
