"""Co-DETR zoo entries at full size (the R50 ones and Swin-L 1x built and run on a small image;
both Swin-L entries, ~235M parameters, also checked for structure on the meta device),
the auxiliary heads sized to overrides, and encoder activation checkpointing (``with_cp``)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import codetr
from codetr.co_detr.config import official_aux_heads

FULL_SIZE = ["co_deformable_detr_r50_1x", "co_dino_5scale_r50_1x", "co_dino_5scale_lsj_r50_3x",
             "co_dino_5scale_swin_l_1x"]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_entries_build_and_run_eval(name: str):
    torch.manual_seed(0)
    model = codetr.create(name, num_classes=80).eval()
    c = model.config
    assert (c.embed_dims, c.enc_layers, c.dec_layers, len(model.aux_heads.roi_head), len(model.aux_heads.bbox_head)) \
        == (256, 6, 6, 1, 1)
    assert model.aux_heads.rpn_head is not None and c.rpn["head"]["loss_cls"]["loss_weight"] == 12.0
    with torch.no_grad():  # 160 x 192: more encoder tokens (639 at strides 8-64) than queries (300, 900)
        out = model(torch.randn(1, 3, 160, 192), torch.tensor([[160, 192]]))
    assert out["all_cls_scores"].shape == (6, 1, c.num_queries, 80)
    assert len(out["enc_outputs_as_feats"]) == c.num_levels + 1
    [det] = model.postprocess(out, torch.tensor([[160, 192]]))
    assert 0 < len(det) <= c.max_per_img


@pytest.mark.parametrize("name", ["co_dino_5scale_swin_l_1x", "co_dino_5scale_swin_l_lsj_3x"])
def test_swin_l_entries_have_the_official_structure(name: str):
    with torch.device("meta"):
        model = codetr.create(name, num_classes=80)
    c = model.config
    assert model.backbone.out_channels == [192, 384, 768, 1536]
    assert (c.num_queries, c.num_co_heads, c.enc_checkpoint_layers, c.nms) == (900, 2, 6, {"type": "soft_nms",
                                                                                            "iou_threshold": 0.8})
    assert c.backbone.swin.drop_path_rate == (0.5 if "lsj" in name else 0.3) and c.with_attn_mask == ("lsj" not in name)
    assert 230e6 < sum(p.numel() for p in model.parameters()) < 240e6  # Swin-L 197M + the rest


def test_overrides_reach_the_auxiliary_heads():
    with torch.device("meta"):
        model = codetr.create("co_dino_5scale_r50_1x", num_classes=5, embed_dims=64, pe_num_feats=32, num_levels=4)
    c = model.config
    assert c.roi_heads[0]["head"]["bbox_head"]["num_classes"] == 5 and c.atss_heads[0]["head"]["in_channels"] == 64
    assert c.rpn["head"]["anchor_generator"]["strides"] == [4, 8, 16, 32, 64]
    assert c == replace(c, **official_aux_heads(c))
    assert c.roi_heads[0]["train"]["sampler"]["num"] == 512 and c.rpn["proposal"]["max_per_img"] == 1000


def test_tiny_co_dino_trains_with_the_atss_head_alone():
    """co_dino_tiny: one auxiliary head (ATSS, predictors straight on the maps) and one
    positive-query group of at most 16 queries per image, sized to overrides."""
    model = codetr.create("co_dino_tiny", num_classes=5, embed_dims=64, pe_num_feats=32)
    c = model.config
    assert (c.rpn, c.roi_heads, c.num_co_heads) == (None, [], 1) and model.aux_heads.rpn_head is None
    assert c.atss_heads[0]["head"]["num_classes"] == 5 and c.atss_heads[0]["head"]["in_channels"] == 64
    assert c.atss_heads[0]["head"]["anchor_generator"]["strides"] == [8, 16, 32, 64, 128]
    assert c == replace(c, **official_aux_heads(c, with_roi=False, atss_stacked_convs=0))
    assert len(model.aux_heads.bbox_head[0].cls_tower) == 0 and c.max_pos_coords == 16


def test_encoder_checkpointing_gives_the_same_outputs_and_gradients():
    """``enc_checkpoint_layers`` (official ``with_cp``) changes memory, not values."""
    from tests.test_contract import targets

    grads, totals = [], []
    for layers in (0, 2):
        torch.manual_seed(0)
        model = codetr.create("co_dino_tiny", num_classes=3, enc_checkpoint_layers=layers).train()
        assert model.query_head.transformer.encoder.checkpoint_layers == layers
        torch.manual_seed(1)
        images = torch.randn(2, 3, 64, 64)
        total = model(images, torch.tensor([[64, 64], [64, 64]]), targets((2, 1))).total()
        total.backward()
        totals.append(total.detach())
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(totals[0], totals[1]) and grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=0, atol=0, msg=key)
