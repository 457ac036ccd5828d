"""The ATSS family end to end on tiny inputs: mmdet's defaults, a train step, bad targets,
learning on one image, inference, the full-size model on a small input."""
import pytest
import torch
from torchvision.ops import box_iou

import codetr
from codetr.dense.atss_detector import ATSSConfig
from codetr.detector import mmdet_input_spec
from codetr.structures import Target


def tiny(**overrides):
    torch.manual_seed(0)
    return codetr.create("atss_tiny", num_classes=3, **overrides)


def target(boxes, labels, iscrowd=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.long)
    crowd = torch.zeros(len(labels), dtype=torch.bool) if iscrowd is None else torch.tensor(iscrowd)
    return Target(boxes=boxes, labels=labels, iscrowd=crowd)


def step(model, targets, hw=(128, 128)):
    model.train()
    model.zero_grad()
    out = model(torch.randn(len(targets), 3, *hw), torch.tensor([hw] * len(targets)), targets)
    total = out.total()
    total.backward()
    return out, total


def test_defaults_are_mmdet_atss_r50_fpn_1x():
    c = ATSSConfig()
    b = c.backbone
    assert (b.depth, b.norm, b.frozen_stages, b.stride_in_1x1) == (50, "frozen_bn", 1, False)
    assert (c.fpn_channels, c.strides, c.feat_channels, c.stacked_convs) == (256, [8, 16, 32, 64, 128], 256, 4)
    assert (c.octave_base_scale, c.scales_per_octave, c.anchor_ratios, c.topk) == (8, 1, [1.0], 9)
    assert (c.target_means, c.target_stds) == ([0.0] * 4, [0.1, 0.1, 0.2, 0.2])
    assert (c.focal_alpha, c.focal_gamma) == (0.25, 2.0)
    assert (c.cls_weight, c.giou_weight, c.centerness_weight) == (1.0, 2.0, 1.0)
    assert (c.score_threshold, c.topk_candidates, c.nms_threshold, c.detections_per_image) == (0.05, 1000, 0.6, 100)
    s = mmdet_input_spec()
    assert (s.mean, s.std, s.channel_order, s.scale_255) == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                                                               "RGB", True)
    assert (s.min_size, s.max_size, s.size_divisibility) == (800, 1333, 32)


def test_full_size_model_builds_and_runs_eval():
    torch.manual_seed(0)
    model = codetr.create("atss_r50_fpn_1x", num_classes=80).eval()
    assert model.input_spec == mmdet_input_spec()
    assert len(model.fpn.extra) == 2 and not model.fpn.relu_before_extra and model.fpn.extra_from == "p5"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128), torch.tensor([[96, 128]]))
    assert [tuple(x.shape) for x in out["cls_scores"]] == [(1, 80, 12, 16), (1, 80, 6, 8), (1, 80, 3, 4),
                                                            (1, 80, 2, 2), (1, 80, 1, 1)]
    assert out["bbox_preds"][0].shape == (1, 4, 12, 16) and out["centernesses"][4].shape == (1, 1, 1, 1)
    [det] = model.postprocess(out, torch.tensor([[96, 128]]))
    assert len(det) <= 100


def test_train_step_reaches_every_trainable_parameter():
    model = tiny()
    out, total = step(model, [target([[10, 12, 60, 70], [70, 20, 120, 64]], [0, 2]), target([[30, 30, 90, 100]], [1])])
    assert set(out.losses) == {"loss_cls", "loss_bbox", "loss_centerness"} and set(out.logs) == {"num_fg_per_gt"}
    assert torch.isfinite(total) and all(float(v.detach()) > 0 for v in out.losses.values())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the official weight of the GIoU loss is in weight_dict, the head's own weights are 1
    assert model.criterion.weight_dict == {"loss_cls": 1.0, "loss_bbox": 2.0, "loss_centerness": 1.0}


def test_images_without_boxes():
    out, total = step(tiny(), [target([], []), target([], [])])
    assert torch.isfinite(total) and float(out.losses["loss_bbox"].detach()) == 0
    assert float(out.losses["loss_cls"].detach()) > 0
    out, total = step(tiny(), [target([[10, 12, 60, 70]], [1]), target([], [])])
    assert torch.isfinite(total) and float(out.losses["loss_bbox"].detach()) > 0


def test_boxes_smaller_than_a_pixel_are_finite():
    model = tiny()
    out, total = step(model, [target([[7.8, 7.8, 8.3, 8.3], [40.1, 40.1, 40.4, 40.3]], [0, 1])])
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_crowd_boxes_are_ignored():
    """A crowd box changes nothing: the losses equal those without it."""
    plain = [target([[10, 12, 60, 70]], [0])]
    crowd = [target([[10, 12, 60, 70], [64, 64, 120, 120]], [0, 2], [False, True])]
    torch.manual_seed(1)
    images = torch.randn(1, 3, 128, 128)
    model = tiny().train()
    a = model(images, torch.tensor([[128, 128]]), plain)
    b = model(images, torch.tensor([[128, 128]]), crowd)
    for key in a.losses:
        torch.testing.assert_close(a.losses[key], b.losses[key])
    only_crowd = model(images, torch.tensor([[128, 128]]), [target([[64, 64, 120, 120]], [2], [True])])
    assert float(only_crowd.losses["loss_bbox"].detach()) == 0 and torch.isfinite(only_crowd.total())


def test_a_few_steps_on_one_image_lower_the_loss():
    model = tiny()
    torch.manual_seed(0)
    images = torch.randn(1, 3, 128, 128)
    targets = [target([[16, 20, 70, 80], [64, 40, 120, 110]], [0, 2])]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        total = model(images, torch.tensor([[128, 128]]), targets).total()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_predict_clips_to_the_image_and_applies_nms():
    model = tiny().eval()
    model.head.cls_logits.bias.data.fill_(5.0)  # every score passes the threshold
    dets = model.predict([torch.rand(3, 100, 140)])
    d = dets[0]
    assert 0 < len(d) <= model.config.detections_per_image
    assert (d.scores[:-1] >= d.scores[1:]).all()
    assert (d.boxes[:, :2] >= -1e-4).all()
    assert (d.boxes[:, 2] <= 140 + 1e-3).all() and (d.boxes[:, 3] <= 100 + 1e-3).all()
    for label in d.labels.unique():
        boxes = d.boxes[d.labels == label]
        assert box_iou(boxes, boxes).fill_diagonal_(0).max() <= 0.6 + 1e-5


def test_postprocess_score_is_class_times_centerness():
    """The ranking keeps sigmoid(cls) over the threshold; the detection score multiplies in
    sigmoid(centerness) (mmdet: no square root)."""
    model = tiny(detections_per_image=1000, nms_threshold=None, score_threshold=0.0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), torch.tensor([[64, 64]]))
    [det] = model.postprocess(out, torch.tensor([[64, 64]]))
    best = max((c[0].sigmoid() * q[0].sigmoid()).max() for c, q in zip(out["cls_scores"], out["centernesses"]))
    torch.testing.assert_close(det.scores.max(), best)


@pytest.mark.parametrize("field,value", [("strides", [8, 16]), ("strides", [4, 8, 16]), ("feat_channels", 48),
                                         ("target_stds", [0.1, 0.1]), ("topk", 0)])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"ATSSConfig.{field}"):
        ATSSConfig(**{field: value})
