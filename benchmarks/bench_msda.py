"""CPU timing of the multi-scale deformable attention backends (codetr.ops.msda).

Encoder-sized problem of Deformable DETR / DINO at 800x1066: 4 levels (100x134, 50x67, 25x34,
13x17), 8 heads x 32 channels, 4 points, every token a query. With ``--small``: the tiny DETRs'
encoder on 128 px images (16x16, 8x8, 4x4, 2x2; 4 heads; batch 4). Forward and backward of
``ms_deform_attn_grid_sample`` (the reference), ``ms_deform_attn_bag`` and
``ms_deform_attn_dense`` (the CPU backends; dense only with ``--small``), alternating, median over ``--iters``.

    python benchmarks/bench_msda.py --iters 3 --threads 2
    python benchmarks/bench_msda.py --iters 10 --threads 2 --small

GPU timing of the fused Triton kernels against the reference: benchmarks/bench_msda_gpu.py.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from codetr.ops.msda import ms_deform_attn_bag, ms_deform_attn_dense, ms_deform_attn_grid_sample

FULL_SHAPES = [(100, 134), (50, 67), (25, 34), (13, 17)]
SMALL_SHAPES = [(16, 16), (8, 8), (4, 4), (2, 2)]


def run_once(backend, shapes, value, locations, weights) -> tuple[float, float]:
    start = time.perf_counter()
    out = backend(value, shapes, locations, weights)
    middle = time.perf_counter()
    out.sum().backward()
    return middle - start, time.perf_counter() - middle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="images (default 1, or 4 with --small)")
    p.add_argument("--small", action="store_true", help="the tiny DETRs' 128 px maps, 4 heads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shapes = SMALL_SHAPES if args.small else FULL_SHAPES
    args.batch = args.batch or (4 if args.small else 1)
    tokens = sum(h * w for h, w in shapes)
    heads, channels, levels, points = 4 if args.small else 8, 32, len(shapes), 4
    value = torch.randn(args.batch, tokens, heads, channels, generator=g, requires_grad=True)
    locations = torch.rand(args.batch, tokens, heads, levels, points, 2, generator=g, requires_grad=True)
    weights = torch.rand(args.batch, tokens, heads, levels, points, generator=g).requires_grad_()
    backends = {"grid_sample": ms_deform_attn_grid_sample, "embedding_bag": ms_deform_attn_bag}
    if args.small:  # at full size the dense [Q, S] matrices alone would take 10 GB
        backends["dense"] = ms_deform_attn_dense
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
    for name, backend in backends.items():  # warm-up
        run_once(backend, shapes, value, locations, weights)
    for _ in range(args.iters):
        for name, backend in backends.items():
            times[name].append(run_once(backend, shapes, value, locations, weights))
    print(f"{tokens} queries x {heads} heads, batch {args.batch}, {args.threads} threads, {args.iters} iters (median s)")
    for name, ts in times.items():
        fwd, bwd = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        print(f"{name:14s} forward {fwd:.3f}  backward {bwd:.3f}  total {fwd + bwd:.3f}")


if __name__ == "__main__":
    main()
