"""Loss functions shared by the families, element-wise: callers sum and normalise (mmdet's
``avg_factor`` normalisation: ``reduce_by_avg_factor``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

F32_EPS = torch.finfo(torch.float32).eps  # mmdet weight_reduce_loss's eps


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017, Eq. 5): -alpha_t (1 - p_t)^gamma log(p_t), with
    p = sigmoid(logits). ``targets`` is a {0, 1} (or soft) tensor shaped like ``logits``; alpha < 0
    disables the weighting."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return focal_modulation(logits.sigmoid(), targets, ce, alpha, gamma)


def focal_loss_on_probs(probs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The focal loss on probabilities rather than logits (DeFCN's score is a product of two
    sigmoids, sigmoid(cls) * sigmoid(filter)). Computed in float32 (binary cross-entropy on
    probabilities is not autocast-safe); log terms clamp at -100 as torch's BCE."""
    with torch.autocast(probs.device.type, enabled=False):
        probs, targets = probs.float(), targets.float()
        ce = F.binary_cross_entropy(probs, targets, reduction="none")
        return focal_modulation(probs, targets, ce, alpha, gamma)


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """Element-wise quality focal loss (Li et al. 2020, GFL, Eq. 5): BCE(sigmoid(logits), y) *
    |y - sigmoid(logits)|^beta, where ``targets`` y [..., K] is the IoU quality at each positive's
    class and 0 elsewhere (at y = 0 it is the negatives' BCE * p^beta; mmdet ``quality_focal_loss``
    treats a positive whose IoU is 0 the same way)."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return ce * (targets - logits.sigmoid()).abs().pow(beta)


def focal_modulation(prob: Tensor, targets: Tensor, ce: Tensor, alpha: float, gamma: float) -> Tensor:
    """The cross-entropy ``ce`` of probabilities ``prob`` times (1 - p_t)^gamma and alpha_t."""
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def reduce_by_avg_factor(loss: Tensor, avg_factor: float | Tensor, eps: float = F32_EPS,
                         summed: bool = False) -> Tensor:
    """mmdet ``weight_reduce_loss(reduction='mean', avg_factor=...)``: ``sum(loss) / (avg_factor
    + eps)``, eps the float32 machine epsilon (weights already applied). ``summed``: ``loss``
    already holds sums (e.g. per-level sums [L]), each divided alone. Returns a scalar, or a
    tensor shaped like ``loss`` when ``summed``."""
    total = loss if summed else loss.sum()
    return total / (avg_factor + eps)
