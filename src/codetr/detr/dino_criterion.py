"""DINO's loss: the DETR set loss (criterion.py) over DINO's groups: the final layer, each
auxiliary layer (``_i``) and the encoder output (``_interm``), matched with their real labels,
plus one denoising group per decoder layer (``_dn``, ``_dn_i``) on the positive denoising
queries, each assigned to the object it was made from.

Denoising normalisation (official): the terms divided by num_boxes * num_groups, the focal term
summed over all denoising slots (negatives and padding learn "no object"). Outputs follow the
official layout: ``outputs['dn_meta']`` = {'pad_size', 'num_dn_group', 'output_known_lbs_bboxes':
{'pred_logits', 'pred_boxes', 'aux_outputs'}}.
"""
from __future__ import annotations

from ..assign.hungarian import HungarianMatcher
from .criterion import ClassLoss, LossGroup, SetCriterion, Targets, box_normaliser, fixed_assignment, group_weights
from .denoising import dn_positive_indices

# DINO's GIoU adds 1e-6 to its denominators, in the loss and in the matching cost
GIOU_EPS = 1e-6


class DINOCriterion(SetCriterion):
    """SetCriterion over DINO's groups, with the L1 of centres and sizes logged apart
    (``loss_xy`` / ``loss_hw``) and DINO's GIoU epsilon."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, enc_class_aware: bool = True,
                 class_loss: ClassLoss | None = None) -> None:
        super().__init__(num_classes, matcher, weight_dict, focal_alpha, focal_gamma, enc_class_aware,
                         giou_eps=GIOU_EPS, log_l1_parts=True, class_loss=class_loss)

    def groups(self, outputs: dict, targets: Targets) -> list[LossGroup]:
        num_boxes = box_normaliser(targets)
        layers = [outputs] + list(outputs.get("aux_outputs", []))
        denoising = self.denoising_groups(outputs, targets, num_boxes, len(layers))
        groups = []
        for i, (layer, dn) in enumerate(zip(layers, denoising)):
            suffix = f"_{i - 1}" if i else ""
            groups += [self.matched_group(suffix, layer, targets, num_boxes, log_class_error=i == 0), dn]
        if "interm_outputs" in outputs:
            groups.append(self.matched_group("_interm", outputs["interm_outputs"], self.encoder_targets(targets),
                                             num_boxes))
        return groups

    def denoising_groups(self, outputs: dict, targets: Targets, num_boxes: float, num_layers: int) -> list[LossGroup]:
        """One group per decoder layer, normalised by num_boxes * num_groups; absent (zero terms)
        when the batch has no denoising queries."""
        suffixes = ["_dn"] + [f"_dn_{i}" for i in range(num_layers - 1)]
        meta = outputs.get("dn_meta") or {}
        known = meta.get("output_known_lbs_bboxes")
        if known is None:
            return [LossGroup(s, None, targets, fixed_assignment([]), num_boxes, self.class_loss) for s in suffixes]
        num_groups = meta["num_dn_group"]
        counts = [len(t["labels"]) for t in targets]
        indices = dn_positive_indices(counts, num_groups, meta["pad_size"], known["pred_logits"].device)
        layers = [known] + list(known.get("aux_outputs", []))
        return [LossGroup(s, layer, targets, fixed_assignment(indices), num_boxes * num_groups, self.class_loss)
                for s, layer in zip(suffixes, layers)]


def dino_loss_weights(num_aux: int, use_dn: bool, cls: float, bbox: float, giou: float,
                      interm_coef: float = 1.0, no_interm_box_loss: bool = False) -> dict[str, float]:
    """weight_dict as the official builder: the final and ``_i`` groups (with their ``_dn``
    twins when denoising), and ``_interm`` scaled by ``interm_coef`` (boxes off with
    ``no_interm_box_loss``)."""
    layers = [""] + [f"_{i}" for i in range(num_aux)]
    suffixes = [s for layer in layers for s in ([layer, f"_dn{layer}"] if use_dn else [layer])]
    box_coef = 0.0 if no_interm_box_loss else interm_coef
    return {**group_weights(suffixes, cls, bbox, giou),
            **group_weights(["_interm"], cls * interm_coef, bbox * box_coef, giou * box_coef)}
