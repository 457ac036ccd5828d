"""CPU benchmark: codetr ``faster_rcnn_r50_fpn_1x`` against torchvision's
``fasterrcnn_resnet50_fpn``, side by side in one process, random weights, nothing downloaded.

Both models are R50-FPN Faster R-CNN with 80 classes, frozen BatchNorm and a frozen stem +
res2 (mmdet ``frozen_stages=1``; torchvision ``trainable_backbone_layers=3`` with
``FrozenBatchNorm2d``, which is what torchvision builds for pretrained weights). Each runs on
the same ``B x 3 x H x W`` batch (default 1 x 800 x 1333, the 1x schedule's test size), which
neither resizes (torchvision's transform keeps 800 x 1333; both pad to a multiple of 32).

Phases (one warm-up, then ``--iters`` timed repetitions, medians; the order of the two models
alternates from one repetition to the next so that a slow spell hits both):

* ``inference``: eval mode, ``no_grad``, raw image -> detections (codetr: ``model.detect``, the
  path of ``codetr eval`` and ``predict``, which runs NHWC on CPU; torchvision: ``model(images)``,
  which includes its normalisation);
* ``train``: forward + losses on ``--boxes`` random boxes per image + backward + SGD step (codetr
  in the memory format of its recipe's ``train.channels_last``, as ``codetr train``).

Shares of each inference and train step, timed with wall-clock wrappers (forward only):
RoI extraction (codetr ``RoIExtractor.forward``; torchvision ``MultiScaleRoIAlign.forward``) and
NMS (proposal NMS of the RPN, and the per-class NMS of the test post-processing).

Settings that differ by design (each library's defaults): proposals kept after NMS in training
(mmdet 1000, torchvision 2000 per image); RPN pre-NMS top-k per level in training (2000 both).

    OMP_NUM_THREADS=2 python benchmarks/bench_faster_rcnn.py --iters 3 [--size 800 1333] [--batch 1]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import platform
import statistics
import time
from collections import defaultdict
from typing import Callable, Iterator

import torch
import torchvision
from torchvision.models.detection import FasterRCNN, rpn as tv_rpn, roi_heads as tv_roi_heads
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import MultiScaleRoIAlign, boxes as tv_box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

import codetr
from codetr.recipes import recipe
import codetr.ops.nms as codetr_nms
import codetr.rcnn.rpn as codetr_rpn
from codetr.rcnn.roi_extractor import RoIExtractor
from codetr.structures import Target

NUM_CLASSES = 80
TIMES: dict[str, list[float]] = defaultdict(list)   # wrapper name -> seconds of each call
PHASE = {"name": "other"}                            # which stage an NMS call belongs to


def timed(name: str, fn: Callable) -> Callable:
    """``fn`` that adds its wall time to ``TIMES[name]`` (``{phase}`` is filled in at call time)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name.format(phase=PHASE["name"])].append(time.perf_counter() - start)
    return wrapper


def in_phase(name: str, fn: Callable) -> Callable:
    """``fn`` during which NMS calls are attributed to ``name``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous, PHASE["name"] = PHASE["name"], name
        try:
            return fn(*args, **kwargs)
        finally:
            PHASE["name"] = previous
    return wrapper


def instrument() -> None:
    """Wrap RoI extraction and NMS of both libraries (module docstring)."""
    RoIExtractor.forward = timed("codetr roi_extract", RoIExtractor.forward)
    codetr_rpn.batched_nms = timed("codetr nms proposals", codetr_rpn.batched_nms)
    codetr_nms.batched_nms = timed("codetr nms test", codetr_nms.batched_nms)   # used by multiclass_nms
    MultiScaleRoIAlign.forward = timed("torchvision roi_extract", MultiScaleRoIAlign.forward)
    tv_box_ops.batched_nms = timed("torchvision nms {phase}", tv_box_ops.batched_nms)
    tv_rpn.RegionProposalNetwork.filter_proposals = in_phase(
        "proposals", tv_rpn.RegionProposalNetwork.filter_proposals)
    tv_roi_heads.RoIHeads.postprocess_detections = in_phase("test", tv_roi_heads.RoIHeads.postprocess_detections)


def torchvision_model() -> FasterRCNN:
    backbone = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    return FasterRCNN(_resnet_fpn_extractor(backbone, trainable_layers=3), num_classes=NUM_CLASSES + 1)


def make_inputs(batch: int, height: int, width: int, boxes: int, seed: int = 0) -> tuple[torch.Tensor, list[Target]]:
    """Images in [0, 1] [B, 3, H, W] and random boxes (at least 16 px a side), labels 0..79."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([width - 64.0, height - 64.0])
        wh = 16 + torch.rand(boxes, 2, generator=g) * (torch.tensor([width, height]) - xy - 16)
        targets.append(Target(boxes=torch.cat([xy, xy + wh], 1),
                              labels=torch.randint(0, NUM_CLASSES, (boxes,), generator=g)))
    return images, targets


class Runner:
    """One library's inference and train step on fixed inputs."""

    def __init__(self, name: str, infer: Callable[[], None], step: Callable[[], None]) -> None:
        self.name, self.infer, self.step = name, infer, step


def codetr_runner(images: torch.Tensor, targets: list[Target]) -> Runner:
    model = codetr.create("faster_rcnn_r50_fpn_1x", num_classes=NUM_CLASSES)
    spec = model.input_spec
    normed = torch.stack([spec.normalize(im * 255) for im in images])   # the model's preprocessing
    sizes = torch.tensor([list(images.shape[-2:])] * len(images))
    orig_sizes = [tuple(images.shape[-2:])] * len(images)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    # as `codetr train` does with the recipe's train.channels_last
    layout = torch.channels_last if recipe("faster_rcnn_r50_fpn_1x").train.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    train_images = normed.contiguous(memory_format=layout)

    def infer() -> None:   # what `codetr eval` / `predict` run: forward + postprocess + rescale
        model.detect(normed, sizes, orig_sizes)

    def step() -> None:
        model.train()
        model(train_images, sizes, targets).total().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Runner("codetr", infer, step)


def torchvision_runner(images: torch.Tensor, targets: list[Target]) -> Runner:
    model = torchvision_model()
    tv_targets = [{"boxes": t.boxes, "labels": t.labels + 1} for t in targets]   # 0 is background there
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(list(images))

    def step() -> None:
        model.train()
        sum(model(list(images), tv_targets).values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Runner("torchvision", infer, step)


@contextlib.contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Sums of the wrapper times recorded inside the block."""
    TIMES.clear()
    totals: dict[str, float] = {}
    yield totals
    totals.update({k: sum(v) for k, v in TIMES.items()})


def measure(runners: list[Runner], phase: str, iters: int) -> dict[str, tuple[float, dict[str, float]]]:
    """Median seconds of ``phase`` per runner and the median wrapper seconds inside it."""
    for r in runners:
        getattr(r, phase)()   # warm-up
    walls: dict[str, list[float]] = defaultdict(list)
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in range(iters):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            with collecting() as totals:
                start = time.perf_counter()
                getattr(r, phase)()
                walls[r.name].append(time.perf_counter() - start)
            for k, v in totals.items():
                parts[r.name][k].append(v)
    return {name: (statistics.median(w), {k: statistics.median(v) for k, v in parts[name].items()})
            for name, w in walls.items()}


def report(phase: str, results: dict[str, tuple[float, dict[str, float]]]) -> None:
    base = results["torchvision"][0]
    for name, (wall, parts) in results.items():
        shares = ", ".join(f"{k.split(' ', 1)[1]} {v * 1e3:.1f} ms ({100 * v / wall:.1f}%)" for k, v in sorted(parts.items()))
        print(f"  {phase:9s} {name:11s} {wall:.3f} s  ({wall / base:.2f}x torchvision)  {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--boxes", type=int, default=10, help="target boxes per image (default %(default)s)")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, targets = make_inputs(args.batch, *args.size, args.boxes)
    runners = [codetr_runner(images, targets), torchvision_runner(images, targets)]
    instrument()
    print(f"Faster R-CNN R50-FPN, batch {args.batch} x 3 x {args.size[0]} x {args.size[1]}, {args.boxes} boxes; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; medians of {args.iters}")
    report("inference", measure(runners, "infer", args.iters))
    report("train", measure(runners, "step", args.iters))


if __name__ == "__main__":
    main()
