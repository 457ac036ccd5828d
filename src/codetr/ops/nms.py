"""Non-maximum suppression with mmcv 1.5.0 / mmdet 2.25.3 semantics.

* ``nms``: greedy NMS (a box is dropped when its IoU with a kept, higher-scored box is
  ``> iou_threshold``) visiting boxes in the order of ``scores.sort(descending=True)`` (mmcv's
  order; torchvision's own sort is stable and may order ties differently), torchvision's kernel.
* ``soft_nms``: Soft-NMS (Bodla et al. 2017): repeatedly take the highest remaining score, decay
  every other remaining score by ``1 - IoU`` (linear, when ``IoU >= iou_threshold``), to 0
  (naive) or by ``exp(-IoU^2 / sigma)`` (gaussian), and drop boxes whose score falls below
  ``min_score``. Float32 on the CPU; the bookkeeping reproduces mmcv's ``softnms_cpu`` order:
  the selected box swaps with the head of the remaining list, dropped boxes are replaced by the
  last remaining ones, and ties go to the earliest position.
* ``batched_nms``: NMS within each ``idxs`` group. Below ``split_thr`` boxes: one NMS on boxes
  shifted by ``idx * (max coordinate + 1)``; otherwise one NMS per group, then all kept boxes
  sorted by their (possibly decayed) score and cut to ``max_num``.
* ``multiclass_nms``: mmdet's per-class post-processing on ``[N, K+1]`` scores;
  ``detections_per_class`` splits its output by class (mmdet ``bbox2result``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms as _tv_nms

_SOFT_METHODS = {"naive": 0, "linear": 1, "gaussian": 2}


def _with_scores(boxes: Tensor, scores: Tensor) -> Tensor:
    """[N, 4], [N] -> [N, 5] (x1, y1, x2, y2, score)."""
    return torch.cat([boxes, scores[:, None]], dim=1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0,
        score_threshold: float = 0.0, max_num: int = -1) -> tuple[Tensor, Tensor]:
    """boxes [N, 4] xyxy, scores [N] -> (dets [M, 5], keep [M]) in descending score order.
    ``score_threshold > 0`` first drops scores ``<= score_threshold``; ``max_num > 0`` cuts."""
    if offset != 0:
        raise NotImplementedError("nms with offset=1 (legacy +1 box sizes) is not supported")
    candidates = torch.arange(len(scores), device=scores.device)
    if score_threshold > 0:
        candidates = torch.nonzero(scores > score_threshold).reshape(-1)
    order = candidates[scores[candidates].sort(descending=True).indices]  # mmcv's visit order
    keep = order[_tv_nms(boxes[order].float(), scores[order].float(), float(iou_threshold))]
    if max_num > 0:
        keep = keep[:max_num]
    return _with_scores(boxes[keep], scores[keep]), keep


def _decay(overlap: Tensor, method: int, iou_threshold: float, sigma: float) -> Tensor:
    """Soft-NMS score multiplier for IoUs with the selected box, [R] -> [R]."""
    if method == 2:
        return torch.exp(-(overlap * overlap) / sigma)
    hit = overlap >= iou_threshold
    return torch.where(hit, 1 - overlap if method == 1 else torch.zeros_like(overlap), torch.ones_like(overlap))


def _refill(rest: Tensor, alive: Tensor) -> Tensor:
    """Remaining slots after drops: each dropped slot, front to back, takes the last surviving
    entry from the back (mmcv's swap-with-last). rest [R], alive [R] bool -> [sum(alive)]."""
    m = int(alive.sum())
    front, back = rest[:m].clone(), rest[m:]
    holes = torch.nonzero(~alive[:m]).reshape(-1)  # ascending
    movers = back[alive[m:]].flip(0)  # survivors beyond m, last first; len == len(holes)
    front[holes] = movers
    return front


def _soft_iou(top: Tensor, boxes: Tensor, area_top: Tensor, areas: Tensor, offset: int) -> Tensor:
    """IoU of one box [4] with boxes [R, 4] in float32, mmcv's operation order."""
    lo = torch.maximum(boxes[:, :2], top[:2])
    hi = torch.minimum(boxes[:, 2:], top[2:])
    wh = (hi - lo + offset).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area_top + areas - inter)


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             min_score: float = 1e-3, method: str = "linear", offset: int = 0) -> tuple[Tensor, Tensor]:
    """boxes [N, 4], scores [N] -> (dets [M, 5] with decayed scores, inds [M]) in selection
    order (module docstring)."""
    kind = _SOFT_METHODS[method]
    b = boxes.detach().float().cpu()
    s = scores.detach().float().cpu().clone()
    areas = (b[:, 2] - b[:, 0] + offset) * (b[:, 3] - b[:, 1] + offset)
    slots = torch.arange(len(b))  # slot -> box; slots[:live] are still in play
    picked: list[float] = []
    live, i = len(b), 0
    while i < live:
        head = i + int(torch.argmax(s[slots[i:live]]))  # first of equal maxima
        slots[[i, head]] = slots[[head, i]]
        top, rest = int(slots[i]), slots[i + 1:live]
        picked.append(float(s[top]))
        overlap = _soft_iou(b[top], b[rest], areas[top], areas[rest], offset)
        s[rest] = s[rest] * _decay(overlap, kind, iou_threshold, sigma)
        survivors = _refill(rest, s[rest] >= min_score)
        slots[i + 1:i + 1 + len(survivors)] = survivors
        live, i = i + 1 + len(survivors), i + 1
    keep = slots[:live]
    dets = _with_scores(b[keep], torch.tensor(picked, dtype=torch.float32))
    return dets.to(boxes.device), keep.to(boxes.device)


_NMS_OPS = {"nms": nms, "soft_nms": soft_nms}


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, nms_cfg: dict | None,
                class_agnostic: bool = False) -> tuple[Tensor, Tensor]:
    """boxes [N, 4], scores [N], idxs [N] (groups) -> (dets [M, 5], keep [M]).
    ``nms_cfg``: ``type`` ('nms' | 'soft_nms'), that op's arguments, ``split_thr`` (10000),
    ``max_num``, ``class_agnostic``; None sorts by score without suppression."""
    if nms_cfg is None:
        order = scores.sort(descending=True).indices
        return _with_scores(boxes[order], scores[order]), order
    cfg = dict(nms_cfg)
    class_agnostic = cfg.pop("class_agnostic", class_agnostic)
    op = _NMS_OPS[cfg.pop("type", "nms")]
    split_thr = cfg.pop("split_thr", 10000)
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5), idxs.new_zeros(0, dtype=torch.long)
    shifted = boxes
    if not class_agnostic:
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        shifted = boxes + offsets[:, None]
    if len(shifted) < split_thr:
        dets, keep = op(shifted, scores, **cfg)
        return _with_scores(boxes[keep], dets[:, -1]), keep
    return _split_nms(op, boxes, shifted, scores, idxs, cfg)


def _split_nms(op, boxes: Tensor, shifted: Tensor, scores: Tensor, idxs: Tensor, cfg: dict) -> tuple[Tensor, Tensor]:
    """``batched_nms`` above ``split_thr``: one call per group, then a global score sort."""
    max_num = cfg.pop("max_num", -1)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    new_scores = torch.zeros_like(scores)
    for group in torch.unique(idxs):
        members = torch.nonzero(idxs == group).reshape(-1)
        dets, keep = op(shifted[members], scores[members], **cfg)
        kept[members[keep]] = True
        new_scores[members[keep]] = dets[:, -1]
    keep = torch.nonzero(kept).reshape(-1)
    ranked, order = new_scores[keep].sort(descending=True)
    keep = keep[order]
    if max_num > 0:
        keep, ranked = keep[:max_num], ranked[:max_num]
    return _with_scores(boxes[keep], ranked), keep


def multiclass_nms(multi_bboxes: Tensor, multi_scores: Tensor, score_thr: float, nms_cfg: dict,
                   max_num: int = -1, score_factors: Tensor | None = None,
                   return_inds: bool = False) -> tuple[Tensor, ...]:
    """mmdet's per-class NMS. multi_bboxes [N, 4] (shared) or [N, 4K] (per class),
    multi_scores [N, K+1] (last column background), score_factors [N] -> (dets [M, 5],
    labels [M][, inds [M] into the flattened N x K candidates]). Candidates need
    ``score > score_thr`` BEFORE the factors multiply the scores."""
    n, k = multi_scores.shape[0], multi_scores.shape[1] - 1
    if multi_bboxes.shape[1] > 4:
        boxes = multi_bboxes.reshape(n, -1, 4)
    else:
        boxes = multi_bboxes[:, None].expand(n, k, 4)
    scores = multi_scores[:, :-1]
    labels = torch.arange(k, device=scores.device).view(1, -1).expand_as(scores).reshape(-1)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)  # [N*K, 4], [N*K]
    valid = scores > score_thr
    if score_factors is not None:
        scores = scores * score_factors.view(-1, 1).expand(n, k).reshape(-1)
    inds = torch.nonzero(valid).reshape(-1)
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    if boxes.numel() == 0:
        dets = _with_scores(boxes, scores)
        return (dets, labels, inds) if return_inds else (dets, labels)
    dets, keep = batched_nms(boxes, scores, labels, nms_cfg)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return (dets, labels[keep], inds[keep]) if return_inds else (dets, labels[keep])


def detections_per_class(dets: Tensor, labels: Tensor, num_classes: int) -> list[Tensor]:
    """mmdet ``bbox2result``: dets [M, 5], labels [M] -> K tensors [M_k, 5], rows in input order."""
    return [dets[labels == k] for k in range(num_classes)]
