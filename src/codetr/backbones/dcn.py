"""Modulated deformable convolution (DCNv2, Zhu et al. 2019) and the YOLACT++ way of putting
it into a ResNet: the 3x3 conv of the last blocks of chosen stages, every ``interval``-th."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv2d(nn.Module):
    """3x3 (or k x k) conv whose sampling points move by learned offsets and are scaled by
    learned masks. ``conv_offset_mask`` predicts, per output pixel, 2 offsets (dy, dx) per
    kernel point then one mask logit per point: channels [offsets (2 k^2) | masks (k^2)], the
    layout of the official DCNv2 module (its weights load unchanged). Offsets and masks start
    at zero, i.e. as a plain conv with masks 0.5."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, deformable_groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        points = deformable_groups * kernel_size * kernel_size
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * points, kernel_size, stride, padding, dilation)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_offset_mask(x)                       # [B, 3 * G * k * k, H', W']
        points = out.shape[1] // 3
        offset, mask = out[:, :2 * points], out[:, 2 * points:].sigmoid()
        return deform_conv2d(x, offset, self.weight, self.bias, (self.stride, self.stride),
                             (self.padding, self.padding), (self.dilation, self.dilation), mask)


def uses_dcn(block: int, num_blocks: int, dcn_blocks: int, interval: int) -> bool:
    """The official rule: the last ``dcn_blocks`` blocks of a stage, every ``interval``-th
    (the first block only when the whole stage is deformable)."""
    if block == 0:
        return dcn_blocks >= num_blocks
    return block + dcn_blocks >= num_blocks and block % interval == 0


def add_deformable_convs(body: nn.Module, dcn_layers: Sequence[int], interval: int = 1) -> None:
    """Swap, in place, the 3x3 conv (``conv2``) of the chosen bottleneck / basic blocks of a
    torchvision ResNet ``body`` for a ``ModulatedDeformConv2d`` with a zero bias.
    ``dcn_layers[s]``: how many of stage s+1's last blocks (``body.layer{s+1}``) to make
    deformable, e.g. YOLACT++ R50: (0, 4, 6, 3), interval 1; R101: (0, 4, 23, 3), interval 3."""
    if len(dcn_layers) != 4:
        raise ValueError(f"dcn_layers needs one count per ResNet stage (4), got {list(dcn_layers)}")
    for stage, count in enumerate(dcn_layers, start=1):
        blocks = getattr(body, f"layer{stage}")
        for index, block in enumerate(blocks):
            if not uses_dcn(index, len(blocks), count, interval):
                continue
            conv = block.conv2
            block.conv2 = ModulatedDeformConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                                                conv.stride[0], conv.padding[0], conv.dilation[0])
