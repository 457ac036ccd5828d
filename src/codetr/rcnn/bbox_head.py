"""The Fast R-CNN box head (Girshick 2015) as mmdet 2.25.3's ``Shared2FCBBoxHead``.

    RoI feats [N, C, S, S] -> flatten [N, C*S*S] -> fc + ReLU -> fc + ReLU [N, F]
                           -> fc_cls [N, K+1] (softmax logits, column K = background)
                           -> fc_reg [N, 4K]  (class-specific DeltaXYWH deltas; [N, 4] agnostic)

Parameter names match mmdet's (``shared_fcs.{0,1}``, ``fc_cls``, ``fc_reg``).

Targets, per image over its sampled RoIs ``[pos; neg]``: label = the positive's gt label, K for
negatives; label weight ``pos_weight`` (1) on positives and 1 on negatives; box target on
positives only: the assigned gt box itself when ``reg_decoded_bbox`` (Co-DETR's RoI head, GIoU
loss), else its encoded deltas (Faster R-CNN, L1 loss).

Losses (mmdet ``BBoxHead.loss``; ``losses.reduce_by_avg_factor`` is mmdet's reduction):
* ``loss_cls`` = w_cls * sum(CE(logits, label) * label_weight) / max(#(label_weight > 0), 1);
* ``acc`` = 100 * fraction of RoIs whose arg-max class is the label;
* ``loss_bbox`` over positives, the prediction of the positive's own class: GIoU loss
  ``1 - GIoU(decode(roi, delta), gt)`` or L1 on deltas, summed and divided by the number of ALL
  sampled RoIs (not the positives); no positives -> 0 (still in the graph).

Test (``get_bboxes`` + ``multiclass_nms``): softmax, decode every class with clipping to the
image, divide by the scale factor (original pixels, before NMS), candidates ``score >
score_thr``, class-aware NMS, keep ``max_per_img``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codetr.boxes import MMDET_EPS, elementwise_generalized_box_iou
from codetr.coders import delta_xywh_decode, delta_xywh_encode
from codetr.losses import reduce_by_avg_factor
from codetr.ops.nms import multiclass_nms
from codetr.sampling import Sample




@dataclass(frozen=True)
class BoxLossConfig:
    """Loss weights and the box loss: ``'giou'`` on decoded boxes (``reg_decoded_bbox``) or
    ``'l1'`` on encoded deltas; ``pos_weight`` <= 0 means 1 (mmdet ``train_cfg.rcnn.pos_weight``)."""

    cls_weight: float = 1.0
    box_weight: float = 1.0
    box_loss: str = "l1"
    pos_weight: float = -1.0

    @property
    def decoded(self) -> bool:
        return self.box_loss == "giou"


@dataclass(frozen=True)
class RoITestConfig:
    """mmdet ``test_cfg.rcnn``."""

    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100


class RoITargets(NamedTuple):
    """Over the batch's sampled RoIs, image by image, each ``[pos; neg]`` (N rows):
    ``labels`` [N] int64 (K = background), ``label_weights`` [N], ``box_targets`` [N, 4]
    (gt boxes xyxy or deltas; zero rows on negatives), ``box_weights`` [N, 4]."""

    labels: Tensor
    label_weights: Tensor
    box_targets: Tensor
    box_weights: Tensor


def _image_targets(s: Sample, num_classes: int, cfg: BoxLossConfig,
                   means: Sequence[float], stds: Sequence[float]) -> RoITargets:
    """One image's ``RoITargets`` from its sample (module docstring)."""
    p, q = len(s.pos_inds), len(s.neg_inds)
    ref = s.boxes
    labels = torch.full((p + q,), num_classes, dtype=torch.long, device=ref.device)
    label_weights = ref.new_zeros(p + q)
    box_targets, box_weights = ref.new_zeros(p + q, 4), ref.new_zeros(p + q, 4)
    if p:
        gt_labels = s.pos_gt_labels
        if gt_labels is None:
            raise ValueError("RoI targets need a sample made with gt labels")
        labels[:p] = gt_labels
        label_weights[:p] = cfg.pos_weight if cfg.pos_weight > 0 else 1.0
        gt = s.pos_gt_boxes.to(ref.dtype)
        box_targets[:p] = gt if cfg.decoded else delta_xywh_encode(s.pos_boxes, gt, means, stds)
        box_weights[:p] = 1.0
    label_weights[p:] = 1.0
    return RoITargets(labels, label_weights, box_targets, box_weights)


def roi_targets(samples: Sequence[Sample], num_classes: int, cfg: BoxLossConfig,
                means: Sequence[float] = (0.0,) * 4, stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> RoITargets:
    """Per image targets (module docstring), concatenated image by image."""
    per_image = [_image_targets(s, num_classes, cfg, means, stds) for s in samples]
    return RoITargets(*(torch.cat(t) for t in zip(*per_image)))


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """mmdet ``accuracy`` (top-1) in percent, shape [1]; 0 for no rows."""
    if logits.shape[0] == 0:
        return logits.new_zeros(1)
    hits = (logits.argmax(dim=1) == labels).float().sum(0, keepdim=True)
    return hits * (100.0 / logits.shape[0])


def _own_class(values: Tensor, labels: Tensor) -> Tensor:
    """values [P, 4K] (or [P, 4]: class-agnostic), labels [P] -> each row's own class [P, 4]."""
    if values.shape[1] == 4:
        return values
    return values.reshape(len(values), -1, 4)[torch.arange(len(values), device=values.device), labels]


def roi_losses(cls_score: Tensor, bbox_pred: Tensor, rois: Tensor, t: RoITargets, num_classes: int,
               cfg: BoxLossConfig, means: Sequence[float] = (0.0,) * 4,
               stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> dict[str, Tensor]:
    """cls_score [N, K+1], bbox_pred [N, 4K], rois [N, 5] -> ``{'loss_cls', 'acc', 'loss_bbox'}``
    (weighted, official names; module docstring), in float32."""
    cls_score, bbox_pred = cls_score.float(), bbox_pred.float()
    n_weighted = max(float((t.label_weights > 0).sum()), 1.0)
    ce = F.cross_entropy(cls_score, t.labels, reduction="none") * t.label_weights  # [N]
    out = {"loss_cls": cfg.cls_weight * reduce_by_avg_factor(ce, n_weighted),
           "acc": accuracy(cls_score.detach(), t.labels)}
    pos = (t.labels >= 0) & (t.labels < num_classes)  # [N]
    if not bool(pos.any()):
        out["loss_bbox"] = bbox_pred[pos].sum()  # 0, keeps the graph
        return out
    pred = _own_class(bbox_pred[pos], t.labels[pos])  # [P, 4] deltas
    target, weight = t.box_targets[pos], t.box_weights[pos]
    if cfg.decoded:
        boxes = delta_xywh_decode(rois[pos, 1:], pred, means, stds)  # no clipping in the loss
        per_box = 1 - elementwise_generalized_box_iou(boxes, target, eps=MMDET_EPS, clamp=True)  # [P]
        per_box = per_box * weight.mean(dim=-1)
    else:
        per_box = (pred - target).abs() * weight  # [P, 4]
    out["loss_bbox"] = cfg.box_weight * reduce_by_avg_factor(per_box, float(len(t.labels)))
    return out


class Shared2FCBBoxHead(nn.Module):
    """Two shared fcs, then the classifier and the box regressor (module docstring).

    Args: ``in_channels`` C and ``roi_size`` S of the pooled features, ``fc_channels`` F,
    ``num_classes`` K, ``class_agnostic`` (one box per RoI instead of one per class),
    ``means`` / ``stds`` of the delta coder, ``loss_cfg``, ``test_cfg``.
    """

    def __init__(self, in_channels: int, num_classes: int, roi_size: int = 7, fc_channels: int = 1024,
                 class_agnostic: bool = False, means: Sequence[float] = (0.0,) * 4,
                 stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2), loss_cfg: BoxLossConfig = BoxLossConfig(),
                 test_cfg: RoITestConfig = RoITestConfig()) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.means, self.stds = tuple(means), tuple(stds)
        self.loss_cfg, self.test_cfg = loss_cfg, test_cfg
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_size * roi_size, fc_channels),
                                         nn.Linear(fc_channels, fc_channels)])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 if class_agnostic else 4 * num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """mmdet: shared fcs Xavier-uniform, classifier N(0, 0.01), regressor N(0, 0.001), biases 0."""
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        for fc in (*self.shared_fcs, self.fc_cls, self.fc_reg):
            nn.init.zeros_(fc.bias)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """roi_feats [N, C, S, S] -> (cls_score [N, K+1], bbox_pred [N, 4K])."""
        x = roi_feats.flatten(1)  # [N, C*S*S]
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def targets(self, samples: Sequence[Sample]) -> RoITargets:
        return roi_targets(samples, self.num_classes, self.loss_cfg, self.means, self.stds)

    def loss(self, cls_score: Tensor, bbox_pred: Tensor, rois: Tensor, targets: RoITargets) -> dict[str, Tensor]:
        return roi_losses(cls_score, bbox_pred, rois, targets, self.num_classes, self.loss_cfg, self.means, self.stds)

    @torch.no_grad()
    def detections(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, img_shape: Sequence[int],
                   scale_factor: Tensor | Sequence[float] | None = None) -> tuple[Tensor, Tensor]:
        """One image: rois [N, 5], cls_score [N, K+1], bbox_pred [N, 4K], img_shape (h, w[, c]),
        scale_factor (w, h, w, h) or None -> (dets [M, 5] xyxy + score, labels [M])."""
        if rois.shape[0] == 0:
            return rois.new_zeros(0, 5), torch.zeros(0, dtype=torch.long, device=rois.device)
        scores = F.softmax(cls_score.float(), dim=-1)  # [N, K+1]
        boxes = delta_xywh_decode(rois[:, 1:], bbox_pred.float(), self.means, self.stds,
                                  max_shape=tuple(img_shape[:2]))  # [N, 4K]
        if scale_factor is not None:
            sf = torch.as_tensor(scale_factor, dtype=boxes.dtype, device=boxes.device)
            boxes = (boxes.reshape(len(boxes), -1, 4) / sf).reshape(len(boxes), -1)
        cfg = self.test_cfg
        return multiclass_nms(boxes, scores, cfg.score_thr, {"type": "nms", "iou_threshold": cfg.nms_iou},
                              cfg.max_per_img)
