"""torchvision ResNets as multi-stage feature extractors."""
from __future__ import annotations

from typing import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

_NORMS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}
_STAGE_CHANNELS = {18: 64, 34: 64, 50: 256, 101: 256, 152: 256}  # output channels of stage 1


class ResNetBackbone(nn.Module):
    """ResNet-18/34/50/101/152 returning the maps of ``out_stages`` (2 = C3 at stride 8 .. 4 = C5).

    ``norm``: ``"frozen_bn"`` as official configs (they start from ImageNet weights) or ``"bn"``
    (trainable, for training from scratch). ``frozen_stages``: the stem and the first
    ``frozen_stages`` residual stages get no gradient (official DETRs: 1; -1 freezes nothing).
    """

    def __init__(self, depth: int = 50, norm: str = "frozen_bn", out_stages: Sequence[int] = (2, 3, 4),
                 frozen_stages: int = 1, dilation: bool = False) -> None:
        super().__init__()
        if depth not in _STAGE_CHANNELS:
            raise ValueError(f"ResNet depth must be one of {sorted(_STAGE_CHANNELS)}, got {depth}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        body = getattr(torchvision.models, f"resnet{depth}")(
            weights=None, norm_layer=_NORMS[norm], replace_stride_with_dilation=[False, False, dilation])
        del body.fc, body.avgpool
        self.body = body
        self.out_stages = tuple(out_stages)
        base = _STAGE_CHANNELS[depth]
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
