"""Model configs: one nested, frozen ``BackboneConfig`` per family config, type-checked overrides,
exact rebuilds from checkpoints (every zoo model) and old flat checkpoints upgraded on load."""
import dataclasses

import pytest

import codetr
from codetr.backbones import BackboneConfig
from codetr.backbones.config import FLAT_BACKBONE_KEYS
from codetr.config import RunConfig, apply_overrides
from codetr.engine.checkpoint import model_state, save_checkpoint

# the backbone keys each family's flat model_config had before BackboneConfig
OLD_FLAT_KEYS = {
    "deformable_detr": ["backbone_depth", "backbone_norm", "backbone_frozen_stages", "dilation", "stem_channels",
                        "res2_channels"],
    "defcn": ["backbone_depth", "backbone_norm", "backbone_frozen_stages", "stem_channels", "res2_channels",
              "width_per_group", "stride_in_1x1"],
    "yolact": ["backbone_depth", "backbone_norm", "backbone_frozen_stages", "dcn_layers", "dcn_interval",
               "stem_channels", "res2_channels"],
}
OLD_FLAT_KEYS["dino"] = OLD_FLAT_KEYS["deformable_detr"]


@pytest.mark.parametrize("name", codetr.list_models())
def test_every_zoo_model_rebuilds_exactly(name, tmp_path):
    model = codetr.create(name, num_classes=3)
    codetr.save(model, tmp_path / "m.ckpt", name)
    loaded = codetr.load(tmp_path / "m.ckpt")
    assert loaded.config == model.config and isinstance(loaded.config.backbone, BackboneConfig)
    assert list(loaded.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("name", ["deformable_detr_tiny", "dino_tiny", "defcn_tiny", "yolact_tiny"])
def test_old_flat_checkpoint_loads(name, tmp_path):
    model = codetr.create(name, num_classes=3, backbone={"frozen_stages": 0})
    state = model_state(model, name)
    backbone = state["model_config"].pop("backbone")
    old = {new: old for old, new in FLAT_BACKBONE_KEYS.items()}
    flat = {old[k]: list(v) if isinstance(v, tuple) else v for k, v in backbone.items() if k in old}
    state["model_config"].update({k: flat[k] for k in OLD_FLAT_KEYS[model.family]})
    save_checkpoint(tmp_path / "old.ckpt", state)
    loaded = codetr.load(tmp_path / "old.ckpt")
    assert loaded.config == model.config and loaded.config.backbone.frozen_stages == 0


def test_configs_are_frozen():
    model = codetr.create("yolact_tiny", num_classes=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.conf_threshold = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.backbone.depth = 50
    assert codetr.create("yolact_tiny", num_classes=3).config.conf_threshold == model.config.conf_threshold


def test_nested_override_keeps_the_family_backbone():
    """A partial ``backbone`` dict updates the entry's own backbone: YOLACT keeps trainable BN."""
    backbone = codetr.create("yolact_r50_550", num_classes=3, backbone={"depth": 18}).config.backbone
    assert backbone == BackboneConfig(depth=18, norm="bn", frozen_stages=-1)
    cfg = apply_overrides(RunConfig(), ["model=defcn_tiny", "model_args.backbone.frozen_stages=1"])
    model = codetr.create(cfg.model, num_classes=3, **cfg.model_args)
    assert model.config.backbone.frozen_stages == 1 and model.config.backbone.depth == 18
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())


def test_backbone_override_is_type_checked():
    with pytest.raises(ValueError, match=r"unknown config key 'backbone.detph'.*did you mean 'backbone.depth'"):
        codetr.create("dino_tiny", num_classes=3, backbone={"detph": 18})
    with pytest.raises(ValueError, match=r"config key 'backbone.dcn_layers\[1\]' expects int"):
        codetr.create("yolact_tiny", num_classes=3, backbone={"dcn_layers": [0, "4", 0, 0]})
