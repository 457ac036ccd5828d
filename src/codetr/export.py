"""ONNX export (``codetr export CKPT OUT.onnx``) and running the exported graph (``OnnxDetector``).

The graph (TorchScript exporter, ``torch.onnx.export(dynamo=False)``, opset 16-20, default 17)
takes the network input of ``Detector.prepare``:

* ``images`` float32 [B, 3, H, W]: each image resized by the model's ``InputSpec`` (shorter side
  to ``min_size``, longer capped at ``max_size``; YOLACT: a ``max_size`` square), channels in
  ``channel_order``, divided by 255 unless ``scale_255``, then ``(x - mean) / std``
  (``InputSpec.normalize``), zero-padded at bottom / right to the largest image of the batch,
  rounded up to ``size_divisibility`` (``pad_images``). The spec is stored in the file's
  metadata (``codetr`` key, JSON, with the family, model config and classes);
* ``sizes`` int64 [B, 2]: each image's valid (h, w) before padding; an input of the graphs that
  read it (DETRs, ATSS, Faster R-CNN), not of FCOS, DeFCN and YOLACT.

and returns the network's decoded predictions before top-k / NMS, per family:

* DETRs (``deformable_detr``, ``dino``, ``co_detr`` with ``eval_module='detr'``): ``logits``
  [B, Q, K] (sigmoid -> scores), ``boxes`` [B, Q, 4] (cx, cy, w, h) relative to each image's
  valid size (last decoder layer);
* dense (``fcos``, ``defcn``, ``atss``): over the R priors (points / anchors) of all levels,
  level by level (the input padded to the coarsest backbone stride in the graph):
  ``scores`` [B, R, K] the score that is thresholded and ranked (DeFCN sigmoid(cls) *
  sigmoid(filter), else sigmoid(cls)), ``quality`` [B, R, 1] (sigmoid of the centre-ness /
  filter branch; 1 without one), ``boxes`` [B, R, 4] xyxy input pixels (ATSS: clipped to the
  image), ``levels`` [R] int64 each prior's pyramid level (the top-k is per level). A
  detection's score: FCOS sqrt(score * quality), ATSS score * quality, DeFCN score;
* ``yolact``: ``scores`` [B, P, C] foreground softmax, ``boxes`` [B, P, 4] relative xyxy,
  ``coeffs`` [B, P, k] mask coefficients, ``proto`` [B, h, w, k] prototypes (mask =
  sigmoid(proto @ coeffs));
* ``faster_rcnn``: the RPN's proposals, NMS included (ONNX NonMaxSuppression), then the RoI head:
  ``rois`` [N, 5] (image index, xyxy), ``scores`` [N, K + 1] softmax (column K: background),
  ``boxes`` [N, 4K] per-class xyxy clipped to the image. One image per call (the proposals are
  selected per image in the graph).

The per-image selection (top-k, thresholds, NMS, masks) stays outside the graph: ``postprocess``
turns the outputs into the detections ``model.postprocess`` gives (with the original sizes: the
ones ``model.predict`` gives), and ``OnnxDetector(path).predict(images)`` does the whole way in
onnxruntime. Dynamic axes (``dynamic=True``): batch, height and width, except YOLACT (its priors
are made for the ``max_size`` square: batch only) and Faster R-CNN (height and width only).
Before the file is written, onnxruntime runs the graph on the traced example batch and, when its
size is dynamic, on one image of the transposed size; a graph that computes something else there
(a size frozen by the trace) is refused.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from .coders import delta_xywh_decode, ssd_decode
from .config import from_dict
from .dense.atss_detector import AnchorDecoder
from .dense.base import clip_and_drop_empty, keep_top, per_prior, top_candidates
from .detector import Detector, InputSpec, rescale
from .engine.checkpoint import atomic_open
from .images import ImageLike
from .ops.nms import multiclass_nms
from .rcnn.roi_extractor import roi_levels
from .registry import get_family
from .structures import ClassInfo, Detections
from .yolact.fast_nms import NMSResult, cross_class_fast_nms, fast_nms

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 16, 20, 17  # GridSample / RoiAlign(half_pixel): 16; TorchScript exporter: <= 20
METADATA_KEY = "codetr"
# a graph is refused when more than MAX_WRONG_FRACTION of an output's values differ from PyTorch by
# more than MAX_EXPORT_ERROR (a size frozen by the trace); fewer can be near-equal scores whose
# order rounding flips (a top-k inside the graph picking another query)
MAX_EXPORT_ERROR, MAX_WRONG_FRACTION = 1e-2, 0.01
EXPORT_PACKAGES = ("onnx", "onnxruntime")
DETR_FAMILIES = ("deformable_detr", "dino", "co_detr")
DENSE_FAMILIES = ("fcos", "defcn", "atss")

Outputs = tuple[Tensor, ...]


# -- the graph of each family ---------------------------------------------------------------

def _detr_graph(model: Detector, images: Tensor, sizes: Tensor) -> Outputs:
    out = model(images, sizes)
    if model.family == "co_detr":
        return out["all_cls_scores"][-1], out["all_bbox_preds"][-1]
    return out["pred_logits"], out["pred_boxes"]


def _dense_graph(model: Detector, images: Tensor, sizes: Tensor) -> Outputs:
    """Padded to the coarsest backbone stride here (a traced pad: ``features`` pads only when
    the example input needs it), the head's maps flattened over the priors and decoded."""
    div = model.pad_divisor
    padded = F.pad(images, (0, -images.shape[-1] % div, 0, -images.shape[-2] % div))
    outputs = model.head_outputs(model.features(padded))
    flat = lambda key, c: torch.cat([per_prior(x, c) for x in outputs[key]], 1)  # noqa: E731
    levels = torch.cat([torch.full_like(per_prior(x, 4)[0, :, 0], lvl, dtype=torch.long)
                        for lvl, x in enumerate(outputs[model.names.box])])
    quality = flat(model.names.quality, 1).sigmoid() if model.names.quality else None
    scores = model.scores.rank(flat(model.names.cls, model.num_classes).sigmoid(), quality)
    deltas = flat(model.names.box, 4)
    batch = deltas.shape[0]
    priors = torch.cat(model.priors(outputs)).repeat(batch, 1)
    boxes = model.decode(priors, deltas.reshape(-1, 4), None).reshape(batch, -1, 4)
    if isinstance(model.decode, AnchorDecoder):  # ATSS clips to each image, as its postprocess
        boxes = clip_to_image(boxes, sizes[:, None])
    return scores, torch.ones_like(scores[..., :1]) if quality is None else quality, boxes, levels


def _yolact_graph(model: Detector, images: Tensor, sizes: Tensor) -> Outputs:
    out = model(images, sizes)
    return out["conf"][..., 1:], ssd_decode(out["loc"], out["priors"]), out["mask"], out["proto"]


def _faster_rcnn_graph(model: Detector, images: Tensor, sizes: Tensor) -> Outputs:
    """One image: RPN proposals (``rpn_proposals`` written for tracing), RoI features, box head."""
    feats = model.fpn(model.backbone(images))
    cls_maps, reg_maps = model.rpn_head(feats)
    proposals = _proposals(model, cls_maps, reg_maps, sizes[0])
    rois = torch.cat([torch.zeros_like(proposals[:, :1]), proposals[:, :4]], 1)
    cls_score, bbox_pred = model.roi_head.bbox_head(_roi_features(model.roi_head.bbox_roi_extractor, feats, rois))
    head = model.roi_head.bbox_head
    boxes = delta_xywh_decode(rois[:, 1:], bbox_pred.float(), head.means, head.stds)
    return rois, F.softmax(cls_score.float(), dim=-1), clip_to_image(boxes, sizes[0])


def clip_to_image(boxes: Tensor, size: Tensor) -> Tensor:
    """xyxy boxes [..., 4k] clamped to [0, w] x [0, h]; ``size`` (h, w) broadcast to the boxes'
    leading dimensions (as ``delta_xywh_decode``'s ``max_shape``, from a tensor)."""
    h, w = size.to(boxes.dtype).unbind(-1)
    upper = torch.stack([w, h, w, h], -1)
    shape = boxes.shape
    clipped = torch.minimum(boxes.reshape(*shape[:-1], -1, 4).clamp(min=0), upper[..., None, :])
    return clipped.reshape(shape)


def _proposals(model: Detector, cls_maps: list[Tensor], reg_maps: list[Tensor], size: Tensor) -> Tensor:
    """``rpn_proposals`` of image 0 written for tracing (no Python branch or length): per level
    the ``nms_pre`` best (a slice, which ONNX clamps to the level's size), decoded, clipped to
    ``size``, the small boxes dropped, NMS per level (``batched_nms``), the best ``max_per_img``
    -> [M, 5] (x1, y1, x2, y2, score)."""
    head, cfg = model.rpn_head, model.config.rpn_test_proposals
    picked = []
    for level, (c, r, anchors) in enumerate(zip(cls_maps, reg_maps, head.grid(cls_maps))):
        ranked, order = c[0].float().permute(1, 2, 0).reshape(-1).sigmoid().sort(descending=True)
        order = order[:cfg.nms_pre]
        deltas = r[0].float().permute(1, 2, 0).reshape(-1, 4)[order]
        picked.append((ranked[:cfg.nms_pre], deltas, anchors[order], torch.full_like(order, level)))
    scores, deltas, anchors, levels = (torch.cat(x) for x in zip(*picked))
    boxes = clip_to_image(delta_xywh_decode(anchors, deltas, head.means, head.stds), size)
    big = ((boxes[:, 2:] - boxes[:, :2]) > cfg.min_bbox_size).all(dim=1)
    boxes, scores, levels = boxes[big], scores[big], levels[big]
    shifted = boxes + (levels.to(boxes) * (boxes.max() + 1))[:, None]  # ``batched_nms``: NMS within each level
    order = scores.sort(descending=True).indices                        # mmcv's visit order
    keep = order[nms(shifted[order], scores[order], cfg.iou_threshold)][:cfg.max_per_img]
    return torch.cat([boxes[keep], scores[keep, None]], 1)


def _roi_features(extractor: nn.Module, feats: list[Tensor], rois: Tensor) -> Tensor:
    """``RoIExtractor`` without data-dependent shapes: every RoI pooled on every level, each
    keeping its own level's features (the same values)."""
    levels = roi_levels(rois, extractor.finest_scale, extractor.num_inputs)[:, None, None, None]
    out = None
    for lvl, (feat, stride) in enumerate(zip(feats, extractor.strides)):
        pooled = roi_align(feat.float(), rois.float(), extractor.output_size, spatial_scale=1.0 / stride,
                           sampling_ratio=extractor.sampling_ratio, aligned=True)
        out = pooled if out is None else torch.where(levels == lvl, pooled, out)
    return out


@dataclass(frozen=True)
class GraphSpec:
    """A family's graph: ``forward(model, images, sizes)``, its outputs with their dynamic axes
    and whether batch and image size may vary."""

    forward: Callable[[Detector, Tensor, Tensor], Outputs]
    outputs: dict[str, dict[int, str]]
    dynamic_batch: bool = True
    dynamic_size: bool = True


_BQ = {0: "batch"}
_PRIORS = {0: "batch", 1: "priors"}
GRAPHS = {
    **{f: GraphSpec(_detr_graph, {"logits": _BQ, "boxes": _BQ}) for f in DETR_FAMILIES},
    **{f: GraphSpec(_dense_graph, {"scores": _PRIORS, "quality": _PRIORS, "boxes": _PRIORS, "levels": {0: "priors"}})
       for f in DENSE_FAMILIES},
    "yolact": GraphSpec(_yolact_graph, {"scores": _BQ, "boxes": _BQ, "coeffs": _BQ, "proto": _BQ}, dynamic_size=False),
    "faster_rcnn": GraphSpec(_faster_rcnn_graph, {"rois": {0: "rois"}, "scores": {0: "rois"}, "boxes": {0: "rois"}},
                             dynamic_batch=False),
}


class ExportGraph(nn.Module):
    """``model`` as the exported function: ``(images, sizes) -> outputs`` (module docstring)."""

    def __init__(self, model: Detector) -> None:
        super().__init__()
        check_exportable(model)
        self.model = model
        self.spec = GRAPHS[model.family]
        self.eval()  # also the model: the exporter restores this module's mode after tracing

    @property
    def output_names(self) -> list[str]:
        return list(self.spec.outputs)

    def forward(self, images: Tensor, sizes: Tensor) -> Outputs:
        return self.spec.forward(self.model, images, sizes)


def check_exportable(model: Detector) -> None:
    if model.family not in GRAPHS:
        raise ValueError(f"no ONNX graph for family {model.family!r}; exportable: {sorted(GRAPHS)}")
    if model.family == "co_detr" and model.config.eval_module != "detr":
        raise ValueError(f"co_detr exports its query head only (eval_module='detr'), this model tests "
                         f"eval_module={model.config.eval_module!r}")


# -- export ---------------------------------------------------------------------------------

def require_packages() -> None:
    """A one-line ValueError with the install command when onnx or onnxruntime is missing."""
    import importlib.util

    missing = [p for p in EXPORT_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"ONNX export needs {' and '.join(missing)}: pip install \"codetr[export]\" "
                         f"(or pip install {' '.join(EXPORT_PACKAGES)})")


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"--opset {opset} is not supported: GridSample and RoiAlign (half-pixel) need opset >= "
                         f"{MIN_OPSET}, torch's TorchScript exporter writes <= {MAX_OPSET}")


def export_size(model: Detector, size: Sequence[int] | None) -> tuple[int, int]:
    """The (H, W) of the example input the graph is traced at (the input size of a static
    graph): ``size``, or the InputSpec's ``min_size`` x ``max_size`` (YOLACT: its square),
    rounded up to ``size_divisibility``."""
    spec = model.input_spec
    if model.family == "yolact":
        square = (spec.max_size, spec.max_size)
        if size is not None and tuple(size) != square:
            raise ValueError(f"--size {size[0]} {size[1]}: YOLACT's graph takes its {square[0]} x {square[1]} input "
                             "(InputSpec.max_size)")
        return square
    h, w = size if size is not None else (spec.min_size, spec.max_size)
    if min(h, w) < 1:
        raise ValueError(f"--size must be two positive numbers (height width), got {h} {w}")
    div = spec.size_divisibility
    return -(-h // div) * div, -(-w // div) * div


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote: the graph's inputs (``sizes`` only where the graph reads it),
    its outputs, and the largest |onnxruntime - PyTorch| of each output on the check inputs."""

    inputs: list[str]
    outputs: list[str]
    max_diff: dict[str, float]


def export_onnx(model: Detector, out: str | Path, opset: int = DEFAULT_OPSET, size: Sequence[int] | None = None,
                dynamic: bool = True) -> ExportResult:
    """Write ``model``'s graph (module docstring) with the codetr metadata to ``out``, atomically,
    once onnxruntime reproduces PyTorch on the example batch and (dynamic size) on one image of
    the transposed size; a graph that does not (sizes frozen in the trace) raises a ValueError
    and writes nothing. ``model`` (on the CPU) is left in the mode it was."""
    require_packages()
    check_opset(opset)
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("ONNX export traces the model on the CPU: pass model.cpu()")
    graph = ExportGraph(model)
    hw = export_size(model, size)
    checks = [example_inputs(model, hw, dynamic)]
    if dynamic and graph.spec.dynamic_size:
        other = (hw[1], hw[0]) if hw[0] != hw[1] else (hw[0], hw[1] + 32)
        checks.append(example_inputs(model, export_size(model, other), dynamic=False))
    buffer = io.BytesIO()
    was_training = model.training
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants
            warnings.simplefilter("ignore", DeprecationWarning)       # the TorchScript exporter's notice
            torch.onnx.export(graph, checks[0], buffer, dynamo=False, opset_version=opset,
                              input_names=["images", "sizes"], output_names=graph.output_names,
                              dynamic_axes=dynamic_axes(graph.spec) if dynamic else None)
        data = with_metadata(buffer.getvalue(), metadata(model, graph, opset, dynamic))
        runner = OnnxDetector(data)
        results = [compare(runner, graph, images, sizes) for images, sizes in checks]
    finally:
        model.train(was_training)
    max_diff = {name: max(r[name][0] for r in results) for name in graph.output_names}
    wrong = {name: max(r[name][1] for r in results) for name in graph.output_names}
    worst = max(wrong, key=wrong.get)
    if wrong[worst] > MAX_WRONG_FRACTION:
        raise ValueError(f"the exported graph's {worst!r} differs from PyTorch (by up to {max_diff[worst]:.3g}) in "
                         f"{wrong[worst]:.0%} of its values on the check inputs {[tuple(c[0].shape) for c in checks]}; "
                         "nothing written (try --static)")
    with atomic_open(out, "wb") as f:
        f.write(data)
    return ExportResult(runner.meta["inputs"], graph.output_names, max_diff)


def example_inputs(model: Detector, size: tuple[int, int], dynamic: bool) -> tuple[Tensor, Tensor]:
    """Random normalised images of ``size`` (two when the batch is dynamic) and their sizes."""
    batch = 2 if dynamic and GRAPHS[model.family].dynamic_batch else 1
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    return images, torch.tensor([size] * batch)


def dynamic_axes(spec: GraphSpec) -> dict[str, dict[int, str]]:
    axes = ({0: "batch"} if spec.dynamic_batch else {}) | ({2: "height", 3: "width"} if spec.dynamic_size else {})
    outputs = {name: {d: a for d, a in dims.items() if spec.dynamic_batch or a != "batch"}
               for name, dims in spec.outputs.items()}
    return {"images": axes, "sizes": {0: "batch"} if spec.dynamic_batch else {}, **outputs}


def metadata(model: Detector, graph: ExportGraph, opset: int, dynamic: bool) -> dict[str, Any]:
    """What rebuilds the model's pre- and post-processing (``model_from_metadata``)."""
    return {"family": model.family, "model_name": getattr(model, "model_name", model.family),
            "model_config": model.config.to_dict(), "classes": model.classes.to_dict(),
            "input_spec": model.input_spec.to_dict(), "outputs": graph.output_names, "opset": opset, "dynamic": dynamic}


def with_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**meta, "inputs": [i.name for i in proto.graph.input]})
    return proto.SerializeToString()


def model_from_metadata(meta: dict[str, Any]) -> Detector:
    """The exported model without weights (on the meta device): its InputSpec, classes and
    post-processing settings."""
    family = get_family(meta["family"])
    config = from_dict(family.config, meta["model_config"])
    with torch.device("meta"):
        return family.model(config, ClassInfo.from_dict(meta["classes"]), from_dict(InputSpec, meta["input_spec"]))


def compare(runner: "OnnxDetector", graph: ExportGraph, images: Tensor,
            sizes: Tensor) -> dict[str, tuple[float, float]]:
    """Per output on one batch: the largest |onnxruntime - PyTorch| and the fraction of values
    further apart than ``MAX_EXPORT_ERROR`` (inf and 1 when the shapes differ). Faster R-CNN's
    RoIs are matched first (nearest box): they come by score, near-equal scores in either order."""
    with torch.no_grad():
        expected = dict(zip(graph.output_names, graph(images, sizes)))
    got = runner(images, sizes)
    if "rois" in got and got["rois"].shape == expected["rois"].shape and len(got["rois"]):
        match = torch.cdist(expected["rois"], got["rois"], p=float("inf")).argmin(1)
        got = {name: x[match] for name, x in got.items()}
    return {name: (max_abs_diff(got[name], ref), wrong_fraction(got[name], ref)) for name, ref in expected.items()}


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """Largest |a - b| (inf when the shapes differ, 0 when empty)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def wrong_fraction(a: Tensor, b: Tensor) -> float:
    """The fraction of values further apart than ``MAX_EXPORT_ERROR`` (1 when the shapes differ)."""
    if a.shape != b.shape:
        return 1.0
    return float(((a.double() - b.double()).abs() > MAX_EXPORT_ERROR).double().mean()) if a.numel() else 0.0


# -- running the graph ----------------------------------------------------------------------

class OnnxDetector:
    """An exported graph in onnxruntime plus its model's pre- and post-processing (from the
    file's metadata): ``predict`` gives what ``model.predict`` gives."""

    def __init__(self, source: str | Path | bytes, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        """``source``: an ONNX file written by ``codetr export``, or its bytes."""
        require_packages()
        import onnxruntime

        if not isinstance(source, bytes) and not Path(source).is_file():
            raise FileNotFoundError(f"ONNX file not found: {str(source)!r}")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # no constant-folding notes
        model = source if isinstance(source, bytes) else str(source)
        self.session = onnxruntime.InferenceSession(model, options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            name = "the graph" if isinstance(source, bytes) else repr(str(source))
            raise ValueError(f"{name} was not written by codetr export (no {METADATA_KEY!r} metadata)")
        self.meta = json.loads(meta)
        self.model = model_from_metadata(self.meta)

    def __call__(self, images: Tensor, sizes: Tensor) -> dict[str, Tensor]:
        """The graph's outputs by name for a prepared batch."""
        feed = {"images": images.float().cpu().numpy(), "sizes": sizes.long().cpu().numpy()}
        feed = {i.name: feed[i.name] for i in self.session.get_inputs()}  # a graph that ignores sizes has no such input
        return {name: torch.from_numpy(x) for name, x in zip(self.meta["outputs"], self.session.run(None, feed))}

    def predict(self, images: Sequence[ImageLike], batch_size: int = 4) -> list[Detections]:
        """Detections in original pixels, one per image (the inputs ``Detector.predict`` takes, as a list)."""
        batch = self.session.get_inputs()[0].shape[0]
        step = batch if isinstance(batch, int) else batch_size  # a graph of a fixed batch size
        out: list[Detections] = []
        for start in range(0, len(images), step):
            prepared, sizes, orig = self.model.prepare(images[start:start + step])
            out += postprocess(self.model, self(prepared, sizes), sizes, orig)
        return out


# -- post-processing ------------------------------------------------------------------------

def postprocess(model: Detector, outputs: dict[str, Tensor], sizes: Tensor,
                orig_sizes: Sequence[tuple[int, int]] | None = None) -> list[Detections]:
    """The graph's ``outputs`` -> the detections of ``model.postprocess`` (each image's input
    frame), or with ``orig_sizes`` those of ``model.detect`` (original pixels, as ``predict``).
    ``model``: the exported model or ``model_from_metadata``."""
    family = model.family
    if family == "yolact":
        frames = orig_sizes or [tuple(s) for s in sizes.tolist()]
        return [model.detections_at(r, p, tuple(hw)) for r, p, hw in
                zip(_yolact_nms(model, outputs), outputs["proto"], frames)]
    if family == "co_detr":  # ``CoDETR.detect``: boxes divided by the resize factors before its NMS
        factors = None if orig_sizes is None else [
            torch.tensor([w / ow, h / oh, w / ow, h / oh]) for (h, w), (oh, ow) in zip(sizes.tolist(), orig_sizes)]
        raw = {"all_cls_scores": outputs["logits"][None], "all_bbox_preds": outputs["boxes"][None]}
        return model.postprocess(raw, sizes, factors)
    dets = _INPUT_FRAME[family](model, outputs, sizes)
    if orig_sizes is None:
        return dets
    dets = [rescale(d, tuple(s.tolist()), o) for d, s, o in zip(dets, sizes, orig_sizes)]
    if getattr(model, "clip_to_original", False):
        dets = [clip_and_drop_empty(d, o) for d, o in zip(dets, orig_sizes)]
    return dets


def _detr_detections(model: Detector, outputs: dict[str, Tensor], sizes: Tensor) -> list[Detections]:
    return model.postprocess({"pred_logits": outputs["logits"], "pred_boxes": outputs["boxes"]}, sizes)


def _dense_detections(model: Detector, outputs: dict[str, Tensor], sizes: Tensor) -> list[Detections]:
    """``DenseDetector.postprocess`` on the flattened outputs: per level the best candidates,
    their final scores, class-aware NMS, the best ``detections_per_image``."""
    t = model.test_config
    counts = torch.bincount(outputs["levels"]).tolist()
    results = []
    for scores, quality, boxes in zip(outputs["scores"], outputs["quality"], outputs["boxes"]):
        levels = []
        for s, q, b in zip(scores.split(counts), quality.split(counts), boxes.split(counts)):
            ranked, idx, labels = top_candidates(s, t.topk_candidates, t.score_threshold)
            levels.append((b[idx], model.scores.final(ranked, q[idx, 0] if model.names.quality else None), labels))
        boxes, scores, labels = (torch.cat(x) for x in zip(*levels))
        results.append(Detections(*keep_top(boxes, scores, labels, t.nms_threshold, t.detections_per_image)))
    return results


def _faster_rcnn_detections(model: Detector, outputs: dict[str, Tensor], sizes: Tensor) -> list[Detections]:
    """``Shared2FCBBoxHead.detections`` per image on the graph's scores and decoded boxes."""
    cfg = model.roi_head.bbox_head.test_cfg
    image = outputs["rois"][:, 0].long()
    results = []
    for i in range(len(sizes)):
        mine = image == i
        dets, labels = multiclass_nms(outputs["boxes"][mine], outputs["scores"][mine], cfg.score_thr,
                                      {"type": "nms", "iou_threshold": cfg.nms_iou}, cfg.max_per_img)
        results.append(Detections(dets[:, :4], dets[:, 4], labels))
    return results


def _yolact_nms(model: Detector, outputs: dict[str, Tensor]) -> list[NMSResult | None]:
    """``Yolact.nms`` on the decoded boxes (decoding is per prior, so the values are the same)."""
    c = model.config
    results: list[NMSResult | None] = []
    for boxes, scores, coeffs in zip(outputs["boxes"], outputs["scores"], outputs["coeffs"]):
        keep = scores.max(1).values > c.conf_threshold
        if not bool(keep.any()):
            results.append(None)
        elif c.cross_class_nms:
            results.append(cross_class_fast_nms(boxes[keep], coeffs[keep], scores[keep].t(), c.nms_threshold, c.top_k))
        else:
            results.append(fast_nms(boxes[keep], coeffs[keep], scores[keep].t(), c.nms_threshold, c.top_k,
                                    c.max_detections))
    return results


_INPUT_FRAME = {"deformable_detr": _detr_detections, "dino": _detr_detections, "faster_rcnn": _faster_rcnn_detections,
                **{f: _dense_detections for f in DENSE_FAMILIES}}
