"""``BackboneConfig``: the ResNet every model family is built on, one nested config for all."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config_checks import require_at_least
from .dcn import add_deformable_convs
from .resnet import ResNetBackbone

# the flat model_config keys of codetr checkpoints written before BackboneConfig -> its field names
FLAT_BACKBONE_KEYS = {"backbone_depth": "depth", "backbone_norm": "norm", "backbone_frozen_stages": "frozen_stages",
                      "dilation": "dilation", "stem_channels": "stem_channels", "res2_channels": "res2_channels",
                      "width_per_group": "width_per_group", "stride_in_1x1": "stride_in_1x1",
                      "dcn_layers": "dcn_layers", "dcn_interval": "dcn_interval"}


@dataclass(frozen=True)
class BackboneConfig:
    """Every number the ResNet is built from (see ``ResNetBackbone``). Defaults: torchvision's
    ResNet-50 with frozen BatchNorm and a frozen stem + res2, as the official DETRs; the widths
    load torchvision / official weights unchanged.

    ``dcn_layers[s]``: how many of stage s+1's last blocks get a modulated deformable 3x3 conv,
    every ``dcn_interval``-th (YOLACT++ R50: (0, 4, 6, 3), interval 1; see ``add_deformable_convs``).
    """

    depth: int = 50
    norm: str = "frozen_bn"
    frozen_stages: int = 1                # stem + this many stages get no gradient; -1: none
    dilation: bool = False                # C5 dilated instead of strided (DC5)
    stem_channels: int = 64
    res2_channels: int | None = None      # None: 64 (R-18/34) or 256
    width_per_group: int = 64
    stride_in_1x1: bool = False           # True: MSRA R-50 weights (cvpods)
    dcn_layers: tuple[int, ...] = (0, 0, 0, 0)
    dcn_interval: int = 1

    def __post_init__(self) -> None:
        # res2_channels 0 would silently mean "default"
        require_at_least(self, {"stem_channels": 1, "res2_channels": 1, "width_per_group": 1, "dcn_interval": 1})


def build_backbone(config: BackboneConfig, out_stages: Sequence[int]) -> ResNetBackbone:
    """The ResNet of ``config`` returning the maps of ``out_stages`` (2 = C3 .. 4 = C5)."""
    c = config
    backbone = ResNetBackbone(c.depth, c.norm, out_stages, c.frozen_stages, c.dilation, c.stem_channels,
                              c.res2_channels, c.width_per_group, c.stride_in_1x1)
    if any(c.dcn_layers):
        add_deformable_convs(backbone.body, c.dcn_layers, c.dcn_interval)
    return backbone


def nest_flat_backbone(model_config: dict) -> dict:
    """An old flat ``model_config`` dict with its backbone keys moved under ``"backbone"``
    (unchanged when it has none)."""
    flat = {old: new for old, new in FLAT_BACKBONE_KEYS.items() if old in model_config}
    if not flat:
        return model_config
    rest = {k: v for k, v in model_config.items() if k not in flat}
    return {**rest, "backbone": {new: model_config[old] for old, new in flat.items()}}
