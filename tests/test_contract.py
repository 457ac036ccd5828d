"""The data contract, checked on every zoo model at tiny sizes (widths, layers and queries
overridden, so the R50 / R101 entries build in milliseconds): train step, raw eval outputs,
empty targets, checkpoints, predictions in original pixels, eval == predict preprocessing,
bfloat16 autocast. Family-specific behaviour stays in tests/detr, tests/dense, tests/yolact."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import codetr
from codetr.config import DataConfig
from codetr.data.build import val_dataset
from codetr.data.loader import collate
from codetr.recipes import RECIPES
from codetr.registry import FAMILIES
from codetr.structures import ClassInfo, Target

BACKBONE = {"depth": 18, "stem_channels": 8, "res2_channels": 8}
DETR = dict(backbone=BACKBONE, hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=2, ffn_dim=32, num_queries=10,
            num_select=10)
TINY = {  # family -> config overrides that shrink any of its zoo entries
    "deformable_detr": DETR,
    "dino": {**DETR, "dn_number": 3},
    "yolact": dict(backbone=BACKBONE, fpn_features=16, num_prototypes=4, max_size=64, conf_threshold=0.0),
    "defcn": dict(backbone=BACKBONE, fpn_channels=64, num_convs=1, score_threshold=0.0),
    "fcos": dict(backbone=BACKBONE, fpn_channels=64, num_convs=1, score_threshold=0.0),
    "atss": dict(backbone=BACKBONE, fpn_channels=32, feat_channels=64, stacked_convs=1, score_threshold=0.0),
    "faster_rcnn": dict(backbone=BACKBONE, fpn_channels=16, rpn_channels=16, fc_channels=32),
    # ResNet fields shrink the ResNet entries, ``swin`` the Swin-L ones; the auxiliary heads follow.
    # 64-d: the GroupNorm (32 groups) of a 1 x 1 map needs 2 channels per group
    "co_detr": dict(backbone={**BACKBONE, "swin": {"embed_dims": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                                                   "window_size": 4}},
                    embed_dims=64, pe_num_feats=32, num_heads=2, enc_layers=1, dec_layers=2, ffn_dim=32,
                    num_queries=10, dn_num_queries=3),
}
SPEC = {"min_size": 64, "max_size": 96}  # the non-square families' tiny input
HW = (64, 64)                             # the train / eval batch's images


def family_of(name: str) -> str:
    if name.startswith(("co_deformable_detr", "co_dino")):  # Co-DETR's two variants
        return "co_detr"
    return next(f for f in TINY if name.startswith(f))


def tiny(name: str) -> codetr.detector.Detector:
    family = family_of(name)
    torch.manual_seed(0)
    model = codetr.create(name, num_classes=3, input_spec=None if family == "yolact" else SPEC, **TINY[family])
    assert model.family == family
    return model


def targets(n_objects: tuple[int, ...], hw: tuple[int, int] = HW) -> list[Target]:
    """One Target per image with ``n`` boxes (and masks, which YOLACT needs) in an ``hw`` frame."""
    out = []
    for n in n_objects:
        boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 24.0, 60.0, 62.0]])[:n]
        masks = torch.zeros(n, *hw, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = True
        out.append(Target(boxes, torch.tensor([0, 2])[:n], size=hw, masks=masks))
    return out


def train_step(model, n_objects: tuple[int, ...], hw: tuple[int, int] = HW) -> torch.Tensor:
    """One forward + backward on random images; returns the total loss, checks the gradients."""
    model.train()
    images, sizes = torch.randn(len(n_objects), 3, *hw), torch.tensor([hw] * len(n_objects))
    total = model(images, sizes, targets(n_objects, hw)).total()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    return total


def eval_outputs(model) -> dict:
    model.eval()
    with torch.no_grad():
        return model(torch.linspace(-2, 2, 2 * 3 * HW[0] * HW[1]).view(2, 3, *HW), torch.tensor([HW, HW]))


def raw_output_names(model) -> set[str]:
    """The README's names: DETRs' pred_logits, pred_boxes, aux_outputs and enc_outputs (two-stage
    Deformable DETR) / interm_outputs (DINO); DeFCN's box_cls, box_delta and box_filter (3DMF) or
    box_center (FCOS); ATSS's (mmdet) cls_scores, bbox_preds, centernesses; YOLACT's loc, conf, mask,
    priors, proto; Co-DETR's all_cls_scores, all_bbox_preds, enc_outputs_as_feats and the
    variant's encoder outputs."""
    c = model.config
    if model.family == "deformable_detr":
        return {"pred_logits", "pred_boxes", "aux_outputs"} | ({"enc_outputs"} if c.two_stage else set())
    if model.family == "dino":
        return {"pred_logits", "pred_boxes", "aux_outputs", "interm_outputs"}
    if model.family == "yolact":
        return {"loc", "conf", "mask", "priors", "proto"}
    if model.family == "faster_rcnn":
        return {"rpn_cls_score", "rpn_bbox_pred", "proposals", "rois", "cls_score", "bbox_pred"}
    if model.family == "atss":
        return {"cls_scores", "bbox_preds", "centernesses"}
    if model.family == "co_detr":
        encoder = ("enc_outputs_class", "enc_outputs_coord") if c.variant == "deformable" else \
            ("enc_topk_scores", "enc_topk_anchors")
        return {"all_cls_scores", "all_bbox_preds", "enc_outputs_as_feats", *encoder}
    return {"box_cls", "box_delta"} | ({"box_center"} if model.family == "fcos" else
                                       {"box_filter"} if c.max_filter else set())


def flat(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in flat(tree[k])]
    return [t for v in tree for t in flat(v)]


MODELS = codetr.list_models()


def test_every_zoo_model_has_a_family_a_recipe_and_a_tiny_config():
    assert set(RECIPES) == set(MODELS)
    assert {family_of(name) for name in MODELS} == {f.name for f in FAMILIES} == set(TINY)


@pytest.mark.parametrize("name", MODELS)
def test_train_step_gives_finite_losses_and_gradients(name):
    model = tiny(name)
    losses = model(torch.randn(2, 3, *HW), torch.tensor([HW, HW]), targets((2, 1))).losses
    assert losses and all(bool(torch.isfinite(v)) for v in losses.values())
    assert bool(torch.isfinite(train_step(model, (2, 1))))


@pytest.mark.parametrize("name", MODELS)
def test_eval_outputs_carry_the_official_names(name):
    model = tiny(name)
    assert set(eval_outputs(model)) == raw_output_names(model)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_objects", [(0, 0), (2, 0)], ids=["no_boxes_at_all", "an_image_without_boxes"])
def test_images_without_boxes_train(name, n_objects):
    assert bool(torch.isfinite(train_step(tiny(name), n_objects)))


@pytest.mark.parametrize("name", MODELS)
def test_save_load_gives_identical_eval_outputs(name, tmp_path):
    model = tiny(name)
    train_step(model, (2, 1))  # BatchNorm statistics move away from their initial values
    codetr.save(model, tmp_path / "m.ckpt")
    loaded = codetr.load(tmp_path / "m.ckpt")
    assert loaded.config == model.config and loaded.input_spec == model.input_spec
    assert all(torch.equal(a, b) for a, b in zip(flat(eval_outputs(model)), flat(eval_outputs(loaded))))


@pytest.mark.parametrize("name", MODELS)
def test_predict_gives_boxes_in_original_pixels(name):
    """An odd-sized image: ``predict`` = prepare + detect at the original size; box centres lie
    in the original frame; the same outputs for a 2x / 3x larger original scale with it."""
    model = tiny(name).eval()
    h, w = 45, 77
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    [det] = model.predict(image)
    images, sizes, orig = model.prepare([image])
    assert orig == [(h, w)] and len(det) > 0
    [ref] = model.detect(images, sizes, orig)
    torch.testing.assert_close(det.boxes, ref.boxes)
    centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
    assert bool((centres >= -1e-3).all() and (centres <= torch.tensor([w, h]) + 1e-3).all())
    [larger] = model.detect(images, sizes, [(2 * h, 3 * w)])
    torch.testing.assert_close(larger.boxes, det.boxes * torch.tensor([3.0, 2.0, 3.0, 2.0]))
    if det.masks is not None:
        assert det.masks.shape == (len(det), h, w) and larger.masks.shape == (len(det), 2 * h, 3 * w)


def write_val_split(root, shapes: list[tuple[int, int]]) -> list:
    """A COCO val split of random RGB images of the given (h, w); returns their paths."""
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    paths, images, anns = [], [], []
    for i, (h, w) in enumerate(shapes, 1):
        paths.append(root / "val" / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, w // 2, h // 2], "area": 1.0,
                     "iscrowd": 0})
    categories = [{"id": k, "name": name} for k, name in ((1, "a"), (2, "b"), (3, "c"))]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return paths


@pytest.mark.parametrize("name", MODELS)
def test_eval_preprocessing_equals_predict_preprocessing(name, tmp_path):
    """The val split through the model's InputSpec (``val_dataset`` -> ``collate``) gives the
    network the same input as ``model.prepare``."""
    model = tiny(name)
    [path] = write_val_split(tmp_path, [(45, 77)])
    spec = model.input_spec
    batch = collate([val_dataset(DataConfig(path=str(tmp_path)), spec)[0]], spec.size_divisibility)
    images, sizes, orig = model.prepare([path])
    assert torch.equal(batch.sizes, sizes) and batch.targets[0].orig_size == orig[0]
    torch.testing.assert_close(batch.images, images, atol=1e-5, rtol=0)


BF16_GAPS = {"yolact_plus_r50_550": "torchvision's deform_conv2d has no bfloat16 CPU kernel"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=BF16_GAPS[n], strict=True))
                                  if n in BF16_GAPS else n for n in MODELS])
def test_bf16_autocast_train_step_is_finite(name):
    """At 128 px: torch 2.14's CPU bf16 convolution (NCHW) returns a garbage weight gradient
    for a 1x1 input with stride 2 and padding 1, which P7 of a 64 px image is."""
    model = tiny(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total = train_step(model, (2, 1), hw=(128, 128))
    assert total.dtype == torch.float32 and bool(torch.isfinite(total))


def test_eval_command_on_a_bgr_checkpoint_matches_predict(tmp_path, capsys):
    """``codetr eval`` preprocesses as the checkpoint's InputSpec says (here BGR on [0, 255]
    values, as converted cvpods DeFCN models): its detections are ``model.predict``'s."""
    from codetr.cli import main

    spec = {"channel_order": "BGR", "scale_255": True, "mean": (30.0, 120.0, 200.0), "std": (20.0, 60.0, 90.0),
            "min_size": 64, "max_size": 96, "size_divisibility": 32}
    torch.manual_seed(0)
    classes = ClassInfo([1, 2, 3], ["a", "b", "c"])
    model = codetr.create("defcn_tiny", classes=classes, input_spec=spec, **TINY["defcn"]).eval()
    codetr.save(model, tmp_path / "bgr.ckpt")
    paths = write_val_split(tmp_path / "data", [(45, 77), (64, 50)])
    results = tmp_path / "results.json"
    assert main(["eval", str(tmp_path / "bgr.ckpt"), "--data", str(tmp_path / "data"), "--batch-size", "1",
                 "--results", str(results)]) == 0
    evaluated = json.loads(results.read_text())
    dets = model.predict(paths, batch_size=1)
    for image_id, det in enumerate(dets, 1):
        mine = [r for r in evaluated if r["image_id"] == image_id]
        xywh = torch.cat([det.boxes[:, :2], det.boxes[:, 2:] - det.boxes[:, :2]], 1)
        # the results file rounds boxes to 3 decimals, scores to 5
        torch.testing.assert_close(torch.tensor([r["bbox"] for r in mine]), xywh, atol=6e-4, rtol=0)
        torch.testing.assert_close(torch.tensor([r["score"] for r in mine]), det.scores, atol=6e-6, rtol=0)
    model.input_spec.channel_order = "RGB"  # a channel swap shows: the test can fail
    swapped = model.predict(paths[0])[0].scores
    assert swapped.shape != dets[0].scores.shape or not torch.allclose(swapped, dets[0].scores)
