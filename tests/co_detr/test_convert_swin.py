"""``load_official('co_detr', ...)`` on a Swin Co-DINO (the official ``SwinTransformerV1``
backbone): a small Swin in the Co-DINO fixture's config, its official-layout weights made from
a codetr model by the inverse renaming below, converted back strictly and unchanged."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from codetr.co_detr import CoDETR
from codetr.convert import load_official
from codetr.convert.co_detr import config_from_mmdet
from tests.conftest import golden

NAME = "co_dino_5scale_r50w16"
SWIN = {"type": "SwinTransformerV1", "embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
        "window_size": 4, "ape": False, "drop_path_rate": 0.1, "patch_norm": True, "out_indices": (0, 1, 2, 3),
        "use_checkpoint": False}


def to_official(name: str) -> str:
    """codetr Swin name -> official: timm's merging that starts stage i ends official stage i-1;
    ``norms.i`` -> ``norm{i}``; the rest is the same."""
    merging = re.fullmatch(r"layers\.(\d+)\.downsample\.(.*)", name)
    if merging:
        return f"layers.{int(merging.group(1)) - 1}.downsample.{merging.group(2)}"
    return re.sub(r"^norms\.(\d+)\.", r"norm\1.", name)


def official_swin_state(model: CoDETR) -> dict[str, torch.Tensor]:
    """The model's backbone + neck weights in the official layout, with the official
    ``relative_position_index`` buffers (which timm recomputes instead of saving)."""
    from timm.models.swin_transformer import get_relative_position_index

    state = {f"backbone.{to_official(k)}": v for k, v in model.backbone.state_dict().items()}
    window = SWIN["window_size"]
    for k in [k for k in state if k.endswith("attn.relative_position_bias_table")]:
        state[k.replace("relative_position_bias_table", "relative_position_index")] = \
            get_relative_position_index(window, window)
    state.update({f"neck.{k}": v for k, v in model.neck.state_dict().items()})
    return state


def test_swin_co_dino_converts_strictly():
    config = copy.deepcopy(golden(f"co_detr/{NAME}_inputs.pt")["common"]["config"])
    config["model"]["backbone"] = SWIN
    config["model"]["neck"]["in_channels"] = [16, 32, 64, 128]
    torch.manual_seed(0)
    model = CoDETR(config_from_mmdet(config["model"]))
    assert model.config.backbone.kind == "swin" and model.backbone.out_channels == [16, 32, 64, 128]
    ckpt = golden(f"co_detr/{NAME}_checkpoint.pt")
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(("backbone.", "neck."))}
    state.update(official_swin_state(model))
    converted = load_official("co_detr", {"meta": ckpt["meta"], "state_dict": state}, config)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(converted.backbone.state_dict()[key], value), key
    converted.eval()
    with torch.no_grad():
        out = converted(torch.randn(1, 3, 64, 96), torch.tensor([[64, 96]]))
    assert out["all_cls_scores"].shape[:2] == (2, 1)
    state.pop("backbone.layers.2.blocks.1.attn.qkv.weight")  # strict: a missing Swin weight is named
    with pytest.raises(ValueError, match="layers.2.blocks.1.attn.qkv.weight"):
        load_official("co_detr", {"meta": ckpt["meta"], "state_dict": state}, config)
