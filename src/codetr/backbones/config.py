"""``BackboneConfig``: the backbone every model family is built on (a ResNet, or a Swin
Transformer with ``kind="swin"``), one nested config for all."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

from ..config_checks import require_at_least
from .dcn import add_deformable_convs
from .resnet import ResNetBackbone

if TYPE_CHECKING:  # timm is imported when a Swin is built, not with codetr
    from .swin import SwinBackbone

# the flat model_config keys of codetr checkpoints written before BackboneConfig -> its field names
FLAT_BACKBONE_KEYS = {"backbone_depth": "depth", "backbone_norm": "norm", "backbone_frozen_stages": "frozen_stages",
                      "dilation": "dilation", "stem_channels": "stem_channels", "res2_channels": "res2_channels",
                      "width_per_group": "width_per_group", "stride_in_1x1": "stride_in_1x1",
                      "dcn_layers": "dcn_layers", "dcn_interval": "dcn_interval"}


@dataclass(frozen=True)
class SwinConfig:
    """The numbers of a Swin Transformer (see ``SwinBackbone``); patch size 4, MLP ratio 4 and
    no absolute position embedding, as every Co-DETR Swin. Defaults: Co-DINO Swin-L
    (``co_dino_5scale_swin_large_1x_coco.py``, ImageNet-22k 384 weights); Swin-T: 96,
    (2, 2, 6, 2), (3, 6, 12, 24), window 7, drop path 0.2. ``with_cp``: recompute each block in
    the backward pass (activation checkpointing: less memory, ~1/3 more compute)."""

    embed_dims: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    drop_path_rate: float = 0.3
    with_cp: bool = False

    def __post_init__(self) -> None:
        require_at_least(self, {"embed_dims": 1, "window_size": 1})
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(f"SwinConfig: depths and num_heads need one entry per stage (4), got "
                             f"{list(self.depths)} and {list(self.num_heads)}")
        for i, heads in enumerate(self.num_heads):
            if heads < 1 or (self.embed_dims * 2 ** i) % heads:
                raise ValueError(f"SwinConfig: stage {i + 1} is {self.embed_dims * 2 ** i} wide, not divisible "
                                 f"into {heads} heads")


@dataclass(frozen=True)
class BackboneConfig:
    """Every number the ResNet is built from (see ``ResNetBackbone``). Defaults: torchvision's
    ResNet-50 with frozen BatchNorm and a frozen stem + res2, as the official DETRs; the widths
    load torchvision / official weights unchanged.

    ``dcn_layers[s]``: how many of stage s+1's last blocks get a modulated deformable 3x3 conv,
    every ``dcn_interval``-th (YOLACT++ R50: (0, 4, 6, 3), interval 1; see ``add_deformable_convs``).

    ``kind="swin"``: a Swin Transformer of ``swin``'s numbers instead; of the ResNet fields only
    ``frozen_stages`` applies (the patch embedding + that many stages; Co-DINO Swin-L: -1).

    ``pretrained``: the weights a training run starts the backbone from (``load_pretrained_backbone``
    loads them when ``codetr train`` builds the model; ``codetr.create`` never does): a torchvision
    ResNet weights name (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``; ``"torchvision"``: V1),
    ``"timm:<pretrained model name>"`` (Swin, or a timm ResNet with torchvision's names), or a
    .pth / .pt / .safetensors file (torchvision names for a ResNet, timm's for a Swin). None: random.
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
    kind: Literal["resnet", "swin"] = "resnet"
    swin: SwinConfig = field(default_factory=SwinConfig)
    pretrained: str | None = None

    def __post_init__(self) -> None:
        # res2_channels 0 would silently mean "default"
        require_at_least(self, {"stem_channels": 1, "res2_channels": 1, "width_per_group": 1, "dcn_interval": 1})
        if self.pretrained is not None and not self.pretrained.strip():
            raise ValueError("BackboneConfig.pretrained must name weights (or be null for random), got ''")
        if self.kind == "swin" and (self.dilation or any(self.dcn_layers)):
            raise ValueError("BackboneConfig: dilation and dcn_layers are ResNet options, not Swin ones")


def build_backbone(config: BackboneConfig, out_stages: Sequence[int]) -> ResNetBackbone | SwinBackbone:
    """The backbone of ``config`` returning the maps of ``out_stages`` (1 = C2 at stride 4 ..
    4 = C5 at stride 32)."""
    c = config
    if c.kind == "swin":
        from .swin import SwinBackbone

        s = c.swin
        return SwinBackbone(s.embed_dims, s.depths, s.num_heads, s.window_size, s.drop_path_rate, out_stages,
                            c.frozen_stages, s.with_cp)
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
