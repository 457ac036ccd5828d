"""Prior (anchor) matching of SSD and YOLACT (Liu et al. 2016, Sec. 2.2 "Matching strategy",
with YOLACT's neutral band and crowd boxes), as pure functions of an IoU matrix.

Boxes are *relative* (divided by the network input's width and height); priors are relative
``(cx, cy, w, h)``; ground truth is relative xyxy. The rule, for G truths and P priors:

1. forced matches: every truth gets a prior of its own, chosen greedily: the (truth, prior)
   pair of highest IoU is matched, both leave the table, repeat. This holds even below the
   thresholds, and when two truths share a best prior the weaker one takes its next best.
   Ties go to the lower truth index, then the lower prior index; if G > P, the truths beyond
   the P-th forced pair get no forced prior;
2. every other prior takes the truth it overlaps most (ties: lower truth index) and is
   positive if that IoU >= ``pos_threshold``, background if < ``neg_threshold``, neutral
   (ignored by the loss) in between;
3. a prior that is not positive becomes neutral when a crowd box covers more than
   ``crowd_threshold`` of it (intersection / prior area).

The regression targets are ``coders.ssd_encode`` of each prior's truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..boxes import box_coverage, box_iou, cxcywh_to_xyxy
from ..coders import ssd_encode

POSITIVE, NEUTRAL, BACKGROUND = 1, -1, 0


@dataclass
class PriorMatch:
    """Per prior: ``labels`` [P] (-1 neutral, 0 background, c + 1 for class c), ``truth_index``
    [P] (the ground truth each prior is matched to; meaningful where labels > 0), ``loc`` [P, 4]
    encoded regression targets."""

    labels: Tensor
    truth_index: Tensor
    loc: Tensor


def forced_pairs(iou: Tensor) -> tuple[Tensor, Tensor]:
    """Rule 1 as greedy bipartite matching on pairs sorted by IoU. iou [G, P] -> (truth
    indices [F], prior indices [F]), F = min(G, P), in the order they were matched.

    Only each truth's k = F best priors (ties: all of them) can be its forced prior, as at most
    F - 1 priors are taken before it, so the sort runs over those candidates only."""
    num_truths, num_priors = iou.shape
    k = min(num_truths, num_priors)
    if k == 0:
        empty = torch.zeros(0, dtype=torch.long, device=iou.device)
        return empty, empty
    kth_best = iou.topk(k, dim=1).values[:, -1:]                          # [G, 1]
    truth, prior = (iou >= kth_best).nonzero(as_tuple=True)               # [Q] each, by truth then prior
    # stable: equal IoUs stay in (truth, prior) order, the tie rule
    order = iou[truth, prior].sort(descending=True, stable=True).indices
    used_truths, used_priors, pairs = set(), set(), []
    for t, p in zip(truth[order].tolist(), prior[order].tolist()):
        if t not in used_truths and p not in used_priors:
            used_truths.add(t)
            used_priors.add(p)
            pairs.append((t, p))
            if len(pairs) == k:
                break
    truths, priors = torch.tensor(pairs, dtype=torch.long, device=iou.device).unbind(1)
    return truths, priors


def prior_states(iou: Tensor, pos_threshold: float, neg_threshold: float) -> tuple[Tensor, Tensor]:
    """Rules 1-2. iou [G, P] (G >= 1) -> (truth index [P], state [P]: POSITIVE, NEUTRAL or
    BACKGROUND)."""
    best_iou, truth_index = iou.max(dim=0)                                # [P] each
    forced_truth, forced_prior = forced_pairs(iou)
    truth_index[forced_prior] = forced_truth
    forced = torch.zeros_like(best_iou, dtype=torch.bool)
    forced[forced_prior] = True
    state = torch.where(best_iou >= pos_threshold, POSITIVE, NEUTRAL)
    state = torch.where(best_iou < neg_threshold, BACKGROUND, state)      # neg wins over pos
    return truth_index, torch.where(forced, POSITIVE, state)


def match_priors(truths: Tensor, labels: Tensor, priors: Tensor, crowd_boxes: Tensor | None = None,
                 pos_threshold: float = 0.5, neg_threshold: float = 0.4,
                 crowd_threshold: float = 0.7) -> PriorMatch:
    """truths [G, 4] relative xyxy (G >= 1), labels [G] 0-based, priors [P, 4] relative cxcywh,
    crowd_boxes [K, 4] relative xyxy or None. See the module docstring for the rules."""
    prior_boxes = cxcywh_to_xyxy(priors)                                  # [P, 4]
    truth_index, state = prior_states(box_iou(truths, prior_boxes), pos_threshold, neg_threshold)
    if crowd_boxes is not None and len(crowd_boxes) and crowd_threshold < 1:
        crowd_cover = box_coverage(prior_boxes, crowd_boxes).amax(dim=1)  # [P]
        state = torch.where((state != POSITIVE) & (crowd_cover > crowd_threshold), NEUTRAL, state)
    conf = torch.where(state == POSITIVE, labels[truth_index] + 1, state.to(labels.dtype))
    return PriorMatch(conf, truth_index, ssd_encode(truths[truth_index], priors))
