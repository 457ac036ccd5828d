"""DeFCN / FCOS models end to end on tiny inputs: training edge cases, inference
and the converter's errors."""
import pytest
import torch

import codetr
from codetr.convert import load_official
from codetr.dense.criterion import FCOSCriterion
from codetr.dense.losses import ltrb_giou_loss
from codetr.losses import focal_loss_on_probs, sigmoid_focal_loss
from codetr.structures import Target


def tiny(name="defcn_tiny", **overrides):
    torch.manual_seed(0)
    return codetr.create(name, num_classes=3, **overrides)


def targets_with_empty():
    return [Target(boxes=torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]]), labels=torch.tensor([0, 2])),
            Target(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]


@pytest.mark.parametrize("name", ["defcn_tiny", "fcos_tiny"])
def test_train_step_with_an_empty_image_and_tiny_maps(name):
    """64x64 input: P5 is 2x2, fewer points than the aux top-9; one image has no objects."""
    model = tiny(name).train()
    images, sizes = torch.randn(2, 3, 64, 64), torch.tensor([[64, 64], [50, 60]])
    out = model(images, sizes, targets_with_empty())
    total = out.total()
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name == "defcn_tiny":
        assert float(out.logs["num_fg_per_gt"]) == 1.0  # one point per object
        assert set(out.losses) == {"loss_cls", "loss_box_reg", "loss_cls_aux"}
        assert set(out.logs) == {"num_fg_per_gt", "num_fg_per_gt_aux"}
    else:
        assert set(out.losses) == {"loss_cls", "loss_box_reg", "loss_centerness"} and set(out.logs) == {"num_fg_per_gt"}


def test_batch_of_only_empty_images_trains():
    model = tiny().train()
    empty = Target(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([[64, 64]] * 2), [empty, empty])
    assert float(out.losses["loss_box_reg"].detach()) == 0.0 and float(out.losses["loss_cls"].detach()) > 0
    out.total().backward()


def test_unpadded_input_is_padded_like_official():
    """A 70x90 batch gives the same outputs as the same batch zero-padded to 96x96."""
    model = tiny().eval()
    x = torch.randn(1, 3, 70, 90)
    padded = torch.nn.functional.pad(x, (0, 6, 0, 26))
    with torch.no_grad():
        a, b = model(x, torch.tensor([[70, 90]])), model(padded, torch.tensor([[70, 90]]))
    for key in ("box_cls", "box_delta", "box_filter"):
        for u, v in zip(a[key], b[key]):
            assert torch.equal(u, v)


def test_eval_outputs_and_predict():
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), torch.tensor([[64, 96], [64, 80]]))
    assert [tuple(t.shape) for t in out["box_cls"]] == [(2, 3, 8, 12), (2, 3, 4, 6), (2, 3, 2, 3)]  # P3-P5
    assert out["box_delta"][0].shape == (2, 4, 8, 12) and out["box_filter"][0].shape == (2, 1, 8, 12)
    # force confident predictions (every score passes the threshold) and boxes of +-3 strides,
    # which stay non-empty after clipping to the image
    model.head.cls_score.bias.data.fill_(5.0)
    model.head.filter.bias.data.fill_(5.0)
    model.head.bbox_pred.bias.data.fill_(3.0)
    dets = model.predict([torch.rand(3, 50, 70)])
    assert len(dets[0]) == model.config.detections_per_image
    b = dets[0].boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 70).all() and (b[:, 3] <= 50).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    assert (dets[0].scores[:-1] >= dets[0].scores[1:]).all()


def test_fcos_nms_removes_duplicates():
    model = tiny("fcos_tiny").eval()
    model.head.cls_score.bias.data.fill_(5.0)
    model.head.bbox_pred.bias.data.fill_(3.0)  # overlapping, non-degenerate boxes
    with torch.no_grad():
        dets = model.postprocess(model(torch.randn(1, 3, 64, 64), torch.tensor([[64, 64]])), torch.tensor([[64, 64]]))
    from torchvision.ops import box_iou
    for label in dets[0].labels.unique():
        boxes = dets[0].boxes[dets[0].labels == label]
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= 0.6 + 1e-6


def test_loss_elements():
    logits = torch.randn(10, 3)
    targets = (torch.rand(10, 3) > 0.7).float()
    # on probabilities == on logits when the score is a single sigmoid
    torch.testing.assert_close(focal_loss_on_probs(logits.sigmoid(), targets), sigmoid_focal_loss(logits, targets),
                               atol=1e-5, rtol=1e-4)
    same = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert float(ltrb_giou_loss(same, same)) == pytest.approx(0.0, abs=1e-6)
    # disjoint: pred spans x in [-1, 0] (l=1, r=0 would be empty) -> use explicit boxes
    pred, tgt = torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert float(ltrb_giou_loss(pred, tgt)) == pytest.approx(1 - 0.25, abs=1e-6)  # IoU 1/4, enclosing = pred
    assert torch.allclose(FCOSCriterion.centerness(torch.tensor([[1.0, 2.0, 1.0, 2.0], [1.0, 1.0, 3.0, 1.0]])),
                          torch.tensor([1.0, (1 / 3) ** 0.5]))


def test_converter_reports_bad_checkpoints():
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_official("defcn", {"state_dict": {}})
    with pytest.raises(ValueError, match="not a cvpods DeFCN"):
        load_official("defcn", {"model": {"transformer.x": torch.zeros(1)}})
    with pytest.raises(ValueError, match="MODEL.FPN.BLOCK_IN_FEATURES"):
        load_official("defcn", {"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1),
                                          "head.cls_score.weight": torch.zeros(5, 1, 3, 3)}},
                      {"MODEL": {"FPN": {"BLOCK_IN_FEATURES": "res5"}}})
