"""The set-prediction loss of the DETR family, built from output groups.

A group is one set of predictions the loss applies to: the final decoder layer, each auxiliary
layer (suffix ``_i``), the encoder proposals (``_enc``, DINO ``_interm``), the denoising queries
(``_dn``, ``_dn_i``: dino_criterion.py). Each group declares how its queries are assigned to
targets (Hungarian matching, or an assignment given in advance), its normaliser and its class
loss (``FocalClassLoss`` or ``QualityFocalClassLoss``; Co-DETR's mmdet-convention losses,
co_detr/criterion.py, reuse them and ``Matched``). Every group gives the same terms, suffixed
with its name:

* ``loss_ce``: the class loss of all queries (matched ones labelled, the rest background);
* ``loss_bbox``: L1 of the matched normalized cxcywh boxes; ``loss_giou``: 1 - their GIoU;
* logs: ``cardinality_error`` (|#queries not predicting the last class - #targets|, official),
  ``class_error`` (100 - top-1 accuracy of the matched queries; final layer), and with
  ``log_l1_parts`` the L1 of centres ``loss_xy`` and sizes ``loss_hw`` (DINO).

Sums run over the batch and are divided by the group's normaliser, for the matched groups the
number of target boxes averaged over ranks (``codetr.distributed.mean_count_over_ranks``).
Targets are in the DETR convention: per image {'labels' [M] int64, 'boxes' [M, 4] normalized
cxcywh}. Terms are unweighted; ``weight_dict`` names the losses and their weights, every other
term is a log (``codetr.detector.LossOutput.weigh``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from .. import distributed as du
from ..assign.hungarian import HungarianMatcher, Match
from ..boxes import MMDET_EPS, cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from ..losses import quality_focal_loss, sigmoid_focal_loss

Outputs = dict[str, Tensor]        # {'pred_logits' [B, Q, K], 'pred_boxes' [B, Q, 4] cxcywh}
Targets = list[dict[str, Tensor]]  # per image {'labels' [M], 'boxes' [M, 4] cxcywh}
Assigner = Callable[[Outputs, Targets], list[Match]]


@dataclass
class Matched:
    """The assigned (query, target) pairs of a batch, image after image: ``batch`` [M] image
    index, ``query`` [M] query index, and the ``labels`` [M] / ``boxes`` [M, 4] of their targets."""

    batch: Tensor
    query: Tensor
    labels: Tensor
    boxes: Tensor

    @classmethod
    def gather(cls, indices: list[Match], targets: Targets) -> "Matched":
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        return cls(batch, torch.cat([q for q, _ in indices]), labels, boxes)


class ClassLoss(Protocol):
    """A group's class loss: logits [B, Q, K], predicted boxes [B, Q, 4] (what a quality focal
    loss scores the matched queries' IoU with), the matched pairs, the normaliser -> scalar."""

    def __call__(self, logits: Tensor, boxes: Tensor, matched: Matched, normaliser: float) -> Tensor: ...


@dataclass(frozen=True)
class FocalClassLoss:
    """Sigmoid focal loss against one-hot targets (the matched labels, zeros elsewhere), summed
    over queries and classes, / normaliser (the official mean over queries times Q)."""

    alpha: float = 0.25
    gamma: float = 2.0

    def __call__(self, logits: Tensor, boxes: Tensor, matched: Matched, normaliser: float) -> Tensor:
        onehot = torch.zeros_like(logits)                                             # [B, Q, K]
        onehot[matched.batch, matched.query, matched.labels] = 1.0
        return sigmoid_focal_loss(logits, onehot, self.alpha, self.gamma).sum() / normaliser


@dataclass(frozen=True)
class QualityFocalClassLoss:
    """Quality focal loss (GFL; mmdet ``QualityFocalLoss``, Co-DINO): each matched query's
    target at its label is the IoU of its (detached) predicted box with its target box, both
    normalized xyxy, mmdet's union clamped at 1e-6; summed over queries and classes, /
    normaliser."""

    beta: float = 2.0

    def __call__(self, logits: Tensor, boxes: Tensor, matched: Matched, normaliser: float) -> Tensor:
        pred = cxcywh_to_xyxy(boxes[matched.batch, matched.query].detach())           # [M, 4]
        iou = elementwise_box_iou(pred, cxcywh_to_xyxy(matched.boxes), eps=MMDET_EPS, clamp=True)
        quality = torch.zeros_like(logits)                                            # [B, Q, K]
        quality[matched.batch, matched.query, matched.labels] = iou.to(logits.dtype)
        return quality_focal_loss(logits, quality, self.beta).sum() / normaliser


@dataclass
class LossGroup:
    """One group of predictions and how the set loss applies to it (see the module docstring).
    ``outputs`` None: a group absent from this batch (no denoising queries), whose terms are
    zeros, as official."""

    suffix: str
    outputs: Outputs | None
    targets: Targets
    assign: Assigner
    normaliser: float
    class_loss: ClassLoss
    log_class_error: bool = False


def fixed_assignment(indices: list[Match]) -> Assigner:
    """An assignment known in advance (denoising: each query to the object it was made from)."""
    return lambda outputs, targets: indices


def box_normaliser(targets: Targets) -> float:
    """The matched groups' normaliser: the batch's target boxes averaged over ranks, at least 1."""
    return du.mean_count_over_ranks(sum(len(t["labels"]) for t in targets))


class SetCriterion:
    """The set loss over Deformable DETR's groups: the final layer, each auxiliary layer and, in
    two-stage, the encoder proposals, which are class-agnostic (every target is class 0) as
    official unless ``enc_class_aware`` (their real labels, as DINO). ``class_loss`` replaces
    the focal loss of ``focal_alpha`` / ``focal_gamma``; ``giou_eps`` is added to the GIoU
    denominators."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, enc_class_aware: bool = False,
                 giou_eps: float = 0.0, log_l1_parts: bool = False, class_loss: ClassLoss | None = None) -> None:
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, weight_dict
        self.enc_class_aware, self.giou_eps, self.log_l1_parts = enc_class_aware, giou_eps, log_l1_parts
        self.class_loss = class_loss or FocalClassLoss(focal_alpha, focal_gamma)

    def __call__(self, outputs: dict, targets: Targets) -> dict[str, Tensor]:
        """The unweighted terms of every group, suffixed with the group's name."""
        return self.terms(self.groups(outputs, targets))

    def groups(self, outputs: dict, targets: Targets) -> list[LossGroup]:
        num_boxes = box_normaliser(targets)
        groups = [self.matched_group("", outputs, targets, num_boxes, log_class_error=True)]
        groups += [self.matched_group(f"_{i}", aux, targets, num_boxes)
                   for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "enc_outputs" in outputs:
            groups.append(self.matched_group("_enc", outputs["enc_outputs"], self.encoder_targets(targets), num_boxes))
        return groups

    def matched_group(self, suffix: str, outputs: Outputs, targets: Targets, normaliser: float,
                      log_class_error: bool = False) -> LossGroup:
        """A group assigned by Hungarian matching."""
        return LossGroup(suffix, outputs, targets, self.hungarian, normaliser, self.class_loss, log_class_error)

    def hungarian(self, outputs: Outputs, targets: Targets) -> list[Match]:
        device = outputs["pred_logits"].device
        indices = self.matcher(outputs["pred_logits"], outputs["pred_boxes"], targets)
        return [(q.to(device), t.to(device)) for q, t in indices]

    def encoder_targets(self, targets: Targets) -> Targets:
        if self.enc_class_aware:
            return targets
        return [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]

    def terms(self, groups: list[LossGroup]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for group in groups:
            out.update({name + group.suffix: value for name, value in self.group_terms(group).items()})
        return out

    def group_terms(self, group: LossGroup) -> dict[str, Tensor]:
        """The unsuffixed terms of one group (see the module docstring)."""
        if group.outputs is None:
            zero = group.targets[0]["boxes"].new_zeros(())
            return {name: zero for name in self.term_names(group)}
        logits, boxes = group.outputs["pred_logits"], group.outputs["pred_boxes"]
        matched = Matched.gather(group.assign(group.outputs, group.targets), group.targets)
        terms = {"loss_ce": group.class_loss(logits, boxes, matched, group.normaliser)}
        terms.update(self.box_terms(boxes[matched.batch, matched.query], matched.boxes, group.normaliser))
        terms["cardinality_error"] = cardinality_error(logits, group.targets)
        if group.log_class_error:
            terms["class_error"] = class_error(logits[matched.batch, matched.query], matched.labels)
        return terms

    def box_terms(self, boxes: Tensor, target_boxes: Tensor, normaliser: float) -> dict[str, Tensor]:
        """Matched boxes [M, 4] and their targets [M, 4], normalized cxcywh."""
        l1 = (boxes - target_boxes).abs()                                                 # [M, 4]
        giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes), self.giou_eps)
        terms = {"loss_bbox": l1.sum() / normaliser, "loss_giou": (1 - giou).sum() / normaliser}
        if self.log_l1_parts:
            terms["loss_xy"] = l1[:, :2].detach().sum() / normaliser
            terms["loss_hw"] = l1[:, 2:].detach().sum() / normaliser
        return terms

    def term_names(self, group: LossGroup) -> list[str]:
        names = ["loss_ce", "loss_bbox", "loss_giou"] + (["loss_xy", "loss_hw"] if self.log_l1_parts else [])
        return names + ["cardinality_error"] + (["class_error"] if group.log_class_error else [])


@torch.no_grad()
def cardinality_error(logits: Tensor, targets: Targets) -> Tensor:
    """Mean over images of |#queries whose argmax is not the last class - #targets| (logged)."""
    predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()                 # [B]
    counts = torch.tensor([len(t["labels"]) for t in targets], dtype=torch.float32, device=logits.device)
    return (predicted - counts).abs().mean()


@torch.no_grad()
def class_error(logits: Tensor, labels: Tensor) -> Tensor:
    """100 - percentage of matched queries [M, K] whose argmax is their label [M]; 100 for none
    (official)."""
    accuracy = (logits.argmax(-1) == labels).float().mean() * 100 if labels.numel() else logits.new_zeros(())
    return 100 - accuracy


def loss_weights(num_aux: int, two_stage: bool, cls: float, bbox: float, giou: float) -> dict[str, float]:
    """weight_dict over the final, ``_0.._{num_aux-1}`` and (two-stage) ``_enc`` groups."""
    suffixes = [""] + [f"_{i}" for i in range(num_aux)] + (["_enc"] if two_stage else [])
    return group_weights(suffixes, cls, bbox, giou)


def group_weights(suffixes: list[str], cls: float, bbox: float, giou: float) -> dict[str, float]:
    """The same class / L1 / GIoU weights for the groups of each suffix."""
    return {name + s: w for s in suffixes for name, w in (("loss_ce", cls), ("loss_bbox", bbox), ("loss_giou", giou))}
