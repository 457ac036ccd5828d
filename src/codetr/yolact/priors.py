"""YOLACT's prior (anchor) boxes, relative ``(cx, cy, w, h)``.

Order: level, then row j, column i, then scale, then aspect ratio (the order of the head's
outputs). With pixel scales a prior of scale s and ratio r has w = s * sqrt(r) / image_size
and h = s / sqrt(r) / image_size; the official configs before YOLACT++ set
``square_anchors`` (h = w, kept "for backward compatibility with a bug"), so their three
ratios give three boxes of different sizes but all square.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def level_priors(height: int, width: int, scales: Sequence[float], aspect_ratios: Sequence[float],
                 image_size: int, square_anchors: bool) -> Tensor:
    """Priors of one feature level of ``height x width`` cells: [height * width * A, 4],
    A = len(scales) * len(aspect_ratios). Computed in float64, returned as float32."""
    shapes = []
    for scale in scales:
        for ratio in aspect_ratios:
            w = scale * math.sqrt(ratio) / image_size
            h = w if square_anchors else scale / math.sqrt(ratio) / image_size
            shapes.append((w, h))
    wh = torch.tensor(shapes, dtype=torch.float64)                         # [A, 2]
    cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    centres = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), -1)      # [H, W, 2] (x, y)
    centres = centres[:, :, None].expand(height, width, len(shapes), 2)
    wh = wh[None, None].expand(height, width, -1, 2)
    return torch.cat([centres, wh], -1).reshape(-1, 4).float()


def make_priors(feature_sizes: Sequence[tuple[int, int]], scales: Sequence[Sequence[float]],
                aspect_ratios: Sequence[float], image_size: int, square_anchors: bool,
                device: torch.device | str = "cpu") -> Tensor:
    """Priors of all levels concatenated: [sum_l H_l * W_l * A, 4]. ``scales[l]``: the pixel
    scales of level l (YOLACT: [[24], [48], [96], [192], [384]] at 550 px)."""
    if len(scales) != len(feature_sizes):
        raise ValueError(f"{len(scales)} scale lists for {len(feature_sizes)} feature levels")
    return torch.cat([level_priors(h, w, s, aspect_ratios, image_size, square_anchors)
                      for (h, w), s in zip(feature_sizes, scales)]).to(device)
