"""One skeleton for dense detectors (FCOS, DeFCN, ATSS), each family giving it its parts.

    images -> backbone (C3..C5) -> FPN (P3..) -> head: per-level maps, one prediction per prior
    train: priors -> criterion (assignment + losses) -> ``LossOutput.weigh``
    test:  per image and level: class probabilities -> ``rank`` scores -> the best
           ``topk_candidates`` above ``score_threshold`` -> decode their boxes from their priors
           -> ``final`` scores; then class-aware NMS (optional) and the ``detections_per_image`` best

The parts a family gives (``DenseParts``): the head (a module returning per-level maps under
the family's official names, ``OutputNames``), the prior generator (points or anchors per
level), the box decoder (ltrb distances or delta-xywh), the criterion (``weight_dict`` +
``__call__``) and the score composition (``ScoreComposition``). Maps hold ``A`` priors per
location: ``[B, A*C, H, W]``, prior index ``(y * W + x) * A + a`` (points: A = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..detector import Detector, InputSpec, LossOutput
from ..ops.nms import batched_nms
from ..structures import ClassInfo, Detections, Target

# (feature map sizes [(H_l, W_l)], device) -> per-level priors [R_l, 2] points or [R_l, 4] anchors
PriorGenerator = Callable[[list[tuple[int, int]], torch.device], list[Tensor]]
# (priors [M, 2 | 4], box predictions [M, 4], image (h, w)) -> boxes [M, 4] xyxy in input pixels
BoxDecoder = Callable[[Tensor, Tensor, tuple[int, int]], Tensor]
# (scores [...], quality probabilities [...] broadcastable, or None) -> scores [...]
ScoreRule = Callable[[Tensor, Tensor | None], Tensor]


def class_only(prob: Tensor, quality: Tensor | None) -> Tensor:
    return prob


def times_quality(prob: Tensor, quality: Tensor | None) -> Tensor:
    return prob * quality


def geometric_mean(prob: Tensor, quality: Tensor | None) -> Tensor:
    return torch.sqrt(prob * quality)


class ScoreComposition(NamedTuple):
    """``rank``: class probabilities [R, K] and quality probabilities [R, 1] -> the scores that
    are thresholded and ranked; ``final``: the kept scores [M] and their priors' quality [M] ->
    the detection scores. DeFCN: (times_quality, class_only); FCOS: (class_only, geometric_mean);
    ATSS: (class_only, times_quality); no quality branch: (class_only, class_only)."""

    rank: ScoreRule
    final: ScoreRule


class OutputNames(NamedTuple):
    """The official names of the head's per-level maps: class logits [B, A*K, H, W], box
    predictions [B, A*4, H, W], quality logits [B, A, H, W] (None: no quality branch)."""

    cls: str
    box: str
    quality: str | None


@dataclass(frozen=True)
class DenseTestConfig:
    score_threshold: float
    topk_candidates: int                  # per level
    nms_threshold: float | None           # class-aware NMS IoU; None: no NMS
    detections_per_image: int


@dataclass
class DenseParts:
    """What a family gives ``DenseDetector`` besides backbone and neck (module docstring)."""

    head: nn.Module
    names: OutputNames
    priors: PriorGenerator
    decode: BoxDecoder
    criterion: Any                        # weight_dict + __call__(*DenseDetector.loss_inputs(...))
    scores: ScoreComposition
    test: DenseTestConfig
    clip_to_original: bool = False        # cvpods: final boxes clipped to the original image, empty ones dropped


def per_prior(maps: Tensor, channels: int) -> Tensor:
    """[B, A*C, H, W] -> [B, H*W*A, C], prior-major as the anchors: (y * W + x) * A + a."""
    return maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1, channels)


def top_candidates(scores: Tensor, k: int, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """scores [R, K] -> the ``k`` best (prior, class) pairs scoring over ``threshold``, best
    first: (scores [M], prior indices [M], labels [M]) (mmdet ``filter_scores_and_topk``)."""
    over = scores > threshold
    pairs = over.nonzero()  # [V, 2] (prior, class), row-major
    ranked, order = scores[over].sort(descending=True)
    keep = pairs[order[:k]]
    return ranked[:k], keep[:, 0], keep[:, 1]


def keep_top(boxes: Tensor, scores: Tensor, labels: Tensor, nms_threshold: float | None,
             max_num: int) -> tuple[Tensor, Tensor, Tensor]:
    """Class-aware NMS (None: none) over boxes [N, 4], scores [N], labels [N], then the
    ``max_num`` best, best first (mmcv ``batched_nms`` order)."""
    nms_cfg = None if nms_threshold is None else {"type": "nms", "iou_threshold": nms_threshold}
    dets, keep = batched_nms(boxes, scores, labels, nms_cfg)
    keep = keep[:max_num]
    return dets[:max_num, :4], dets[:max_num, 4], labels[keep]


class DenseDetector(Detector):
    """Backbone + neck + the family's ``DenseParts``; see the module docstring. Registers its
    modules as ``backbone``, ``fpn``, ``head`` (the weight names of every dense checkpoint)."""

    def __init__(self, config: Any, classes: ClassInfo | None, input_spec: InputSpec, backbone: nn.Module,
                 fpn: nn.Module, parts: DenseParts) -> None:
        """``config``: the family's config dataclass (``num_classes``); ``classes`` None: anonymous."""
        super().__init__(classes or ClassInfo.anonymous(config.num_classes), input_spec)
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{len(self.classes)} classes given for num_classes={config.num_classes}")
        self.config = config
        self.backbone, self.fpn, self.head = backbone, fpn, parts.head
        self.names, self.prior_generator, self.decode = parts.names, parts.priors, parts.decode
        self.criterion, self.scores, self.test_config = parts.criterion, parts.scores, parts.test
        self.clip_to_original = parts.clip_to_original

    # -- forward ---------------------------------------------------------------------------
    @property
    def pad_divisor(self) -> int:
        return self.backbone.strides[-1]

    def features(self, images: Tensor) -> list[Tensor]:
        """P maps of ``images`` zero-padded at bottom/right to a multiple of the largest
        backbone stride (as cvpods' ImageList, mmdet's ``Pad(size_divisor=32)``)."""
        div = self.pad_divisor
        pad_h, pad_w = -images.shape[-2] % div, -images.shape[-1] % div
        if pad_h or pad_w:
            images = nn.functional.pad(images, (0, pad_w, 0, pad_h))
        return self.fpn(self.backbone(images))

    def head_outputs(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        """The head's per-level maps under ``names`` (a family whose head returns another
        type converts it here)."""
        return self.head(feats)

    def priors(self, outputs: dict[str, list[Tensor]]) -> list[Tensor]:
        """Per-level priors of the maps in ``outputs``."""
        maps = outputs[self.names.cls]
        return self.prior_generator([tuple(x.shape[-2:]) for x in maps], maps[0].device)

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        """Train: the weighted losses and logs (crowd boxes ignored). Eval: the head's raw
        per-level maps under their official names (``names``)."""
        outputs = self.head_outputs(self.features(images))
        if not self.training:
            return outputs
        if targets is None:
            raise ValueError(f"{type(self).__name__} in train mode needs targets")
        inputs = self.loss_inputs(outputs, self.priors(outputs), [t.non_crowd() for t in targets], sizes)
        return LossOutput.weigh(self.float32_loss(self.criterion, *inputs), self.criterion.weight_dict)

    def loss_inputs(self, outputs: dict[str, list[Tensor]], priors: list[Tensor], targets: list[Target],
                    sizes: Tensor) -> tuple:
        """The criterion's arguments: cls [B, R, K], box [B, R, 4], quality [B, R, 1] or None
        (levels concatenated), per-level priors and the targets."""
        flat = lambda key, c: torch.cat([per_prior(x, c) for x in outputs[key]], 1)  # noqa: E731
        quality = flat(self.names.quality, 1) if self.names.quality else None
        return flat(self.names.cls, self.num_classes), flat(self.names.box, 4), quality, priors, targets

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Raw maps -> detections per image in its input frame (module docstring)."""
        priors = self.priors(outputs)
        quality = outputs[self.names.quality] if self.names.quality else [None] * len(priors)
        results = []
        for i, hw in enumerate(sizes.tolist()):
            levels = [self._level_candidates(cls[i], box[i], q[i] if q is not None else None, p, tuple(hw))
                      for cls, box, q, p in zip(outputs[self.names.cls], outputs[self.names.box], quality, priors)]
            boxes, scores, labels = (torch.cat(x) for x in zip(*levels))
            t = self.test_config
            results.append(Detections(*keep_top(boxes, scores, labels, t.nms_threshold, t.detections_per_image)))
        return results

    def _level_candidates(self, cls: Tensor, box: Tensor, quality: Tensor | None, priors: Tensor,
                          hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """One level of one image: cls [A*K, H, W], box [A*4, H, W], quality [A, H, W] ->
        candidate boxes [M, 4], scores [M], labels [M]."""
        prob = per_prior(cls[None], self.num_classes)[0].sigmoid()  # [R, K]
        q = per_prior(quality[None], 1)[0].sigmoid() if quality is not None else None  # [R, 1]
        t = self.test_config
        scores, idx, labels = top_candidates(self.scores.rank(prob, q), t.topk_candidates, t.score_threshold)
        boxes = self.decode(priors[idx], per_prior(box[None], 4)[0][idx], hw)
        return boxes, self.scores.final(scores, q[idx, 0] if q is not None else None), labels

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: Tensor, orig_sizes: Sequence[tuple[int, int]],
               amp: torch.dtype | None = None) -> list[Detections]:
        """As ``Detector.detect``; with ``clip_to_original`` then clipped to the original image
        and boxes with a side <= 0 dropped (cvpods' ``detector_postprocess``)."""
        dets = super().detect(images, sizes, orig_sizes, amp)
        return [clip_and_drop_empty(d, hw) for d, hw in zip(dets, orig_sizes)] if self.clip_to_original else dets


def clip_and_drop_empty(det: Detections, hw: tuple[int, int]) -> Detections:
    h, w = hw
    boxes = torch.stack([det.boxes[:, 0].clamp(0, w), det.boxes[:, 1].clamp(0, h),
                         det.boxes[:, 2].clamp(0, w), det.boxes[:, 3].clamp(0, h)], dim=1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[keep], det.scores[keep], det.labels[keep])


def check_fpn_strides(owner: str, strides: Sequence[int]) -> None:
    """The levels are C3-C5 and one extra FPN level per further stride: 8, 16, 32, 64, ..."""
    if len(strides) < 3 or list(strides) != [8 * 2 ** i for i in range(len(strides))]:
        raise ValueError(f"{owner}.strides must be [8, 16, 32, ...] (C3-C5, then one per extra FPN level), "
                         f"got {list(strides)}")


def pad_shapes(sizes: Tensor, divisor: int) -> list[tuple[int, int]]:
    """[B, 2] valid (h, w) -> each rounded up to a multiple of ``divisor`` (mmdet's per-image
    ``pad_shape``, which bounds the valid anchors)."""
    return [(math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor) for h, w in sizes.tolist()]
