"""mmdet 2.25.3 ``ChannelMapper`` as Co-DETR configures it (Co-Deformable-DETR, Co-DINO).

    C_i [B, in_i, H_i, W_i] -> k x k conv (no bias) -> GroupNorm -> P_i [B, out, H_i, W_i]  (one per input)
    extra j = 0:  C_last -> 3x3/2 conv (no bias) -> GN -> [B, out, ceil(H/2), ceil(W/2)]
    extra j > 0:  the previous extra -> 3x3/2 conv (no bias) -> GN

No activation (``act_cfg=None``). Parameter names match mmdet's (``convs.i.conv.weight``,
``convs.i.gn.{weight,bias}``, ``extra_convs.j.*``), so the official ``neck.*`` weights load
strictly with the prefix stripped.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class ConvGN(nn.Module):
    """mmcv ``ConvModule`` with ``norm_cfg=GN`` and no activation: conv (bias-free, a norm
    follows) then GroupNorm; attribute names ``conv`` / ``gn`` as mmcv's. Init as
    ``ConvModule.init_weights`` (it runs after the neck's Xavier ``init_cfg``): Kaiming normal,
    fan_out, for the conv; GN weight 1, bias 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.gn(self.conv(x))  # [B, in, H, W] -> [B, out, H / stride, W / stride]


class ChannelMapper(nn.Module):
    """``in_channels`` per input level (high to low resolution) -> ``num_outs`` maps of
    ``out_channels`` (module docstring); ``num_outs`` defaults to one per input."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, kernel_size: int = 3,
                 num_outs: int | None = None, num_groups: int = 32) -> None:
        super().__init__()
        num_outs = len(in_channels) if num_outs is None else num_outs
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be at least the number of inputs ({len(in_channels)})")
        self.convs = nn.ModuleList(ConvGN(c, out_channels, kernel_size, num_groups=num_groups) for c in in_channels)
        self.extra_convs = nn.ModuleList(
            ConvGN(in_channels[-1] if j == 0 else out_channels, out_channels, 3, stride=2, num_groups=num_groups)
            for j in range(num_outs - len(in_channels)))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """feats [B, in_i, H_i, W_i], high to low resolution -> ``num_outs`` maps [B, out, H_l, W_l]."""
        if len(feats) != len(self.convs):
            raise ValueError(f"{len(feats)} feature maps for a ChannelMapper of {len(self.convs)} inputs")
        outs = [conv(x) for conv, x in zip(self.convs, feats)]
        x = feats[-1]
        for conv in self.extra_convs:
            x = conv(x)  # the first from the last input, later ones from the previous extra
            outs.append(x)
        return outs


def channel_mapper_from_mmdet(cfg: dict) -> ChannelMapper:
    """An mmdet ``ChannelMapper`` config dict -> ``ChannelMapper``; refuses what it does not
    build (an activation, a norm other than GN, a custom conv)."""
    norm = cfg.get("norm_cfg") or {}
    if cfg.get("type", "ChannelMapper") != "ChannelMapper" or norm.get("type") != "GN":
        raise ValueError(f"only a GN ChannelMapper is built here, got type {cfg.get('type')} norm {norm}")
    if cfg.get("act_cfg", {"type": "ReLU"}) is not None or cfg.get("conv_cfg") is not None:
        raise ValueError("Co-DETR's ChannelMapper has no activation (act_cfg=None) and plain convs")
    return ChannelMapper(cfg["in_channels"], cfg["out_channels"], cfg.get("kernel_size", 3),
                         cfg.get("num_outs"), norm.get("num_groups", 32))
