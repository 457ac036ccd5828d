"""``codetr convert mmdet_atss``: a codetr ATSS written out under mmdet's key names, with its
architecture as mmcv config text in ``meta``, converts back to the same outputs; unmapped and
missing keys and unsupported config values are refused by name."""
import re

import pytest
import torch

import codetr
from codetr.convert import load_official
from codetr.convert.mmdet_atss import key_rules

# a quarter-width pytorch-style R50 (base_channels 16), 2 FPN extra convs on the P5 output, 1-conv towers
CONFIG_TEXT = """
model = dict(
    type='ATSS',
    backbone=dict(type='ResNet', depth=50, base_channels=16, num_stages=4, out_indices=(0, 1, 2, 3),
                  frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch'),
    neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=32, start_level=1,
              add_extra_convs='on_output', num_outs=5),
    bbox_head=dict(
        type='ATSSHead', num_classes=3, in_channels=32, stacked_convs=1, feat_channels=64,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                              strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=7), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=500, min_bbox_size=0, score_thr=0.04, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=50))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
"""
BACKBONE = dict(depth=50, stem_channels=16, res2_channels=64, width_per_group=16)


def ours() -> codetr.detector.Detector:
    torch.manual_seed(0)
    model = codetr.create("atss_r50_fpn_1x", num_classes=3, backbone=BACKBONE, fpn_channels=32, feat_channels=64,
                          stacked_convs=1, topk=7, topk_candidates=500, score_threshold=0.04, nms_threshold=0.5,
                          detections_per_image=50)
    for name, buf in model.backbone.named_buffers():  # frozen BN statistics that are not the identity
        buf.copy_(torch.rand_like(buf) + 0.5 if name.endswith(("running_var", "weight")) else torch.randn_like(buf))
    return model.eval()


def as_mmdet(model) -> dict:
    """Our weights under mmdet's names (the inverse of the converter's key table), plus the BN
    counters mmdet's checkpoints carry."""
    inverse = []
    for pattern, repl in key_rules(model.config):
        if repl is None:
            continue
        theirs = pattern.replace("\\.", ".")  # an escaped literal key, or the backbone rule
        inverse.append((theirs, repl))
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.body."):
            name = key.replace("backbone.body.", "backbone.", 1)
        else:
            name = next(t for t, r in inverse if r == key)
        out[name] = value.clone()
        if re.search(r"\.bn\d\.running_var$|downsample\.1\.running_var$|^backbone\.bn1\.running_var$", name):
            out[name.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    return out


def checkpoint(model) -> dict:
    return {"meta": {"config": CONFIG_TEXT, "CLASSES": ("a", "b", "c")}, "state_dict": as_mmdet(model)}


def test_round_trip_gives_equal_outputs():
    model = ours()
    converted = load_official("atss", checkpoint(model)).eval()
    assert converted.config == model.config and converted.family == "atss"
    assert converted.classes.names == ["a", "b", "c"]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = model(x, torch.tensor([[96, 128]])), converted(x, torch.tensor([[96, 128]]))
    for key in a:
        for u, v in zip(a[key], b[key]):
            assert torch.equal(u, v), key


def test_cli_convert_writes_a_loadable_checkpoint(tmp_path):
    from codetr.cli import main

    model = ours()
    torch.save(checkpoint(model), tmp_path / "atss.pth")
    assert main(["convert", "mmdet_atss", str(tmp_path / "atss.pth"), str(tmp_path / "atss.ckpt")]) == 0
    loaded = codetr.load(tmp_path / "atss.ckpt")
    assert loaded.family == "atss" and loaded.config == model.config
    for (key, u), v in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(u, v), key


def test_without_a_config_the_defaults_are_used():
    torch.manual_seed(0)
    model = codetr.create("atss_r50_fpn_1x", num_classes=2)
    converted = load_official("atss", {"meta": {}, "state_dict": as_mmdet(model)})
    assert converted.config == model.config


def test_unmapped_and_missing_keys_are_named():
    state = as_mmdet(ours())
    state["bbox_head.extra_conv.weight"] = torch.zeros(1)
    del state["bbox_head.atss_centerness.bias"]
    with pytest.raises(ValueError, match=r"bbox_head\.extra_conv\.weight.*head\.centerness\.bias"):
        load_official("atss", {"meta": {"config": CONFIG_TEXT}, "state_dict": state})


@pytest.mark.parametrize("old,new,key", [
    ("start_level=1", "start_level=0", "neck.start_level"),
    ("add_extra_convs='on_output'", "add_extra_convs='on_input'", "neck.add_extra_convs"),
    ("type='GIoULoss'", "type='IoULoss'", "bbox_head.loss_bbox.type"),
    ("allowed_border=-1", "allowed_border=0", "train_cfg.allowed_border"),
])
def test_unsupported_config_is_refused_by_name(old, new, key):
    ckpt = checkpoint(ours())
    ckpt["meta"]["config"] = CONFIG_TEXT.replace(old, new)
    with pytest.raises(ValueError, match=re.escape(key)):
        load_official("atss", ckpt)


def test_not_an_atss_checkpoint():
    with pytest.raises(ValueError, match="no 'state_dict' entry"):
        load_official("atss", {"model": {}})
    with pytest.raises(ValueError, match="not an mmdet ATSS checkpoint"):
        load_official("atss", {"state_dict": {"rpn_head.rpn_cls.weight": torch.zeros(1)}})
