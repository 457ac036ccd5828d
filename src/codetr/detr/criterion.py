"""The set-prediction loss of the DETR family with focal classification.

Targets here are in the DETR convention: per image {'labels' [M] int64, 'boxes' [M, 4]
normalized cxcywh}. Losses are returned unweighted; ``weight_dict`` says how to combine them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..assign.hungarian import HungarianMatcher, Match
from ..boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou
from ..losses import sigmoid_focal_loss


def average_num_boxes(targets: list[dict[str, Tensor]], device: torch.device) -> float:
    """Number of target boxes averaged over ranks, at least 1: the loss normaliser."""
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        world = dist.get_world_size()
    return max(n.item() / world, 1.0)


def matched_pairs(indices: list[Match]) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched query, image by image."""
    batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query = torch.cat([q for q, _ in indices])
    return batch, query


class SetCriterion:
    """Focal classification + L1 + GIoU on Hungarian-matched queries, applied to the final
    outputs, each auxiliary decoder output (suffix ``_i``) and the encoder proposals (suffix
    ``_enc``). The encoder proposals are class-agnostic (every target is class 0), as official
    two-stage Deformable DETR, unless ``enc_class_aware`` (their real labels, as DINO)."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, enc_class_aware: bool = False) -> None:
        self.num_classes, self.matcher = num_classes, matcher
        self.enc_class_aware = enc_class_aware
        self.weight_dict = weight_dict
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def loss_labels(self, logits: Tensor, targets: list[dict], indices: list[Match], num_boxes: float,
                    log: bool = True) -> dict[str, Tensor]:
        batch, query = matched_pairs(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        onehot = torch.zeros_like(logits)
        onehot[batch, query, matched_labels] = 1.0
        # Official normalisation: mean over classes, sum over queries, / num_boxes.
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).mean(1).sum() / num_boxes
        losses = {"loss_ce": loss * logits.shape[1]}
        if log:
            losses["class_error"] = 100 - top1_accuracy(logits[batch, query], matched_labels)
        return losses

    @torch.no_grad()
    def loss_cardinality(self, logits: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Logged only: |#queries whose argmax is not the last class - #targets| (official)."""
        lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(predicted.float(), lengths.float())}

    def loss_boxes(self, boxes: Tensor, targets: list[dict], indices: list[Match], num_boxes: float) -> dict[str, Tensor]:
        batch, query = matched_pairs(indices)
        src = boxes[batch, query]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt))
        return {"loss_bbox": F.l1_loss(src, tgt, reduction="none").sum() / num_boxes,
                "loss_giou": (1 - giou).sum() / num_boxes}

    def single_output(self, out: dict[str, Tensor], targets: list[dict], num_boxes: float,
                      log: bool) -> tuple[dict[str, Tensor], list[Match]]:
        indices = self.matcher(out["pred_logits"], out["pred_boxes"], targets)
        indices = [(q.to(out["pred_logits"].device), t.to(out["pred_logits"].device)) for q, t in indices]
        losses = self.loss_labels(out["pred_logits"], targets, indices, num_boxes, log=log)
        losses.update(self.loss_boxes(out["pred_boxes"], targets, indices, num_boxes))
        losses.update(self.loss_cardinality(out["pred_logits"], targets))
        return losses, indices

    def __call__(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        num_boxes = average_num_boxes(targets, outputs["pred_logits"].device)
        losses, _ = self.single_output(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses, _ = self.single_output(aux, targets, num_boxes, log=False)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        if "enc_outputs" in outputs:
            enc_targets = targets if self.enc_class_aware else \
                [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            enc_losses, _ = self.single_output(outputs["enc_outputs"], enc_targets, num_boxes, log=False)
            losses.update({f"{k}_enc": v for k, v in enc_losses.items()})
        return losses

    def weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted ``loss*`` terms (their sum is the training loss) plus the unweighted logs."""
        out = {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}
        out.update({k: v.detach() for k, v in losses.items() if k not in self.weight_dict})
        return out


def top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Percentage of rows whose argmax is the label; 0 for no rows (as official)."""
    if labels.numel() == 0:
        return torch.zeros((), device=logits.device)
    return (logits.argmax(-1) == labels).float().mean() * 100


def loss_weights(num_aux: int, two_stage: bool, cls: float, bbox: float, giou: float) -> dict[str, float]:
    """weight_dict over final, ``_0.._{num_aux-1}`` and ``_enc`` outputs."""
    base = {"loss_ce": cls, "loss_bbox": bbox, "loss_giou": giou}
    weights = dict(base)
    suffixes = [f"_{i}" for i in range(num_aux)] + (["_enc"] if two_stage else [])
    for s in suffixes:
        weights.update({k + s: v for k, v in base.items()})
    return weights
