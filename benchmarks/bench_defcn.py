"""CPU benchmark of DeFCN (``defcn_poto_3dmf_aux_r50``, POTO + 3DMF + aux, R50-FPN, 80 classes,
randomly initialised, nothing downloaded) on a ``B x 3 x H x W`` batch (default 1 x 800 x 1066).

Phases (each warmed up once, then ``--iters`` timed repetitions; the median is reported):

* ``inference``: ``model.eval()`` + ``torch.no_grad()``: raw forward, then ``postprocess``
  (per-level top-k, top 100, no NMS), timed together and apart;
* ``train``: ``model.train()``, forward + losses on ``--boxes`` random targets per image +
  backward + ``AdamW.step()``. The assignment (``DeFCNCriterion.poto_targets`` with its
  Hungarian matching, and ``aux_targets``) is wrapped with a wall-clock timer and reported as
  a share of the step.

    OMP_NUM_THREADS=2 python benchmarks/bench_defcn.py --iters 3 [--size 800 1066] [--batch 1]
"""
from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
from typing import Callable

import torch

import codetr
from codetr.dense.criterion import DeFCNCriterion
from codetr.structures import Target

NUM_CLASSES = 80
TIMED = {"poto_targets": [], "aux_targets": []}


def make_inputs(batch: int, height: int, width: int, boxes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    sizes = torch.tensor([[height, width]] * batch)
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([width - 64.0, height - 64.0])
        wh = 16 + torch.rand(boxes, 2, generator=g) * (torch.tensor([width, height]) - xy - 16)
        targets.append(Target(boxes=torch.cat([xy, xy + wh], 1), labels=torch.randint(0, NUM_CLASSES, (boxes,), generator=g)))
    return images, sizes, targets


def timed(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMED[name].append(time.perf_counter() - start)
    return wrapper


def measure(fn: Callable[[], None], iters: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1066], metavar=("H", "W"))
    parser.add_argument("--boxes", type=int, default=10, help="target boxes per image (default %(default)s)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = codetr.create("defcn_poto_3dmf_aux_r50", num_classes=NUM_CLASSES)
    images, sizes, targets = make_inputs(args.batch, *args.size, args.boxes)
    print(f"defcn_poto_3dmf_aux_r50: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
          f"batch {args.batch} x 3 x {args.size[0]} x {args.size[1]}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    model.eval()
    outputs = {}

    def forward() -> None:
        with torch.no_grad():
            outputs["raw"] = model(images, sizes)

    def postprocess() -> None:
        model.postprocess(outputs["raw"], sizes)

    fwd = measure(forward, args.iters)
    post = measure(postprocess, args.iters)
    print(f"inference: forward {statistics.median(fwd):.3f} s + postprocess {statistics.median(post) * 1e3:.1f} ms")

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    DeFCNCriterion.poto_targets = timed("poto_targets", DeFCNCriterion.poto_targets)
    DeFCNCriterion.aux_targets = timed("aux_targets", DeFCNCriterion.aux_targets)

    def step() -> None:
        losses = model(images, sizes, targets)
        losses.total().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train = measure(step, args.iters)
    n = args.iters + 1  # the timers also saw the warm-up step
    step_s = statistics.median(train)
    poto, aux = (statistics.median(TIMED[k][-args.iters:]) for k in ("poto_targets", "aux_targets"))
    assert len(TIMED["poto_targets"]) == n
    print(f"train step: {step_s:.3f} s (forward + loss + backward + AdamW); assignment "
          f"{(poto + aux) * 1e3:.1f} ms = {100 * (poto + aux) / step_s:.1f}% "
          f"(POTO + Hungarian {poto * 1e3:.1f} ms, aux top-k {aux * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
