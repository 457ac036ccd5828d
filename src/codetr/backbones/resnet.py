"""torchvision ResNets as multi-stage feature extractors."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import misc


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm (the same buffers and checkpoint keys) applied by the fused
    inference kernel of ``F.batch_norm``: one pass over the map instead of a multiply and an add,
    and the map's dtype kept (a bfloat16 map under autocast stays bfloat16, where torchvision's
    float32 scale promotes it to float32 and the next convolution casts it back)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


_NORMS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": _group_norm}
_STAGE_CHANNELS = {18: 64, 34: 64, 50: 256, 101: 256, 152: 256}  # output channels of stage 1


class ResNetBackbone(nn.Module):
    """ResNet-18/34/50/101/152 returning the maps of ``out_stages`` (2 = C3 at stride 8 .. 4 = C5).

    ``norm``: ``"frozen_bn"`` as official configs (they start from ImageNet weights) or ``"bn"``
    (trainable, for training from scratch) or ``"gn"`` (GroupNorm of 32 groups: trainable and
    independent of the batch size). ``frozen_stages``: the stem and the first
    ``frozen_stages`` residual stages get no gradient (official DETRs: 1; -1 freezes nothing).

    Widths as cvpods' ``MODEL.RESNETS``: ``stem_channels`` (STEM_OUT_CHANNELS), ``res2_channels``
    (RES2_OUT_CHANNELS; None = 64 for ResNet-18/34, 256 otherwise; each later stage doubles it)
    and ``width_per_group`` (bottleneck width of res2, doubling per stage). Module names stay
    torchvision's, so standard weights load unchanged. ``stride_in_1x1``: a downsampling
    bottleneck strides in its first 1x1 conv (MSRA / cvpods R-50) instead of the 3x3 (torchvision).
    """

    def __init__(self, depth: int = 50, norm: str = "frozen_bn", out_stages: Sequence[int] = (2, 3, 4),
                 frozen_stages: int = 1, dilation: bool = False, stem_channels: int = 64,
                 res2_channels: int | None = None, width_per_group: int = 64,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        if depth not in _STAGE_CHANNELS:
            raise ValueError(f"ResNet depth must be one of {sorted(_STAGE_CHANNELS)}, got {depth}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        base = res2_channels or _STAGE_CHANNELS[depth]
        if (stem_channels, base, width_per_group) == (64, _STAGE_CHANNELS[depth], 64):
            body = getattr(torchvision.models, f"resnet{depth}")(
                weights=None, norm_layer=_NORMS[norm], replace_stride_with_dilation=[False, False, dilation])
            del body.fc, body.avgpool
        else:
            if dilation:
                raise ValueError("dilation is only supported with the standard ResNet widths")
            body = _resnet_body(depth, _NORMS[norm], stem_channels, base, width_per_group)
        if stride_in_1x1:
            _move_stride_to_1x1(body)
        self.body = body
        self.out_stages = tuple(out_stages)
        self.out_channels = [base * 2 ** (s - 1) for s in self.out_stages]
        self.strides = [4 * 2 ** (s - 1) if not (dilation and s == 4) else 16 for s in self.out_stages]
        frozen = [body.conv1, body.bn1] + [getattr(body, f"layer{i}") for i in range(1, frozen_stages + 1)]
        for module in frozen if frozen_stages >= 0 else []:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        outs = []
        for stage in range(1, 5):
            x = getattr(b, f"layer{stage}")(x)
            if stage in self.out_stages:
                outs.append(x)
            if stage >= max(self.out_stages):
                break
        return outs


_BLOCKS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
           101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


def _resnet_body(depth: int, norm_layer: Callable[[int], nn.Module], stem_channels: int, res2_channels: int,
                 width_per_group: int) -> nn.Module:
    """A ResNet with torchvision's module names (conv1, bn1, layer1..4, downsample) and cvpods'
    width options: stage i outputs ``res2_channels * 2**i`` channels through bottlenecks
    ``width_per_group * 2**i`` wide (BasicBlocks have no bottleneck)."""
    block, counts = _BLOCKS[depth]
    body = nn.Module()
    body.conv1 = nn.Conv2d(3, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = norm_layer(stem_channels)
    body.relu = nn.ReLU(inplace=True)
    body.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = stem_channels
    for i, count in enumerate(counts):
        out, stride = res2_channels * 2 ** i, 1 if i == 0 else 2
        planes = out // block.expansion
        width = width_per_group * 2 ** i
        base_width = width * 64 // planes  # torchvision: bottleneck width = planes * base_width / 64
        if block is Bottleneck and planes * base_width // 64 != width:
            raise ValueError(f"ResNet widths: res2_channels={res2_channels} cannot give bottlenecks "
                             f"{width_per_group} wide")
        blocks = []
        for j in range(count):
            downsample = None
            if j == 0 and (stride != 1 or inplanes != out):
                downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm_layer(out))
            kwargs = {"base_width": base_width} if block is Bottleneck else {}
            blocks.append(block(inplanes, planes, stride if j == 0 else 1, downsample, norm_layer=norm_layer, **kwargs))
            inplanes = out
        setattr(body, f"layer{i + 1}", nn.Sequential(*blocks))
    for m in body.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return body


def _move_stride_to_1x1(body: nn.Module) -> None:
    """Downsampling bottlenecks stride in conv1 (1x1) instead of conv2 (3x3), as MSRA R-50."""
    for m in body.modules():
        if isinstance(m, Bottleneck) and m.conv2.stride != (1, 1):
            m.conv1.stride, m.conv2.stride = m.conv2.stride, (1, 1)
