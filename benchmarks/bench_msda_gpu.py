"""GPU timing of multi-scale deformable attention: the fused Triton kernels
(``ms_deform_attn_triton``) against the grid_sample reference, float32 and bfloat16, forward and
forward + backward, at the Deformable DETR / DINO encoder shape: 2 images of 800x1333 (levels
100x167, 50x84, 25x42, 13x21: 22,223 tokens, every one a query), 8 heads x 32 channels, 4 levels
x 4 points. Target (official Deformable-DETR CUDA kernel, H200, float32): forward 1.03 ms,
forward + backward 3.40 ms.

Locations are ``local`` by default, as in a trained encoder (each query's own position plus
offsets of ~2 pixels on every level), or ``uniform`` over the maps (no cache locality). Before
timing, each backend's output and gradients are compared with the float32 reference.
``--sweep`` also times the Triton kernels for other rows-per-program and warp counts
(``codetr.ops.msda_triton.FORWARD_ROWS`` / ``BACKWARD_ROWS`` / ``NUM_WARPS``).

    python benchmarks/bench_msda_gpu.py
    python benchmarks/bench_msda_gpu.py --locations uniform --sweep
"""
from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from codetr.ops import msda_triton
from codetr.ops.msda import ms_deform_attn_grid_sample, ms_deform_attn_triton

SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4


def encoder_inputs(locations: str, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """value [B, S, M, D], locations [B, Q, M, L, P, 2], weights [B, Q, M, L, P] with Q = S."""
    g = torch.Generator(device).manual_seed(0)
    L = len(SHAPES)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(BATCH, tokens, HEADS, CHANNELS, generator=g, device=device)
    shape = (BATCH, tokens, HEADS, L, POINTS)
    if locations == "uniform":
        loc = torch.rand(*shape, 2, generator=g, device=device)
    else:  # each token's pixel centre, normalized, plus N(0, 2 px) offsets on every level
        centres = [torch.stack(torch.meshgrid((torch.arange(w, device=device) + 0.5) / w,
                                              (torch.arange(h, device=device) + 0.5) / h, indexing="xy"), -1)
                   .view(h * w, 2) for h, w in SHAPES]
        wh = torch.tensor([(w, h) for h, w in SHAPES], device=device, dtype=torch.float32)  # [L, 2]
        offsets = torch.randn(*shape, 2, generator=g, device=device) * 2 / wh[:, None, :]
        loc = torch.cat(centres)[None, :, None, None, None, :] + offsets
    weights = torch.rand(*shape, generator=g, device=device).view(BATCH, tokens, HEADS, -1).softmax(-1)
    return value.to(dtype), loc.to(dtype), weights.view(shape).to(dtype)


def cuda_ms(fn, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` timed calls after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def forward_backward(backend, inputs, grad_out):
    value, loc, attn = inputs
    out = backend(value, SHAPES, loc, attn)
    return (out, *torch.autograd.grad(out, (value, loc, attn), grad_out))


def relative_errors(inputs, grad_out) -> str:
    """Per backend, max |x - truth| / max |truth| of output and gradients, where truth is the
    reference in float32 on the same (possibly bfloat16-rounded) numbers."""
    upcast = tuple(t.detach().float().requires_grad_() for t in inputs)
    truth = forward_backward(ms_deform_attn_grid_sample, upcast, grad_out.float())
    lines = []
    for name, backend in (("grid_sample", ms_deform_attn_grid_sample), ("triton", ms_deform_attn_triton)):
        got = forward_backward(backend, inputs, grad_out)
        errors = [((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, truth)]
        names = ("out", "d value", "d loc", "d attn")
        lines.append(f"  {name:12s} " + "  ".join(f"{n} {e:.1e}" for n, e in zip(names, errors)))
    return "\n".join(lines)


def time_backend(backend, inputs, grad_out, iters: int) -> tuple[float, float]:
    value, loc, attn = inputs
    forward = cuda_ms(lambda: backend(value, SHAPES, loc, attn), iters)
    return forward, cuda_ms(lambda: forward_backward(backend, inputs, grad_out), iters)


def sweep(inputs, grad_out, iters: int) -> None:
    defaults = msda_triton.FORWARD_ROWS, msda_triton.BACKWARD_ROWS, msda_triton.NUM_WARPS
    for rows_f, rows_b, warps in itertools.product((64, 128, 256), (32, 64, 128), (2, 4, 8)):
        msda_triton.FORWARD_ROWS, msda_triton.BACKWARD_ROWS, msda_triton.NUM_WARPS = rows_f, rows_b, warps
        fwd, both = time_backend(ms_deform_attn_triton, inputs, grad_out, iters)
        print(f"  rows fwd {rows_f:3d} bwd {rows_b:3d} warps {warps}: "
              f"forward {fwd:.3f} ms  forward+backward {both:.3f} ms")
    msda_triton.FORWARD_ROWS, msda_triton.BACKWARD_ROWS, msda_triton.NUM_WARPS = defaults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--locations", choices=("local", "uniform"), default="local")
    p.add_argument("--sweep", action="store_true", help="also time other Triton block sizes and warp counts")
    args = p.parse_args()
    device = torch.device("cuda")
    tokens = sum(h * w for h, w in SHAPES)
    print(f"{torch.cuda.get_device_name()}: batch {BATCH}, {tokens} queries, {HEADS} heads x {CHANNELS} "
          f"channels, {len(SHAPES)} levels x {POINTS} points, {args.locations} locations, median of {args.iters}")
    for dtype in (torch.float32, torch.bfloat16):
        inputs = tuple(t.requires_grad_() for t in encoder_inputs(args.locations, dtype, device))
        grad_out = torch.randn(BATCH, tokens, HEADS * CHANNELS, device=device, dtype=dtype)
        print(f"{dtype}: error relative to the float32 reference\n{relative_errors(inputs, grad_out)}")
        for name, backend in (("grid_sample", ms_deform_attn_grid_sample), ("triton", ms_deform_attn_triton)):
            fwd, both = time_backend(backend, inputs, grad_out, args.iters)
            print(f"  {name:12s} forward {fwd:.3f} ms  forward+backward {both:.3f} ms")
        if args.sweep:
            sweep(inputs, grad_out, args.iters)


if __name__ == "__main__":
    main()
