"""Box samplers for anchor / RoI heads (mmdet 2.25.3 ``RandomSampler``, ``PseudoSampler``).

Random sampler: of ``num`` slots at most ``int(num * pos_fraction)`` go to positives
(``gt_inds > 0``), the rest to negatives (``gt_inds == 0``), optionally capped at
``neg_pos_ub * max(#pos, 1)``. A class with more candidates than slots keeps
``candidates[randperm(#candidates)[:slots]]``: positives are drawn before negatives, and only
when there are more candidates than slots (``codetr.rng``, so tests can replay the official
draws). Both index sets are then sorted and deduplicated (``unique``). With
``add_gt_as_proposals`` the gts are prepended to the boxes as their own positives
(``gt_inds = 1..G``, overlap 1), so indices address ``[gts; boxes]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from codetr import rng
from codetr.assign.max_iou import MaxIoUAssignment, max_iou_assign


@dataclass
class Sample:
    """``pos_inds`` [P], ``neg_inds`` [Q] (sorted, into ``boxes``); ``pos_is_gt`` [P] uint8;
    ``pos_assigned_gt_inds`` [P] (0-based gt of each positive); ``boxes`` [N', 4] the sampled
    set's boxes (gts prepended when added); ``gt_boxes`` [G, 4]; ``assignment`` the (possibly gt-extended) input."""

    pos_inds: Tensor
    neg_inds: Tensor
    pos_is_gt: Tensor
    pos_assigned_gt_inds: Tensor
    boxes: Tensor
    gt_boxes: Tensor
    assignment: MaxIoUAssignment

    @property
    def pos_boxes(self) -> Tensor:
        return self.boxes[self.pos_inds]

    @property
    def neg_boxes(self) -> Tensor:
        return self.boxes[self.neg_inds]

    @property
    def pos_gt_boxes(self) -> Tensor:
        """[P, 4] the gt box of each positive."""
        return self.gt_boxes[:, :4].reshape(-1, 4)[self.pos_assigned_gt_inds]

    @property
    def pos_gt_labels(self) -> Tensor | None:
        labels = self.assignment.labels
        return None if labels is None else labels[self.pos_inds]


def _draw(candidates: Tensor, slots: int) -> Tensor:
    """All of ``candidates`` [M] if they fit, else a random ``slots`` of them."""
    if candidates.numel() <= slots:
        return candidates
    return candidates[rng.randperm(candidates.numel(), candidates.device)[:slots]]


def _with_gts(assignment: MaxIoUAssignment, gt_labels: Tensor | None, num_gts: int) -> MaxIoUAssignment:
    """The assignment of ``[gts; boxes]``: each gt matched to itself with overlap 1."""
    own = torch.arange(1, num_gts + 1, dtype=torch.long, device=assignment.gt_inds.device)
    labels = assignment.labels
    if labels is not None:
        labels = torch.cat([gt_labels.to(labels), labels])
    return MaxIoUAssignment(assignment.num_gts, torch.cat([own, assignment.gt_inds]),
                            torch.cat([assignment.max_overlaps.new_ones(num_gts), assignment.max_overlaps]),
                            labels)


def _result(pos: Tensor, neg: Tensor, boxes: Tensor, gt_boxes: Tensor, is_gt: Tensor,
            assignment: MaxIoUAssignment) -> Sample:
    return Sample(pos, neg, is_gt[pos], assignment.gt_inds[pos] - 1, boxes, gt_boxes, assignment)


def random_sample(assignment: MaxIoUAssignment, boxes: Tensor, gt_boxes: Tensor, num: int,
                  pos_fraction: float, neg_pos_ub: float = -1, add_gt_as_proposals: bool = True,
                  gt_labels: Tensor | None = None) -> Sample:
    """boxes [N, 4+] with their ``assignment``, gt_boxes [G, 4] -> ``Sample`` (module docstring)."""
    boxes = boxes[:, :4]
    is_gt = boxes.new_zeros(len(boxes), dtype=torch.uint8)
    if add_gt_as_proposals and len(gt_boxes) > 0:
        if gt_labels is None:
            raise ValueError("add_gt_as_proposals needs gt_labels")
        boxes = torch.cat([gt_boxes[:, :4], boxes])
        assignment = _with_gts(assignment, gt_labels, len(gt_boxes))
        is_gt = torch.cat([is_gt.new_ones(len(gt_boxes)), is_gt])
    gt_inds = assignment.gt_inds
    pos = _draw(torch.nonzero(gt_inds > 0).reshape(-1), int(num * pos_fraction)).unique()
    neg_slots = num - pos.numel()
    if neg_pos_ub >= 0:
        neg_slots = min(neg_slots, int(neg_pos_ub * max(1, pos.numel())))
    neg = _draw(torch.nonzero(gt_inds == 0).reshape(-1), neg_slots).unique()
    return _result(pos, neg, boxes, gt_boxes, is_gt, assignment)


def pseudo_sample(assignment: MaxIoUAssignment, boxes: Tensor, gt_boxes: Tensor) -> Sample:
    """Every positive and every negative, no draw (mmdet ``PseudoSampler``)."""
    gt_inds = assignment.gt_inds
    pos = torch.nonzero(gt_inds > 0).reshape(-1).unique()
    neg = torch.nonzero(gt_inds == 0).reshape(-1).unique()
    is_gt = boxes.new_zeros(len(boxes), dtype=torch.uint8)
    return _result(pos, neg, boxes[:, :4], gt_boxes, is_gt, assignment)


@dataclass(frozen=True)
class AssignSampleConfig:
    """mmdet's MaxIoUAssigner + RandomSampler numbers, as in ``train_cfg.rpn`` / ``train_cfg.rcnn``."""

    pos_iou_thr: float
    neg_iou_thr: float
    min_pos_iou: float
    match_low_quality: bool
    num: int
    pos_fraction: float
    neg_pos_ub: float = -1
    add_gt_as_proposals: bool = True

    @classmethod
    def from_mmdet(cls, section: dict) -> "AssignSampleConfig":
        """From an mmdet ``train_cfg`` section holding ``assigner`` and ``sampler`` dicts."""
        a, s = section["assigner"], section["sampler"]
        if a["type"] != "MaxIoUAssigner" or s["type"] != "RandomSampler" or a.get("ignore_iof_thr", -1) > 0:
            raise ValueError("only MaxIoUAssigner (no ignore boxes) + RandomSampler are implemented")
        return cls(a["pos_iou_thr"], a["neg_iou_thr"], a["min_pos_iou"], a.get("match_low_quality", True),
                   s["num"], s["pos_fraction"], s.get("neg_pos_ub", -1), s.get("add_gt_as_proposals", True))


RPN_SAMPLING = AssignSampleConfig(0.7, 0.3, 0.3, True, 256, 0.5, -1, False)    # mmdet's RPN defaults
RCNN_SAMPLING = AssignSampleConfig(0.5, 0.5, 0.5, False, 512, 0.25, -1, True)  # mmdet's R-CNN defaults


def assign_and_sample(boxes: Tensor, gt_boxes: Tensor, cfg: AssignSampleConfig,
                      gt_labels: Tensor | None = None) -> Sample:
    """Max-IoU assignment of ``boxes`` [N, 4] to ``gt_boxes`` [G, 4], then a random sample (draws
    through ``codetr.rng``)."""
    assignment = max_iou_assign(boxes, gt_boxes, cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou,
                                cfg.match_low_quality, gt_labels=gt_labels)
    return random_sample(assignment, boxes, gt_boxes, cfg.num, cfg.pos_fraction, cfg.neg_pos_ub,
                         add_gt_as_proposals=cfg.add_gt_as_proposals, gt_labels=gt_labels)
