"""Parity of the ATSS head (``codetr.dense.atss``) with Co-DETR's official ``CoATSSHead``
(mmdet 2.25.3) on both Co-DETR fixtures (../shared/golden/co_detr), and its behaviour on bad
input (images without boxes, boxes smaller than a pixel).

The head is built from ``inputs['common']['config']`` (``model.bbox_head[0]``, the last
``train_cfg`` / ``test_cfg`` entries), loads ``bbox_head.0.*`` of ``*_checkpoint.pt`` strictly
and runs on the stored aux-head features ``eval['query_head']['enc_outputs_as_feats']``.
Tolerances: losses rtol 1e-5 / atol 1e-6 (the fixture README measures 9.5e-7 between thread
counts); ``pos_coords`` exactly; detections per class as sets, boxes atol 1e-3 px, scores 1e-5.
"""
import pytest
import torch

from codetr.dense.atss import (ATSSHead, ATSSLossConfig, atss_head_from_mmdet, centerness_target,
                               load_official_weights, official_key_map)
from codetr.ops.nms import detections_per_class
from tests.conftest import golden

FIXTURES = ["co_deformable_detr_r50w16", "co_dino_5scale_r50w16"]
LOSS_KEYS = ("loss_cls", "loss_bbox", "loss_centerness")


@pytest.fixture(scope="module", params=FIXTURES)
def case(request):
    name = request.param
    inputs = golden(f"co_detr/{name}_inputs.pt")
    model_cfg = inputs["common"]["config"]["model"]
    head = atss_head_from_mmdet(model_cfg["bbox_head"][0], model_cfg["train_cfg"][-1], model_cfg["test_cfg"][-1])
    load_official_weights(head, golden(f"co_detr/{name}_checkpoint.pt")["state_dict"])
    evals = golden(f"co_detr/{name}_eval.pt")
    train = golden(f"co_detr/{name}_train.pt")["train"]["atss0_forward_train"]
    return dict(name=name, head=head, cfg=model_cfg, inputs=inputs["inputs"], train=train,
                feats=evals["eval"]["query_head"]["enc_outputs_as_feats"],
                one_stage=evals["extra_eval_aux_heads"]["one-stage"]["bbox_results_per_class"])


def _train(case):
    torch.set_num_threads(2)
    metas = case["inputs"]["img_metas"]
    out = case["head"](case["feats"])
    return case["head"].loss(out, case["inputs"]["gt_bboxes"], case["inputs"]["gt_labels"],
                             [m["pad_shape"] for m in metas])


def test_config_read_from_official(case):
    head, cfg = case["head"], case["cfg"]["bbox_head"][0]
    assert head.anchor_generator.strides == cfg["anchor_generator"]["strides"]
    assert (len(head.cls_tower), head.num_classes, head.topk) == (1, 20, 9)
    assert head.loss_cfg == ATSSLossConfig(4.0, 8.0, 4.0, 0.25, 2.0)
    assert head.target_stds == (0.1, 0.1, 0.2, 0.2)
    t = head.test_cfg
    assert (t.nms_pre, t.score_thr, t.nms_iou, t.max_per_img) == (1000, 0.0, 0.6, 100)


def test_key_map_covers_checkpoint_exactly(case):
    sd = golden(f"co_detr/{case['name']}_checkpoint.pt")["state_dict"]
    theirs = {k[len("bbox_head.0."):] for k in sd if k.startswith("bbox_head.0.")}
    keys = official_key_map(len(case["head"].cls_tower), len(case["head"].scales))
    assert set(keys) == theirs and set(keys.values()) == set(case["head"].state_dict())
    with pytest.raises(KeyError, match="unmapped"):
        load_official_weights(case["head"], {"bbox_head.0.extra.weight": torch.zeros(1)})


def test_losses_match_official(case):
    res = _train(case)
    for key in LOSS_KEYS:
        assert len(res.losses[key]) == len(case["train"][key])
        torch.testing.assert_close(torch.stack(res.losses[key]), torch.stack(case["train"][key]).float(),
                                   rtol=1e-5, atol=1e-6)


def test_pos_coords_match_official(case):
    got, ref = _train(case).pos_coords, case["train"]["pos_coords"]
    assert got.kind == ref[3] == "atss"
    for ours, theirs in zip(got[:3], ref[:3]):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and torch.equal(a, b)


def _match_as_sets(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Rows [n, 5] equal as sets: each reference row has its own got row within tolerance."""
    assert got.shape == ref.shape
    free = torch.ones(len(got), dtype=torch.bool)
    for row in ref:
        close = ((got[:, :4] - row[:4]).abs().amax(1) <= 1e-3) & ((got[:, 4] - row[4]).abs() <= 1e-5) & free
        assert close.any(), f"no detection matches {row.tolist()}"
        free[close.nonzero()[0, 0]] = False


def test_simple_test_matches_official(case):
    torch.set_num_threads(2)
    metas, head = case["inputs"]["img_metas"], case["head"]
    with torch.no_grad():
        dets = head.predict(head(case["feats"]), [m["img_shape"] for m in metas],
                            torch.stack([m["scale_factor"] for m in metas]))
    for (boxes, labels), ref in zip(dets, case["one_stage"]):
        per_class = detections_per_class(boxes, labels, head.num_classes)
        assert len(per_class) == len(ref)
        for got_k, ref_k in zip(per_class, ref):
            _match_as_sets(got_k, ref_k)


def test_backward_reaches_every_parameter(case):
    res = _train(case)
    total = sum(sum(v) for v in res.losses.values())
    grads = torch.autograd.grad(total, list(case["head"].parameters()), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# -- bad input ----------------------------------------------------------------------------

def _tiny_head(seed: int = 0) -> tuple[ATSSHead, list[torch.Tensor]]:
    torch.manual_seed(seed)
    head = ATSSHead(num_classes=3, in_channels=32, strides=[8, 16], feat_channels=32, stacked_convs=1,
                    octave_base_scale=2, loss_cfg=ATSSLossConfig(4.0, 8.0, 4.0))  # anchors 2 x stride
    return head, [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]


def test_images_without_boxes_are_all_negative():
    head, feats = _tiny_head()
    none = [torch.zeros(0, 4), torch.zeros(0, 4)]
    res = head.loss(head(feats), none, [torch.zeros(0, dtype=torch.long)] * 2, [(64, 64), (48, 64)])
    assert all(torch.isfinite(v).all() for vs in res.losses.values() for v in vs)
    assert all(float(v.detach()) == 0 for v in res.losses["loss_bbox"] + res.losses["loss_centerness"])
    assert sum(res.losses["loss_cls"]) > 0
    assert all((labels == 3).all() for labels in res.pos_coords.labels)
    assert all((t == 0).all() for t in res.pos_coords.targets)
    total = sum(sum(v) for v in res.losses.values())
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_one_image_without_boxes_in_a_batch():
    head, feats = _tiny_head(1)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
    res = head.loss(head(feats), boxes, labels, [(64, 64), (48, 64)])
    assert (res.pos_coords.labels[0] == 2).any() and (res.pos_coords.labels[1] == 3).all()
    assert all(torch.isfinite(v) for vs in res.losses.values() for v in vs)
    assert sum(res.losses["loss_bbox"]) > 0


def test_sub_pixel_boxes_are_finite():
    head, feats = _tiny_head(2)
    # 0.5 px boxes; the first holds the anchor centre (8, 8), so it gets positives
    boxes = [torch.tensor([[7.8, 7.8, 8.3, 8.3], [30.1, 30.1, 30.4, 30.3]]), torch.tensor([[16.0, 16.0, 16.5, 16.5]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    res = head.loss(head(feats), boxes, labels, [(64, 64), (48, 64)])
    assert (res.pos_coords.labels[0] == 0).any()
    assert not (res.pos_coords.labels[1] == 2).any()  # (16, 16) lies on the box edge: not inside
    total = sum(sum(v) for v in res.losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_batched_targets_equal_per_image():
    head, feats = _tiny_head(3)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 30.0], [20, 20, 60, 60]]), torch.tensor([[10.0, 2.0, 30.0, 44.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    shapes = [(64, 64), (48, 64)]
    out = head(feats)
    both = head.targets(out, boxes, labels, shapes)
    for i in range(2):
        single = type(out)(*[[m[i:i + 1] for m in maps] for maps in (out.cls_logits, out.deltas, out.centerness)])
        one = head.targets(single, boxes[i:i + 1], labels[i:i + 1], shapes[i:i + 1])
        assert torch.equal(one.labels[0], both.labels[i]) and torch.equal(one.boxes[0], both.boxes[i])
        assert torch.equal(one.anchors[0], both.anchors[i]) and torch.equal(one.valid[0], both.valid[i])
    assert (both.anchors[1][~both.valid[1]] == 0).all() and (~both.valid[1]).sum() == 16 + 4


def test_centerness_target_values():
    anchors = torch.tensor([[-4.0, -4.0, 4.0, 4.0], [6.0, 0.0, 10.0, 4.0]])  # centres (0, 0), (8, 2)
    boxes = torch.tensor([[-2.0, -1.0, 2.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    expected = torch.tensor([1.0, (2 / 8 * 2 / 8) ** 0.5])
    torch.testing.assert_close(centerness_target(anchors, boxes), expected)


def test_predict_without_candidates_is_empty():
    head, feats = _tiny_head(4)
    head.test_cfg = type(head.test_cfg)(score_thr=1.0)  # sigmoid never exceeds 1
    dets = head.predict(head(feats), [(64, 64), (48, 64)])
    assert all(d.shape == (0, 5) and l.numel() == 0 for d, l in dets)
