"""CPU benchmark: peak memory of one Co-DINO R50 train step, with and without encoder
activation checkpointing (``enc_checkpoint_layers``, the official ``with_cp``).

What is measured: ``codetr.create("co_dino_5scale_r50_1x", num_classes=80,
enc_checkpoint_layers=K)`` (randomly initialised; 900 queries, 6 + 6 layers, RPN + RoI and ATSS
auxiliary heads), one forward + loss + backward on a random ``1 x 3 x H x W`` image (default
800 x 1333) with ``--boxes`` ground-truth boxes. Each setting runs in its own child process,
because the number is the process's **resident-set high-water mark** (``getrusage`` ``ru_maxrss``,
what the OS saw, allocator caches included), which only ever grows. Reported per setting:

* ``model``: the high-water mark after building the model (weights, imports);
* ``peak``:  after the train step; ``step = peak - model`` is what the step itself added
  (activations kept for the backward pass, gradients, temporaries);
* the wall time of the step (one step, no warm-up: indicative only).

    python benchmarks/bench_co_dino_memory.py [--size 800 1333] [--layers 0 4 6] [--threads 4]

The official Co-DINO R50 config checkpoints the first 4 of its 6 encoder layers, Swin-L all 6.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_high_water_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(layers: int, size: tuple[int, int], boxes: int, threads: int) -> dict:
    """One train step in this process; returns the measurements as a dict."""
    import torch

    import codetr
    from codetr.structures import Target

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = codetr.create("co_dino_5scale_r50_1x", num_classes=80, enc_checkpoint_layers=layers).train()
    h, w = size
    images, sizes = torch.randn(1, 3, h, w), torch.tensor([[h, w]])
    xy = torch.rand(boxes, 2) * torch.tensor([w * 0.7, h * 0.7])
    wh = (torch.rand(boxes, 2) * 0.25 + 0.05) * torch.tensor([w, h])
    target = Target(torch.cat([xy, xy + wh], 1), torch.randint(0, 80, (boxes,)), size=(h, w))
    model_mib = rss_high_water_mib()
    start = time.perf_counter()
    model(images, sizes, [target]).total().backward()
    seconds = time.perf_counter() - start
    peak = rss_high_water_mib()
    return {"enc_checkpoint_layers": layers, "model_mib": round(model_mib), "peak_mib": round(peak),
            "step_mib": round(peak - model_mib), "step_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 4, 6],
                        help="encoder layers to checkpoint, one child process each (0: none)")
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, tuple(args.size), args.boxes, args.threads)))
        return
    print(f"Co-DINO R50 train step, batch 1, {args.size[0]} x {args.size[1]}, {args.boxes} boxes, "
          f"{args.threads} threads; peak RSS (ru_maxrss) per child process")
    for layers in args.layers:
        cmd = [sys.executable, __file__, "--child", str(layers), "--size", *map(str, args.size),
               "--boxes", str(args.boxes), "--threads", str(args.threads)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print("  ".join(f"{k} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
