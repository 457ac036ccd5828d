"""Swin Transformer (Liu et al. 2021) as a detection backbone: timm's modules and weights
layout, the official detection forward (Co-DETR's and mmdet's ``SwinTransformerV1``) and the
map from official checkpoints' names.

Why not timm's own block forward: the official block pads the map to whole windows, then rolls
it by half a window; timm's rolls, then pads. When H or W is not a multiple of the window (Co-DINO
at 1024 px: maps of 256, 128, 64, 32 for window 12) the windows hold different tokens and the
outputs differ. ``SwinBackbone`` therefore runs timm's submodules (norms, window attention with
its relative position bias, MLP, patch merging) in the official order.
"""
from __future__ import annotations

import re
from typing import Collection, Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (SwinTransformer, SwinTransformerBlock, get_relative_position_index,
                                          window_partition, window_reverse)
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

PATCH_SIZE = 4


class SwinBackbone(nn.Module):
    """Swin Transformer returning the maps of ``out_stages`` (1 = stride 4 .. 4 = stride 32),
    each through its own LayerNorm (``norms[i]`` after ``layers[i]``), as the official backbone.

    Any input size: the image is padded (bottom / right, zeros) to a multiple of the patch size,
    each block pads its map to whole windows, each patch merging pads to even sizes, so stage s
    of an H x W image is ceil(H / 2^(s+1)) x ceil(W / 2^(s+1)). Windows stay ``window_size``
    and shifted even on maps smaller than one window, as the official.

    Names are timm's (``patch_embed``, ``layers.i.downsample`` merging *into* stage i,
    ``layers.i.blocks.j``); ``swin_from_official`` maps official checkpoints onto them.
    ``frozen_stages``: the patch embedding and the first ``frozen_stages`` stages (each with the
    merging that feeds it) get no gradient and stay in eval mode (no drop path); -1: none. (The
    official ``frozen_stages=k+1`` freezes the same plus the merging after stage k.)
    ``with_cp``: each block is recomputed in the backward pass instead of keeping its activations.
    """

    def __init__(self, embed_dims: int = 192, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (6, 12, 24, 48), window_size: int = 12, drop_path_rate: float = 0.3,
                 out_stages: Sequence[int] = (1, 2, 3, 4), frozen_stages: int = -1, with_cp: bool = False) -> None:
        super().__init__()
        if not out_stages or any(s not in range(1, len(depths) + 1) for s in out_stages):
            raise ValueError(f"Swin out_stages must be stages 1..{len(depths)}, got {list(out_stages)}")
        # strict_img_size=False: no per-size attention masks; always_partition: windows never shrink
        timm_swin = SwinTransformer(patch_size=PATCH_SIZE, embed_dim=embed_dims, depths=tuple(depths),
                                    num_heads=tuple(num_heads), window_size=window_size,
                                    drop_path_rate=drop_path_rate, num_classes=0, strict_img_size=False,
                                    always_partition=True)
        self.patch_embed, self.layers = timm_swin.patch_embed, timm_swin.layers  # its norm and head unused
        widths = [embed_dims * 2 ** i for i in range(len(depths))]
        self.out_stages = tuple(out_stages)
        self.norms = nn.ModuleDict({str(s - 1): nn.LayerNorm(widths[s - 1]) for s in self.out_stages})
        self.out_channels = [widths[s - 1] for s in self.out_stages]
        self.strides = [PATCH_SIZE * 2 ** (s - 1) for s in self.out_stages]
        self.frozen_stages, self.with_cp = frozen_stages, with_cp
        for p in self._frozen().parameters():
            p.requires_grad_(False)

    def _frozen(self) -> nn.ModuleList:
        if self.frozen_stages < 0:
            return nn.ModuleList()
        return nn.ModuleList([self.patch_embed, *self.layers[:self.frozen_stages]])

    def train(self, mode: bool = True) -> "SwinBackbone":
        super().train(mode)
        self._frozen().eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> one map [B, C_s, ceil(H / stride_s), ceil(W / stride_s)] per out stage."""
        h, w = images.shape[-2:]
        x = self.patch_embed(F.pad(images, (0, -w % PATCH_SIZE, 0, -h % PATCH_SIZE)))  # [B, H/4, W/4, C] (NHWC)
        outs = []
        for i, layer in enumerate(self.layers[:max(self.out_stages)]):
            x = layer.downsample(x)  # 2x2 patch merging [B, H', W', C'] -> [B, H'/2, W'/2, 2C'] (stage 1: identity)
            for block in layer.blocks:  # [B, H', W', C'] -> same
                if self._recompute():
                    x = checkpoint(swin_block, block, x, use_reentrant=False)
                else:
                    x = swin_block(block, x)
            if str(i) in self.norms:
                outs.append(self.norms[str(i)](x).permute(0, 3, 1, 2).contiguous())  # -> [B, C', H', W']
        return outs

    def _recompute(self) -> bool:
        return self.with_cp and self.training and torch.is_grad_enabled()


def swin_block(block: SwinTransformerBlock, x: Tensor) -> Tensor:
    """One Swin block of timm's weights on x [B, H, W, C], computed as the official block:
    x + attention(norm1(x)), then + mlp(norm2(x)), each through the block's drop path."""
    x = x + block.drop_path1(shifted_window_attention(block, block.norm1(x)))
    return x + block.drop_path2(block.mlp(block.norm2(x)))


def shifted_window_attention(block: SwinTransformerBlock, x: Tensor) -> Tensor:
    """(S)W-MSA on x [B, H, W, C] -> [B, H, W, C]: zero-pad bottom / right to whole windows, roll
    by minus the shift (shifted blocks), attend within each window (pairs from different regions
    of the roll masked by -100), roll back, crop. Padding comes before the roll, as the official."""
    b, h, w, c = x.shape
    (wh, ww), shift = block.window_size, block.shift_size
    x = F.pad(x, (0, 0, 0, -w % ww, 0, -h % wh))                      # [B, Hp, Wp, C]
    hp, wp = x.shape[1:3]
    if any(shift):
        x = torch.roll(x, (-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(x, (wh, ww)).view(-1, wh * ww, c)       # [B * nW, wh * ww, C]
    mask = block.get_attn_mask(x)                                      # [nW, wh * ww, wh * ww] or None
    windows = block.attn(windows, mask=mask).view(-1, wh, ww, c)
    x = window_reverse(windows, (wh, ww), hp, wp)                      # [B, Hp, Wp, C]
    if any(shift):
        x = torch.roll(x, shift, dims=(1, 2))
    return x[:, :h, :w]


# official backbone name -> SwinBackbone name. The layouts agree tensor for tensor (qkv as
# [q; k; v] rows by head, patch merging channels as [(0,0), (1,0), (0,1), (1,1)] (row, col)
# offsets): only names move. The official merging ends stage i, timm's starts stage i+1.
_BLOCK_PARAM = r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)|attn\.relative_position_bias_table"
OFFICIAL_SWIN_KEYS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"patch_embed\.(proj|norm)\.(weight|bias)"), r"patch_embed.\1.\2"),
    (re.compile(rf"layers\.(\d+)\.blocks\.(\d+)\.({_BLOCK_PARAM})"), r"layers.\1.blocks.\2.\3"),
    (re.compile(r"norm(\d+)\.(weight|bias)"), r"norms.\1.\2"),
]
_MERGING = re.compile(r"layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)")
_POSITION_INDEX = re.compile(r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index")


def swin_from_official(official: dict[str, Tensor], expected: Collection[str]) -> dict[str, Tensor]:
    """Official Swin backbone weights (names without the ``backbone.`` prefix) -> the names of
    ``SwinBackbone``, whose ``state_dict()`` keys are ``expected``. The official
    ``relative_position_index`` buffers are dropped once checked equal to the index timm
    recomputes. Raises ``ValueError`` listing every official name no rule maps, every expected
    name left without a weight and every mapped name not expected, and every wrong index."""
    mapped, unmapped, bad_index = {}, [], []
    for name, value in official.items():
        if _POSITION_INDEX.fullmatch(name):
            side = int(round(value.shape[0] ** 0.5))
            if not torch.equal(value.cpu(), get_relative_position_index(side, side)):
                bad_index.append(name)
            continue
        new = _official_to_timm(name)
        if new is None:
            unmapped.append(name)
        else:
            mapped[new] = value
    found = {"official names no rule maps": unmapped,
             "weights missing": sorted(set(expected) - set(mapped)),
             "mapped names not in the model": sorted(set(mapped) - set(expected)),
             "relative_position_index not the standard one": bad_index}
    problems = [f"{what}: {names}" for what, names in found.items() if names]
    if problems:
        raise ValueError("official Swin checkpoint does not fit: " + "; ".join(problems))
    return mapped


def _official_to_timm(name: str) -> str | None:
    merging = _MERGING.fullmatch(name)
    if merging:
        return f"layers.{int(merging.group(1)) + 1}.downsample.{merging.group(2)}"
    for pattern, new in OFFICIAL_SWIN_KEYS:
        if pattern.fullmatch(name):
            return pattern.sub(new, name)
    return None
