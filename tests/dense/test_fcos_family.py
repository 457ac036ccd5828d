"""FCOS as its own family: checkpoints of family "defcn" with ``assigner`` (written before the
split) load as FCOS / DeFCN, and a cvpods FCOS checkpoint converts through both
``codetr convert defcn`` and ``codetr convert fcos``."""
import json
import re

import pytest
import torch

import codetr
from codetr.cli import main
from codetr.convert import load_official
from codetr.dense.fcos import FCOS, FCOSConfig
from codetr.engine.checkpoint import load_checkpoint

QUARTER_R50 = dict(depth=50, norm="frozen_bn", frozen_stages=1, stem_channels=16, res2_channels=64, width_per_group=16,
                   stride_in_1x1=True)
CVPODS_CONFIG = {"MODEL": {"RESNETS": {"DEPTH": 50, "STEM_OUT_CHANNELS": 16, "RES2_OUT_CHANNELS": 64,
                                       "WIDTH_PER_GROUP": 16},
                           "FPN": {"OUT_CHANNELS": 64}, "FCOS": {"FPN_STRIDES": [8, 16, 32], "NUM_CONVS": 1}}}


def old_checkpoint(tmp_path, name: str, assigner: str) -> tuple[codetr.detector.Detector, str]:
    """A codetr checkpoint as written before FCOS was a family: family "defcn", the joint
    config (``assigner``, ``fcos_size_ranges``, DeFCN's and FCOS's fields together)."""
    torch.manual_seed(0)
    model = codetr.create(name, num_classes=3)
    codetr.save(model, tmp_path / "new.ckpt", name)
    state = torch.load(tmp_path / "new.ckpt", weights_only=True)
    config = dict(state["model_config"])
    joint = {"assigner": assigner, "max_filter": True, "filter_kernel_size": 3, "filter_tau": 2, "poto_alpha": 0.8,
             "aux_topk": 9, "reg_weight": 2.0, "centerness_on_reg": True,
             "fcos_size_ranges": config.pop("size_ranges", [[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0]])}
    state["model_config"] = {**joint, **config} if assigner == "poto" else {**config, **joint}
    state["family"] = "defcn"
    torch.save(state, tmp_path / "old.ckpt")
    return model, str(tmp_path / "old.ckpt")


@pytest.mark.parametrize("name,assigner,family", [("fcos_tiny", "fcos", "fcos"), ("defcn_tiny", "poto", "defcn")])
def test_old_joint_checkpoints_load(tmp_path, name, assigner, family):
    model, path = old_checkpoint(tmp_path, name, assigner)
    loaded = codetr.load(path)
    assert loaded.family == family and loaded.config == model.config and type(loaded) is type(model)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    # resuming checks the family after the upgrade
    assert load_checkpoint(path, family=family)["family"] == family


def test_old_fcos_keeps_its_size_ranges(tmp_path):
    _, path = old_checkpoint(tmp_path, "fcos_tiny", "fcos")
    state = torch.load(path, weights_only=True)
    state["model_config"]["fcos_size_ranges"] = [[-1.0, 40.0], [40.0, 80.0], [80.0, float("inf")]]
    torch.save(state, path)
    assert codetr.load(path).config.size_ranges == [[-1.0, 40.0], [40.0, 80.0], [80.0, float("inf")]]


def cvpods_state(model: FCOS) -> dict:
    """Our weights under cvpods' names (the inverse of ``convert.defcn.KEY_RULES``)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.body."):
            k = key[len("backbone.body."):]
            k = re.sub(r"^layer(\d)", lambda m: f"res{int(m[1]) + 1}", k)
            k = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", k)
            k = k.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
            k = re.sub(r"^conv1\.", "stem.conv1.", re.sub(r"^bn1\.", "stem.conv1.norm.", k))
            name = "backbone.bottom_up." + k
        elif key.startswith("fpn."):
            kind, i, rest = key.split(".", 3)[1:]
            name = f"backbone.fpn_{kind}{int(i) + 3}.{rest}"
        else:
            name = key
        out[name] = value.clone()
    return out


@pytest.mark.parametrize("family", ["defcn", "fcos"])
def test_cvpods_fcos_checkpoint_converts(tmp_path, family):
    torch.manual_seed(0)
    model = codetr.create("fcos_tiny", num_classes=3, backbone=QUARTER_R50, num_convs=1).eval()
    torch.save({"model": cvpods_state(model)}, tmp_path / "fcos.pth")
    (tmp_path / "config.json").write_text(json.dumps(CVPODS_CONFIG))
    assert main(["convert", family, str(tmp_path / "fcos.pth"), str(tmp_path / "m.ckpt"),
                 "--config", str(tmp_path / "config.json")]) == 0
    loaded = codetr.load(tmp_path / "m.ckpt").eval()
    assert isinstance(loaded, FCOS) and loaded.config == FCOSConfig(
        num_classes=3, backbone=model.config.backbone, fpn_channels=64, strides=[8, 16, 32], num_convs=1)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x, torch.tensor([[64, 96]])), loaded(x, torch.tensor([[64, 96]]))
    for key in ("box_cls", "box_delta", "box_center"):
        for u, v in zip(a[key], b[key]):
            assert torch.equal(u, v), key


def test_convert_fcos_refuses_a_defcn_checkpoint():
    with pytest.raises(ValueError, match="not a cvpods FCOS checkpoint"):
        load_official("fcos", {"model": {"head.cls_score.weight": torch.zeros(3, 1, 3, 3)}})
