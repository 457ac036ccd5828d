"""SSD / YOLACT prior matching and the box coder with variances (0.1, 0.2).

Boxes here are *relative* (divided by the network input's width and height); priors are
relative ``(cx, cy, w, h)``; ground truth is relative xyxy.

Matching (Liu et al. 2016, Sec. 2.2, as YOLACT's ``match``):

1. every prior takes the ground truth it overlaps most;
2. every ground truth is then forced onto its best prior, greedily: repeatedly the
   (truth, prior) pair of highest IoU among the truths and priors not yet forced wins, its
   prior gets that truth with overlap 2 (so it is positive);
3. overlap >= ``pos_threshold``: positive (label + 1); < ``neg_threshold``: background (0);
   in between: neutral (-1);
4. a non-positive prior that a crowd box covers (intersection / prior area) more than
   ``crowd_threshold`` becomes neutral.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..boxes import cxcywh_to_xyxy

VARIANCES = (0.1, 0.2)


def encode_boxes(matched: Tensor, priors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """matched [N, 4] relative xyxy, priors [N, 4] relative cxcywh -> regression targets [N, 4]:
    ((c - c_p) / (v0 * wh_p), log(wh / wh_p) / v1)."""
    centre = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    centre = centre / (variances[0] * priors[:, 2:])
    size = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([centre, size], 1)


def decode_boxes(loc: Tensor, priors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Inverse of ``encode_boxes``: loc [N, 4], priors [N, 4] cxcywh -> relative xyxy [N, 4]."""
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], 1)


def pairwise_overlap(a: Tensor, b: Tensor, over_a: bool = False) -> Tensor:
    """[..., N, 4] x [..., M, 4] xyxy -> [..., N, M] IoU, or intersection / area(a) with
    ``over_a`` (how much of each ``a`` box a crowd box ``b`` covers)."""
    top_left = torch.max(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.min(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))[..., :, None]
    if over_a:
        return inter / area_a
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[..., None, :]
    return inter / (area_a + area_b - inter)


@dataclass
class PriorMatch:
    """Per prior: ``labels`` [P] (-1 neutral, 0 background, c + 1 for class c), ``truth_index``
    [P] (the ground truth each prior is matched to; meaningful where labels > 0), ``loc`` [P, 4]
    encoded regression targets."""

    labels: Tensor
    truth_index: Tensor
    loc: Tensor


def match_priors(truths: Tensor, labels: Tensor, priors: Tensor, crowd_boxes: Tensor | None = None,
                 pos_threshold: float = 0.5, neg_threshold: float = 0.4,
                 crowd_threshold: float = 0.7) -> PriorMatch:
    """truths [G, 4] relative xyxy (G >= 1), labels [G] 0-based, priors [P, 4] relative cxcywh,
    crowd_boxes [K, 4] relative xyxy or None. See the module docstring for the rules."""
    prior_boxes = cxcywh_to_xyxy(priors)
    overlaps = pairwise_overlap(truths, prior_boxes)                  # [G, P]
    best_overlap, best_truth = overlaps.max(0)                        # [P]
    forced = overlaps.clone()
    for _ in range(truths.shape[0]):
        best_prior_overlap, best_prior = forced.max(1)                # [G]
        truth = best_prior_overlap.argmax()
        prior = best_prior[truth]
        forced[:, prior] = -1
        forced[truth, :] = -1
        best_overlap[prior] = 2
        best_truth[prior] = truth
    conf = labels[best_truth] + 1
    conf[best_overlap < pos_threshold] = -1
    conf[best_overlap < neg_threshold] = 0
    if crowd_boxes is not None and len(crowd_boxes) and crowd_threshold < 1:
        crowd_cover = pairwise_overlap(prior_boxes, crowd_boxes, over_a=True).max(1).values  # [P]
        conf[(conf <= 0) & (crowd_cover > crowd_threshold)] = -1
    return PriorMatch(conf, best_truth, encode_boxes(truths[best_truth], priors))
