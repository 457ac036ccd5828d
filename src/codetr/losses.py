"""Loss functions shared by the families. Normalisers are arguments, never hidden."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017, Eq. 5): -alpha_t (1 - p_t)^gamma log(p_t).
    ``targets`` is a {0, 1} (or soft) tensor shaped like ``logits``; alpha < 0 disables weighting."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss
