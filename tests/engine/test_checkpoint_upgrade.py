"""Checkpoints written by an earlier codetr still load (and resume) after weights were renamed."""
import re

import pytest
import torch

import codetr


def _as_written_before_the_encoder_module(weights: dict) -> dict:
    """DETR weight names before the encoder became a module: encoder.{i}.*, transformer.level_embed."""
    old = {}
    for name, value in weights.items():
        name = re.sub(r"^transformer\.encoder\.layers\.(\d+)\.", r"transformer.encoder.\1.", name)
        old[name.replace("transformer.encoder.level_embed", "transformer.level_embed")] = value
    return old


@pytest.mark.parametrize("name", ["dino_tiny", "deformable_detr_tiny"])
def test_detr_checkpoint_with_the_old_encoder_names_loads(tmp_path, name):
    model = codetr.create(name, num_classes=3)
    codetr.save(model, tmp_path / "new.ckpt")
    state = torch.load(tmp_path / "new.ckpt", weights_only=True)
    state["model"] = _as_written_before_the_encoder_module(state["model"])
    assert "transformer.level_embed" in state["model"] and "transformer.encoder.0.norm1.weight" in state["model"]
    torch.save(state, tmp_path / "old.ckpt")
    loaded = codetr.load(tmp_path / "old.ckpt")
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
