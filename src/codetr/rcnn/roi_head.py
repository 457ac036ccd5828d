"""The R-CNN RoI head: mmdet 2.25.3's ``StandardRoIHead`` (Faster R-CNN's second stage), plus the
``pos_coords`` Co-DETR's auxiliary ``CoStandardRoIHead`` turns into positive queries.

Training, per image: Max-IoU assignment of the proposals to the gts (``codetr.assign.max_iou``),
random sampling of ``[gts; proposals]`` (``codetr.sampling``; gts prepended as their own
positives), RoIs ``[pos; neg]`` image by image; then RoI features (``RoIExtractor``), the box
head and its losses (``Shared2FCBBoxHead``). ``pos_coords`` (Co-DETR): with
``n = min(2000, min_i #RoIs_i)``, per image the first n RoIs' boxes [B, n, 4], their labels
[B, n] (K = background), box targets [B, n, 4] and RoI features averaged over the S x S grid
[B, n, C], tagged ``'rcnn'``.

Test: the same features for every proposal, then the box head's ``detections`` per image.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from codetr.sampling import RCNN_SAMPLING, AssignSampleConfig, Sample, assign_and_sample

from .bbox_head import BoxLossConfig, RoITargets, RoITestConfig, Shared2FCBBoxHead
from .roi_extractor import RoIExtractor

MAX_POS_COORDS = 2000  # Co-DETR's cap on RoIs per image handed to the positive queries


class RoIForward(NamedTuple):
    """``rois`` [N, 5] (batch index, xyxy), ``cls_score`` [N, K+1], ``bbox_pred`` [N, 4K],
    ``roi_feats`` [N, C, S, S]."""

    rois: Tensor
    cls_score: Tensor
    bbox_pred: Tensor
    roi_feats: Tensor


class RoIPosCoords(NamedTuple):
    """Co-DETR's RoI ``pos_coords`` (module docstring): boxes [B, n, 4] xyxy input pixels,
    labels [B, n], targets [B, n, 4], feats [B, n, C], the tag ``'rcnn'``."""

    boxes: Tensor
    labels: Tensor
    targets: Tensor
    feats: Tensor
    kind: str = "rcnn"


class RoITrainOutput(NamedTuple):
    """``losses`` (official names ``loss_cls``, ``acc``, ``loss_bbox``), ``pos_coords``, and the
    intermediates: per image ``samples``, the batch ``forward`` and its ``targets``."""

    losses: dict[str, Tensor]
    pos_coords: RoIPosCoords
    samples: list[Sample]
    forward: RoIForward
    targets: RoITargets


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """mmdet ``bbox2roi``: per image boxes [N_i, 4+] -> [sum N_i, 5] (image index, x1, y1, x2, y2)."""
    rows = [torch.cat([b.new_full((len(b), 1), float(i)), b[:, :4]], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros(0, 5)


def pos_coords_from(forward: RoIForward, targets: RoITargets, num_images: int) -> RoIPosCoords:
    """The first ``n = min(2000, min_i #RoIs_i)`` RoIs of every image (module docstring)."""
    image_of = forward.rois[:, 0].long()  # [N]
    counts = torch.bincount(image_of, minlength=num_images)  # [B]
    n = min(MAX_POS_COORDS, int(counts.min())) if num_images else 0
    rows = [torch.nonzero(image_of == i).reshape(-1)[:n] for i in range(num_images)]
    rows = torch.cat(rows) if rows else image_of.new_zeros(0)  # [B*n]
    feats = forward.roi_feats.mean(-1).mean(-1)  # [N, C], W then H as the official code

    def pick(x: Tensor) -> Tensor:  # [N, ...] -> [B, n, ...]
        return x[rows].reshape(num_images, n, *x.shape[1:])

    return RoIPosCoords(pick(forward.rois[:, 1:]), pick(targets.labels), pick(targets.box_targets), pick(feats))


class RoIHead(nn.Module):
    """RoI extractor + box head + assignment / sampling numbers (module docstring)."""

    def __init__(self, extractor: RoIExtractor, bbox_head: Shared2FCBBoxHead,
                 sampling: AssignSampleConfig = RCNN_SAMPLING) -> None:
        super().__init__()
        self.bbox_roi_extractor = extractor
        self.bbox_head = bbox_head
        self.sampling = sampling

    def sample(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
               gt_labels: Sequence[Tensor]) -> list[Sample]:
        """Per image: proposals [M_i, 4+], gts [G_i, 4], labels [G_i] -> ``Sample`` indexing
        ``[gts; proposals]`` (draws go through ``codetr.rng``, image by image)."""
        cfg, out = self.sampling, []
        for props, gts, labels in zip(proposals, gt_boxes, gt_labels, strict=True):
            props = props[:, :4].detach()
            out.append(assign_and_sample(props, gts, cfg, gt_labels=labels))
        return out

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> RoIForward:
        """feats per level [B, C, H_l, W_l] (extra levels ignored), rois [N, 5] -> ``RoIForward``."""
        roi_feats = self.bbox_roi_extractor(feats, rois)  # [N, C, S, S]
        cls_score, bbox_pred = self.bbox_head(roi_feats)
        return RoIForward(rois, cls_score, bbox_pred, roi_feats)

    def loss(self, feats: Sequence[Tensor], proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
             gt_labels: Sequence[Tensor]) -> RoITrainOutput:
        """Training step of the head: sample, pool, classify, losses and ``pos_coords``."""
        samples = self.sample(proposals, gt_boxes, gt_labels)
        rois = boxes_to_rois([torch.cat([s.pos_boxes, s.neg_boxes]) for s in samples]).to(feats[0].device)
        fwd = self(feats, rois)
        targets = self.bbox_head.targets(samples)
        losses = self.bbox_head.loss(fwd.cls_score, fwd.bbox_pred, rois, targets)
        return RoITrainOutput(losses, pos_coords_from(fwd, targets, len(samples)), samples, fwd, targets)

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], proposals: Sequence[Tensor], img_shapes: Sequence[Sequence[int]],
                scale_factors: Sequence[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per image (dets [M, 5] xyxy + score, labels [M]) from proposals [M_i, 4+] in input
        pixels; boxes clipped to ``img_shapes`` (h, w[, c]), divided by ``scale_factors``
        (w, h, w, h) when given."""
        rois = boxes_to_rois(proposals).to(feats[0].device)
        fwd = self(feats, rois)
        sizes = [len(p) for p in proposals]
        parts = zip(rois.split(sizes), fwd.cls_score.split(sizes), fwd.bbox_pred.split(sizes))
        return [self.bbox_head.detections(r, c, d, img_shapes[i], None if scale_factors is None else scale_factors[i])
                for i, (r, c, d) in enumerate(parts)]


# -- official configuration and weights ---------------------------------------------------

def box_loss_from_mmdet(head: dict, rcnn_train: dict | None) -> BoxLossConfig:
    """The loss of an mmdet ``bbox_head`` entry (softmax CE + L1 on deltas, or GIoU on decoded
    boxes) and ``train_cfg.rcnn.pos_weight`` (None: test only)."""
    cls, box = head["loss_cls"], head["loss_bbox"]
    if cls["type"] != "CrossEntropyLoss" or cls.get("use_sigmoid", False):
        raise ValueError(f"only the softmax CrossEntropyLoss classifier is implemented, not {cls}")
    kinds = {"GIoULoss": "giou", "L1Loss": "l1"}
    if box["type"] not in kinds or (kinds[box["type"]] == "giou") != bool(head.get("reg_decoded_bbox", False)):
        raise ValueError(f"box loss {box['type']} with reg_decoded_bbox={head.get('reg_decoded_bbox')} is not implemented")
    pos_weight = -1.0 if rcnn_train is None else float(rcnn_train.get("pos_weight", -1))
    return BoxLossConfig(cls.get("loss_weight", 1.0), box.get("loss_weight", 1.0), kinds[box["type"]], pos_weight)


def extractor_from_mmdet(ext: dict) -> RoIExtractor:
    """An mmdet ``bbox_roi_extractor`` entry (``SingleRoIExtractor`` + aligned ``RoIAlign``)."""
    layer = ext["roi_layer"]
    if ext["type"] != "SingleRoIExtractor" or layer["type"] != "RoIAlign" or not layer.get("aligned", True):
        raise ValueError("only SingleRoIExtractor with aligned RoIAlign is implemented")
    return RoIExtractor(ext["featmap_strides"], layer["output_size"], ext.get("finest_scale", 56),
                        layer.get("sampling_ratio", 0))


def roi_test_from_mmdet(rcnn_test: dict) -> RoITestConfig:
    """mmdet ``test_cfg.rcnn`` (plain NMS only)."""
    if rcnn_test["nms"]["type"] != "nms":
        raise ValueError(f"only plain NMS is implemented for the RoI head test, not {rcnn_test['nms']['type']!r}")
    return RoITestConfig(rcnn_test["score_thr"], rcnn_test["nms"]["iou_threshold"], rcnn_test["max_per_img"])


def roi_head_from_mmdet(roi_cfg: dict, rcnn_train: dict | None, rcnn_test: dict) -> RoIHead:
    """Build from an mmdet ``roi_head`` entry (``bbox_roi_extractor``, ``bbox_head``), its
    ``train_cfg.rcnn`` (None: test only) and ``test_cfg.rcnn``, every number read from them."""
    head = roi_cfg["bbox_head"]
    if head["type"] != "Shared2FCBBoxHead":
        raise ValueError(f"only Shared2FCBBoxHead is implemented, not {head['type']}")
    coder = head.get("bbox_coder", {})
    box_head = Shared2FCBBoxHead(head["in_channels"], head["num_classes"], head.get("roi_feat_size", 7),
                                 head.get("fc_out_channels", 1024), head.get("reg_class_agnostic", False),
                                 coder.get("target_means", (0.0,) * 4), coder.get("target_stds", (0.1, 0.1, 0.2, 0.2)),
                                 box_loss_from_mmdet(head, rcnn_train), roi_test_from_mmdet(rcnn_test))
    sampling = RCNN_SAMPLING if rcnn_train is None else AssignSampleConfig.from_mmdet(rcnn_train)
    return RoIHead(extractor_from_mmdet(roi_cfg["bbox_roi_extractor"]), box_head, sampling)


def load_official_weights(head: RoIHead, state_dict: dict[str, Tensor], prefix: str = "roi_head.0.") -> None:
    """Strict load of mmdet's ``roi_head.<i>.bbox_head.*`` keys (the names match ours)."""
    mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    head.load_state_dict(mine, strict=True)
