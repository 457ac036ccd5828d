"""Necks: ChannelMapper parity with the official Co-DETR fixtures (``golden/co_detr``), and the
FPN's mmdet options against hand-checked shapes and a brute-force top-down sum.

ChannelMapper: built from ``common.config.model.neck``, the checkpoint's ``neck.*`` loaded
strictly (prefix stripped), fed the backbone maps, compared with ``eval.neck_feats`` (atol 1e-3).
Co-Deformable-DETR stores its backbone maps (``eval.backbone_feats``); Co-DINO stores only a
summary, so its maps are recomputed with codetr's ResNet from the checkpoint's ``backbone.*`` on
``inputs.img`` and first checked against ``eval.backbone_feats_summary`` (shape, sum, absmax).
"""
import pytest
import torch
import torch.nn.functional as F

from codetr.backbones import ResNetBackbone
from codetr.necks import ChannelMapper, FPN, channel_mapper_from_mmdet, fpn_from_mmdet, mmdet_fpn_key_map
from tests.conftest import golden

FIXTURES = ["co_deformable_detr_r50w16", "co_dino_5scale_r50w16"]


def _prefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request) -> dict:
    name = request.param
    inputs = golden(f"co_detr/{name}_inputs.pt")
    return {"name": name, "config": inputs["common"]["config"]["model"], "img": inputs["inputs"]["img"],
            "state": golden(f"co_detr/{name}_checkpoint.pt")["state_dict"],
            "eval": golden(f"co_detr/{name}_eval.pt")["eval"]}


def _neck(fx: dict) -> ChannelMapper:
    neck = channel_mapper_from_mmdet(fx["config"]["neck"]).eval()
    neck.load_state_dict(_prefixed(fx["state"], "neck."), strict=True)
    return neck


def _backbone_feats(fx: dict) -> list[torch.Tensor]:
    """The stored maps (Co-Def) or codetr's ResNet-50 w16 on the fixture's images (Co-DINO)."""
    ev = fx["eval"]
    if "backbone_feats" in ev:
        return ev["backbone_feats"]
    cfg = fx["config"]["backbone"]
    assert (cfg["depth"], cfg["base_channels"], cfg["style"]) == (50, 16, "pytorch")
    stages = [i + 1 for i in cfg["out_indices"]]
    backbone = ResNetBackbone(50, out_stages=stages, stem_channels=16, res2_channels=64, width_per_group=16).eval()
    backbone.body.load_state_dict(_prefixed(fx["state"], "backbone."), strict=True)
    torch.set_num_threads(4)
    with torch.no_grad():
        feats = backbone(fx["img"])
    for f, s in zip(feats, ev["backbone_feats_summary"], strict=True):
        assert list(f.shape) == list(s["shape"])
        assert float(f.double().sum()) == pytest.approx(s["sum"], rel=1e-6)
        assert float(f.abs().max()) == pytest.approx(s["absmax"], abs=1e-3)
    return feats


def test_config_read_and_weights_load_strictly(fixture):
    cfg, neck = fixture["config"]["neck"], _neck(fixture)
    assert len(neck.convs) == len(cfg["in_channels"])
    assert len(neck.convs) + len(neck.extra_convs) == cfg["num_outs"]
    assert all(c.conv.bias is None and c.gn.num_groups == 32 for c in [*neck.convs, *neck.extra_convs])


def test_neck_matches_official(fixture):
    neck = _neck(fixture)
    with torch.no_grad():
        outs = neck(list(_backbone_feats(fixture)))
    ref = fixture["eval"]["neck_feats"]
    assert [o.shape for o in outs] == [r.shape for r in ref]
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r.to(o.dtype), atol=1e-3, rtol=0)


# -- ChannelMapper alone -----------------------------------------------------------------------

def test_channel_mapper_extra_levels_by_hand():
    torch.manual_seed(0)
    neck = ChannelMapper([8, 16], 32, kernel_size=1, num_outs=4).eval()
    feats = [torch.randn(2, 8, 9, 11), torch.randn(2, 16, 5, 6)]
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 9, 11), (2, 32, 5, 6), (2, 32, 3, 3), (2, 32, 2, 2)]
    assert neck.extra_convs[0].conv.in_channels == 16 and neck.extra_convs[1].conv.in_channels == 32
    conv, gn = neck.convs[0].conv, neck.convs[0].gn
    torch.testing.assert_close(outs[0], F.group_norm(F.conv2d(feats[0], conv.weight), 32, gn.weight, gn.bias))
    torch.testing.assert_close(outs[2], neck.extra_convs[0](feats[1]))  # from the last INPUT
    torch.testing.assert_close(outs[3], neck.extra_convs[1](outs[2]))  # then from the previous extra
    assert sorted(neck.state_dict()) == sorted(
        [f"convs.{i}.{p}" for i in range(2) for p in ("conv.weight", "gn.weight", "gn.bias")]
        + [f"extra_convs.{i}.{p}" for i in range(2) for p in ("conv.weight", "gn.weight", "gn.bias")])


def test_channel_mapper_refusals():
    with pytest.raises(ValueError):
        ChannelMapper([8, 16], 32, num_outs=1)
    with pytest.raises(ValueError):
        ChannelMapper([32], 32)([torch.randn(1, 32, 4, 4)] * 2)
    with pytest.raises(ValueError):
        channel_mapper_from_mmdet({"type": "ChannelMapper", "in_channels": [32], "out_channels": 32,
                                   "norm_cfg": {"type": "GN", "num_groups": 32}})  # default act ReLU


# -- FPN options ---------------------------------------------------------------------------------

def _nearest(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Brute-force nearest resize [B, C, h0, w0] -> [B, C, h, w]: src = floor(dst * in / out)."""
    rows = [int(i * x.shape[-2] / h) for i in range(h)]
    cols = [int(j * x.shape[-1] / w) for j in range(w)]
    return torch.stack([torch.stack([x[..., r, c] for c in cols], -1) for r in rows], -2)


def _tiny(relu_before_extra: bool = True, extra_from: str = "p5", num_extra: int = 2):
    torch.manual_seed(0)
    fpn = FPN([4, 8, 16], 8, num_extra, extra_from, relu_before_extra).eval()
    feats = [torch.randn(1, 4, 10, 13), torch.randn(1, 8, 5, 7), torch.randn(1, 16, 3, 4)]
    return fpn, feats


def test_fpn_top_down_brute_force():
    fpn, feats = _tiny()
    with torch.no_grad():
        lat = [conv(f) for conv, f in zip(fpn.lateral, feats)]
        sums = [lat[2]]
        for l in (1, 0):  # each level adds the nearest-resized sum of the level above
            sums.insert(0, lat[l] + _nearest(sums[0], *lat[l].shape[-2:]))
        outs = fpn(feats)
        for l in range(3):
            torch.testing.assert_close(outs[l], fpn.output[l](sums[l]))


@pytest.mark.parametrize("extra_from", ["p5", "c5", "lateral", "pool"])
@pytest.mark.parametrize("relu_before_extra", [True, False])
def test_fpn_extra_levels(extra_from, relu_before_extra):
    fpn, feats = _tiny(relu_before_extra, extra_from)
    with torch.no_grad():
        outs, sums = fpn(feats), fpn.top_down(feats)
    # 10x13 -> 5x7 -> 3x4 -> ceil halves 2x2 -> 1x1 (3x3/2 pad 1 and max_pool(1, 2) agree)
    assert [tuple(o.shape[-2:]) for o in outs] == [(10, 13), (5, 7), (3, 4), (2, 2), (1, 1)]
    assert all(o.shape[:2] == (1, 8) for o in outs)
    if extra_from == "pool":
        assert len(fpn.extra) == 0
        torch.testing.assert_close(outs[3], outs[2][..., ::2, ::2])
        torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])
        return
    src = {"p5": outs[2], "c5": feats[2], "lateral": sums[2]}[extra_from]
    assert fpn.extra[0].in_channels == src.shape[1]
    torch.testing.assert_close(outs[3], fpn.extra[0](src))
    torch.testing.assert_close(outs[4], fpn.extra[1](F.relu(outs[3]) if relu_before_extra else outs[3]))


def test_fpn_from_mmdet_configs_and_key_map():
    atss = fpn_from_mmdet({"type": "FPN", "in_channels": [4, 8, 16], "out_channels": 8, "num_outs": 5,
                           "add_extra_convs": "on_output"})
    assert (atss.extra_from, atss.relu_before_extra, len(atss.extra)) == ("p5", False, 2)
    faster = fpn_from_mmdet({"type": "FPN", "in_channels": [4, 8, 16, 32], "out_channels": 8, "num_outs": 5})
    assert (faster.extra_from, len(faster.extra), faster.num_extra) == ("pool", 0, 1)
    outs = faster([torch.randn(1, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([4, 8, 16, 32])])
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]
    retina = fpn_from_mmdet({"in_channels": [4, 8, 16], "out_channels": 8, "num_outs": 5,
                             "add_extra_convs": "on_input", "relu_before_extra_convs": True})
    assert retina.extra_from == "c5" and retina.extra[0].in_channels == 16
    with pytest.raises(ValueError):
        fpn_from_mmdet({"in_channels": [4, 8], "out_channels": 8, "num_outs": 4, "start_level": 1})
    # mmdet names -> ours, every parameter covered once, loads strictly
    mm = {f"lateral_convs.{i}.conv.{p}": None for i in range(3) for p in ("weight", "bias")}
    mm.update({f"fpn_convs.{i}.conv.{p}": None for i in range(5) for p in ("weight", "bias")})
    key_map = mmdet_fpn_key_map(3, 2)
    assert sorted(key_map) == sorted(mm) and sorted(key_map.values()) == sorted(atss.state_dict())
    mmdet_state = {k: atss.state_dict()[v].clone() + 1 for k, v in key_map.items()}
    atss.load_state_dict({key_map[k]: v for k, v in mmdet_state.items()}, strict=True)
    torch.testing.assert_close(atss.extra[1].bias, mmdet_state["fpn_convs.4.conv.bias"])
