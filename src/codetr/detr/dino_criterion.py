"""DINO's loss: the DETR set loss (focal + L1 + GIoU, Hungarian-matched) on the final, each
auxiliary (``_i``) and the encoder (``_interm``) output, plus the denoising loss (``_dn``,
``_dn_i``) on the positive denoising queries, which are assigned to their own object.

Denoising normalisation (official): the DETR terms divided by num_boxes * num_groups, the
focal term summed over all denoising slots (negatives and padding learn "no object").
Outputs follow the official layout: ``outputs['dn_meta']`` = {'pad_size', 'num_dn_group',
'output_known_lbs_bboxes': {'pred_logits', 'pred_boxes', 'aux_outputs'}}.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..assign.hungarian import Match
from ..boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou
from .criterion import SetCriterion, average_num_boxes, matched_pairs
from .denoising import dn_positive_indices

# DINO's GIoU adds 1e-6 to its denominators, in the loss and in the matching cost
GIOU_EPS = 1e-6
DN_KEYS = ("loss_ce", "loss_bbox", "loss_giou", "loss_xy", "loss_hw", "cardinality_error")


class DINOCriterion(SetCriterion):
    """SetCriterion with real labels on the encoder output, the L1 split into logged
    ``loss_xy`` / ``loss_hw``, and the denoising terms."""

    def loss_boxes(self, boxes: Tensor, targets: list[dict], indices: list[Match], num_boxes: float) -> dict[str, Tensor]:
        batch, query = matched_pairs(indices)
        src = boxes[batch, query]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        l1 = F.l1_loss(src, tgt, reduction="none")                                  # [M, 4]
        giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt), GIOU_EPS)
        return {"loss_bbox": l1.sum() / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes,
                "loss_xy": l1[:, :2].detach().sum() / num_boxes, "loss_hw": l1[:, 2:].detach().sum() / num_boxes}

    def assigned_output(self, out: dict[str, Tensor], targets: list[dict], indices: list[Match],
                        num_boxes: float) -> dict[str, Tensor]:
        """The set losses for a fixed assignment (denoising: no matching)."""
        losses = self.loss_labels(out["pred_logits"], targets, indices, num_boxes, log=False)
        losses.update(self.loss_boxes(out["pred_boxes"], targets, indices, num_boxes))
        losses.update(self.loss_cardinality(out["pred_logits"], targets))
        return losses

    def denoising(self, outputs: dict, targets: list[dict], num_boxes: float) -> list[dict[str, Tensor]]:
        """Denoising losses of the final layer then each auxiliary layer (zeros without dn)."""
        meta = outputs.get("dn_meta") or {}
        known = meta.get("output_known_lbs_bboxes")
        num_layers = 1 + len(outputs.get("aux_outputs", []))
        if known is None:
            zero = outputs["pred_logits"].new_zeros(())
            return [{k: zero for k in DN_KEYS} for _ in range(num_layers)]
        groups = meta["num_dn_group"]
        counts = [len(t["labels"]) for t in targets]
        indices = dn_positive_indices(counts, groups, meta["pad_size"], known["pred_logits"].device)
        layers = [known] + list(known.get("aux_outputs", []))
        return [self.assigned_output(o, targets, indices, num_boxes * groups) for o in layers]

    def __call__(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        num_boxes = average_num_boxes(targets, outputs["pred_logits"].device)
        dn = self.denoising(outputs, targets, num_boxes)
        losses, _ = self.single_output(outputs, targets, num_boxes, log=True)
        losses.update({f"{k}_dn": v for k, v in dn[0].items()})
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses, _ = self.single_output(aux, targets, num_boxes, log=False)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
            losses.update({f"{k}_dn_{i}": v for k, v in dn[i + 1].items()})
        if "interm_outputs" in outputs:
            interm, _ = self.single_output(outputs["interm_outputs"], targets, num_boxes, log=False)
            losses.update({f"{k}_interm": v for k, v in interm.items()})
        return losses


def dino_loss_weights(num_aux: int, use_dn: bool, cls: float, bbox: float, giou: float,
                      interm_coef: float = 1.0, no_interm_box_loss: bool = False) -> dict[str, float]:
    """weight_dict as the official builder: final and ``_i`` terms (with their ``_dn`` twins
    when denoising), and ``_interm`` scaled by ``interm_coef`` (boxes off with
    ``no_interm_box_loss``)."""
    base = {"loss_ce": cls, "loss_bbox": bbox, "loss_giou": giou}
    layer = dict(base)
    if use_dn:
        layer.update({f"{k}_dn": v for k, v in base.items()})
    weights = dict(layer)
    for i in range(num_aux):
        weights.update({f"{k}_{i}": v for k, v in layer.items()})
    box_factor = 0.0 if no_interm_box_loss else 1.0
    weights.update({"loss_ce_interm": cls * interm_coef, "loss_bbox_interm": bbox * interm_coef * box_factor,
                    "loss_giou_interm": giou * interm_coef * box_factor})
    return weights
