"""Feature Pyramid Network (Lin et al. 2017) with the extra levels of RetinaNet / FCOS / mmdet.

    C3, C4, C5 -> 1x1 lateral convs -> top-down nearest upsampling + sum -> 3x3 output convs
               -> P3, P4, P5;  then ``num_extra`` coarser levels, by ``extra_from``:
    "p5"      (mmdet ``add_extra_convs='on_output'``):  P6 = 3x3/2 conv(P5)
    "c5"      (mmdet ``'on_input'``):                    P6 = 3x3/2 conv(C5)
    "lateral" (mmdet ``'on_lateral'``):                  P6 = 3x3/2 conv(top-down sum at C5)
    "pool"    (mmdet ``add_extra_convs=False``):         P6 = max_pool(P5, kernel 1, stride 2), no weights
    later levels: P7 = 3x3/2 conv(relu(P6)) (``relu_before_extra``, DeFCN / FCOS / RetinaNet) or
    conv(P6) (mmdet's default ``relu_before_extra_convs=False``); "pool" keeps pooling.

mmdet's ``FPN`` (2.25.3) with ``start_level=0`` and no norm is this module: ``fpn_from_mmdet``
reads its config, ``mmdet_fpn_key_map`` renames its weights (``lateral_convs.i.conv`` ->
``lateral.i``, ``fpn_convs.i.conv`` -> ``output.i`` or ``extra.(i - len(in_channels))``).
A later ``start_level`` is the caller's slice of the backbone maps.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

EXTRA_SOURCES = ("p5", "c5", "lateral", "pool")
_MMDET_EXTRA = {"on_output": "p5", "on_input": "c5", "on_lateral": "lateral", True: "c5", False: "pool"}


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's XavierFill: uniform with a = sqrt(3 / fan_in), zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """``in_channels`` of C3..C5 (high to low resolution) -> ``len(in_channels) + num_extra``
    maps of ``out_channels``; ``extra_from`` and ``relu_before_extra`` as the module docstring."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_extra: int = 2,
                 extra_from: str = "p5", relu_before_extra: bool = True) -> None:
        super().__init__()
        if extra_from not in EXTRA_SOURCES:
            raise ValueError(f"extra_from must be one of {EXTRA_SOURCES}, got {extra_from!r}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        first_in = in_channels[-1] if extra_from == "c5" else out_channels
        n_convs = 0 if extra_from == "pool" else num_extra
        self.extra = nn.ModuleList(nn.Conv2d(first_in if i == 0 else out_channels, out_channels, 3, stride=2,
                                             padding=1) for i in range(n_convs))
        self.extra_from, self.num_extra, self.relu_before_extra = extra_from, num_extra, relu_before_extra
        for conv in [*self.lateral, *self.output, *self.extra]:
            c2_xavier_fill(conv)

    def top_down(self, feats: list[Tensor]) -> list[Tensor]:
        """feats [B, C_l, H_l, W_l] -> the lateral sums [B, out, H_l, W_l] before the output
        convs: lateral(C_l) + nearest-upsampled sum of the level above, coarsest first."""
        sums = [self.lateral[-1](feats[-1])]
        for feat, lateral in zip(feats[-2::-1], self.lateral[-2::-1]):
            sums.insert(0, lateral(feat) + F.interpolate(sums[0], size=feat.shape[-2:], mode="nearest"))
        return sums

    def extra_levels(self, feats: list[Tensor], sums: list[Tensor], outs: list[Tensor]) -> list[Tensor]:
        """The ``num_extra`` coarser maps (module docstring), each [B, out, ceil(H/2), ceil(W/2)]."""
        if self.extra_from == "pool":
            x, extra = outs[-1], []
            for _ in range(self.num_extra):
                x = F.max_pool2d(x, 1, stride=2)
                extra.append(x)
            return extra
        x = {"p5": outs[-1], "c5": feats[-1], "lateral": sums[-1]}[self.extra_from]
        extra = []
        for i, conv in enumerate(self.extra):
            x = conv(F.relu(x) if i > 0 and self.relu_before_extra else x)
            extra.append(x)
        return extra

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats: [B, C_l, H_l, W_l] high to low resolution -> P maps, high to low resolution."""
        if len(feats) != len(self.lateral):
            raise ValueError(f"{len(feats)} feature maps for an FPN of {len(self.lateral)} inputs")
        sums = self.top_down(feats)
        outs = [output(s) for output, s in zip(self.output, sums)]
        return outs + self.extra_levels(feats, sums, outs)


def fpn_from_mmdet(cfg: dict) -> FPN:
    """An mmdet ``FPN`` config dict (``in_channels``, ``out_channels``, ``num_outs``,
    ``add_extra_convs``, ``relu_before_extra_convs``) -> ``FPN``; refuses what it does not build."""
    unsupported = {k: cfg[k] for k in ("start_level", "end_level", "norm_cfg", "act_cfg", "no_norm_on_lateral",
                                       "upsample_cfg") if cfg.get(k) not in (None, 0, -1, False)}
    if unsupported or cfg.get("type", "FPN") != "FPN":
        raise ValueError(f"only mmdet's plain FPN from start_level 0 is built here; got {unsupported or cfg['type']}")
    extra = cfg.get("add_extra_convs", False)
    if extra not in _MMDET_EXTRA:
        raise ValueError(f"add_extra_convs must be one of {list(_MMDET_EXTRA)}, got {extra!r}")
    in_channels = list(cfg["in_channels"])
    return FPN(in_channels, cfg["out_channels"], cfg["num_outs"] - len(in_channels), _MMDET_EXTRA[extra],
               bool(cfg.get("relu_before_extra_convs", False)))


def mmdet_fpn_key_map(num_ins: int, num_extra_convs: int) -> dict[str, str]:
    """mmdet ``FPN`` parameter names (no prefix) -> ``FPN``'s."""
    out = {}
    for i in range(num_ins + num_extra_convs):
        ours = f"output.{i}" if i < num_ins else f"extra.{i - num_ins}"
        for p in ("weight", "bias"):
            out[f"fpn_convs.{i}.conv.{p}"] = f"{ours}.{p}"
            if i < num_ins:
                out[f"lateral_convs.{i}.conv.{p}"] = f"lateral.{i}.{p}"
    return out
