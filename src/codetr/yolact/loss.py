"""YOLACT's training loss (the official ``MultiBoxLoss`` with the lincomb mask branch).

Inputs are the train-mode outputs (``loc``, ``conf`` logits, ``mask`` coefficients, ``priors``,
``proto``, ``segm``) and per image: relative xyxy boxes, 0-based labels, masks at the network
input resolution, and crowd boxes. With N the number of positive priors in the batch (averaged
over ranks, ``codetr.distributed.mean_count_over_ranks``; one process: the official N):

* loss_box  = sum smooth-L1(loc, encoded target) over positives / N
* loss_conf = sum CE over positives and OHEM negatives (3 per positive) / N
* loss_mask = sum over positives of the BCE of the box-cropped assembled mask with the GT mask
  (both at prototype resolution), divided by the GT box area in prototype pixels / N; the GT
  mask is binarised as official, or (``soft_mask_targets``) each pixel's covered fraction
* loss_segm = sum BCE of the 1x1 semantic logits vs the union of each class's GT masks at P3
  resolution / (H * W) / batch size

The terms are unweighted; ``weight_dict`` gives the official alphas (bbox 1.5, conf 1, mask
6.125, semantic 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed as du
from ..assign.prior_match import PriorMatch, match_priors
from ..boxes import xyxy_to_cxcywh
from .masks import assemble_masks, crop_masks


@dataclass
class LossTargets:
    """Ground truth of one image in the network input frame: ``boxes`` [G, 4] relative xyxy,
    ``labels`` [G] 0-based, ``masks`` [G, H, W] float {0, 1}, ``crowd_boxes`` [K, 4] relative."""

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    crowd_boxes: Tensor | None = None


@dataclass
class PriorAssignment:
    """The training targets of a batch: per image its ``PriorMatch`` (None: no objects, all
    background); ``labels`` [B, P] (-1 neutral, 0 background, c + 1 class c) and ``loc`` [B, P, 4]
    encoded boxes stacked; ``negatives`` [B, P] the background priors OHEM chose."""

    matches: list[PriorMatch | None]
    labels: Tensor
    loc: Tensor
    negatives: Tensor


class YolactLoss:
    def __init__(self, pos_threshold: float = 0.5, neg_threshold: float = 0.4, crowd_threshold: float = 0.7,
                 negpos_ratio: int = 3, bbox_alpha: float = 1.5, conf_alpha: float = 1.0,
                 mask_alpha: float = 6.125, semantic_alpha: float = 1.0, masks_to_train: int = 100,
                 soft_mask_targets: bool = False) -> None:
        self.pos_threshold, self.neg_threshold, self.crowd_threshold = pos_threshold, neg_threshold, crowd_threshold
        self.negpos_ratio, self.masks_to_train = negpos_ratio, masks_to_train
        self.weight_dict = {"loss_box": bbox_alpha, "loss_conf": conf_alpha, "loss_mask": mask_alpha,
                            "loss_segm": semantic_alpha}
        self.soft_mask_targets = soft_mask_targets

    def match(self, targets: list[LossTargets], priors: Tensor) -> list[PriorMatch | None]:
        """One ``PriorMatch`` per image (None for an image without objects: all background)."""
        return [match_priors(t.boxes, t.labels, priors, t.crowd_boxes, self.pos_threshold,
                             self.neg_threshold, self.crowd_threshold) if len(t.boxes) else None
                for t in targets]

    def __call__(self, outputs: dict[str, Tensor], targets: list[LossTargets]) -> dict[str, Tensor]:
        """The unweighted ``loss_box``, ``loss_conf``, ``loss_mask`` and ``loss_segm``."""
        loc, conf = outputs["loc"], outputs["conf"]
        assignment = self.assign(outputs, targets)
        labels, positive = assignment.labels, assignment.labels > 0
        num_pos = du.mean_count_over_ranks(positive.sum())
        chosen = positive | assignment.negatives
        return {"loss_box": F.smooth_l1_loss(loc[positive], assignment.loc[positive], reduction="sum") / num_pos,
                "loss_conf": F.cross_entropy(conf[chosen], labels[chosen], reduction="sum") / num_pos,
                "loss_mask": self.mask_loss(outputs["proto"], outputs["mask"], assignment.matches, targets) / num_pos,
                "loss_segm": self.semantic_loss(outputs["segm"], targets) / conf.shape[0]}

    @torch.no_grad()
    def assign(self, outputs: dict[str, Tensor], targets: list[LossTargets]) -> PriorAssignment:
        """Prior matching, then OHEM on the class logits."""
        conf, P = outputs["conf"], outputs["conf"].shape[1]
        matches = self.match(targets, outputs["priors"])
        labels = torch.stack([m.labels if m is not None else conf.new_zeros(P, dtype=torch.long)
                              for m in matches])                                          # [B, P]
        loc = torch.stack([m.loc if m is not None else conf.new_zeros(P, 4) for m in matches])
        return PriorAssignment(matches, labels, loc, self.hard_negatives(conf, labels))

    def hard_negatives(self, conf: Tensor, labels: Tensor) -> Tensor:
        """OHEM: per image the ``negpos_ratio * num_pos`` background priors with the largest
        background loss logsumexp(conf) - conf[0]. conf [B, P, C], labels [B, P] -> [B, P] bool."""
        with torch.no_grad():
            flat = conf.reshape(-1, conf.shape[-1])
            top = flat.max()                                     # one shift for the whole batch, as official
            bg_loss = (torch.log(torch.exp(flat - top).sum(1)) + top - flat[:, 0]).view(labels.shape)
            bg_loss[labels != 0] = 0                             # positives and neutrals never mined
            rank = bg_loss.sort(1, descending=True).indices.sort(1).indices
            num_neg = (self.negpos_ratio * (labels > 0).sum(1, keepdim=True)).clamp(max=labels.shape[1] - 1)
            return (rank < num_neg) & (labels == 0)

    def mask_loss(self, proto: Tensor, coeffs: Tensor, matches: list[PriorMatch | None],
                  targets: list[LossTargets]) -> Tensor:
        """proto [B, h, w, k], coeffs [B, P, k]. Sum over images and positives (see module doc)."""
        h, w = proto.shape[1:3]
        total = proto.new_zeros(())
        for b, (m, t) in enumerate(zip(matches, targets)):
            if m is None or not bool((m.labels > 0).any()):
                continue
            positive = m.labels > 0
            truth = m.truth_index[positive]
            coef = coeffs[b, positive]
            num_all = len(truth)
            if num_all > self.masks_to_train:
                pick = torch.randperm(num_all, device=truth.device)[:self.masks_to_train]
                truth, coef = truth[pick], coef[pick]
            with torch.no_grad():
                gt = self.mask_targets(t.masks[truth], (h, w)).permute(1, 2, 0)            # [h, w, n]
            boxes = t.boxes[truth]
            pred = crop_masks(assemble_masks(proto[b], coef), boxes)                    # [h, w, n]
            with torch.autocast(pred.device.type, enabled=False):  # BCE on probabilities: float32 only
                bce = F.binary_cross_entropy(pred.float().clamp(0, 1), gt.float(), reduction="none").sum((0, 1))
            wh = xyxy_to_cxcywh(boxes)[:, 2:]
            per_mask = bce / (wh[:, 0] * w) / (wh[:, 1] * h) * (h * w)
            total = total + per_mask.sum() * (num_all / len(truth))
        return total / (h * w)

    def mask_targets(self, masks: Tensor, hw: tuple[int, int]) -> Tensor:
        """GT masks [n, H, W] -> [n, h, w] at prototype resolution: official, bilinear
        resampling thresholded at 0.5; soft, each prototype pixel's covered fraction."""
        if self.soft_mask_targets:
            return F.adaptive_avg_pool2d(masks[None].float(), hw)[0]
        return binarised_resize(masks, hw)

    def semantic_loss(self, segm: Tensor, targets: list[LossTargets]) -> Tensor:
        """segm [B, C_fg, H, W] logits vs per-class union of the GT masks downsampled to H x W."""
        B, C, H, W = segm.shape
        total = segm.new_zeros(())
        for b, t in enumerate(targets):
            with torch.no_grad():
                target = segm.new_zeros(C, H, W)
                if len(t.labels):
                    for label, m in zip(t.labels.tolist(), binarised_resize(t.masks, (H, W)).to(segm.dtype)):
                        target[label] = torch.max(target[label], m)
            total = total + F.binary_cross_entropy_with_logits(segm[b], target, reduction="sum")
        return total / (H * W)


def binarised_resize(masks: Tensor, hw: tuple[int, int]) -> Tensor:
    """The official GT mask downsampling: [n, H, W] -> [n, h, w] bilinear, then > 0.5 (as float)."""
    return (F.interpolate(masks[None].float(), hw, mode="bilinear", align_corners=False)[0] > 0.5).float()
