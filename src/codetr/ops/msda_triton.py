"""Fused multi-scale deformable attention in Triton: forward and backward kernels, JIT-compiled on
first use (no build step), for float32, bfloat16, float16 (and float64) values.

The sum computed (see ``codetr.ops.msda``), per image b, query q, head m and channel d:

    out[b, q, m, d] = sum_{l, k} A[b, q, m, l, k] * sum_{corners c} w_c * V[b, s_c, m, d]

with the bilinear corners c = (x0 + i, y0 + j), i, j in {0, 1}, of the pixel coordinate
(px, py) = (x W_l - 1/2, y H_l - 1/2), (x0, y0) = floor, (fx, fy) = the fractions, bilinear
weights w_c = wx_i wy_j where wx_0 = 1 - fx, wx_1 = fx (likewise y), and s_c = start_l + yc W_l + xc
the corner's token; corners outside the map read zero. The backward differentiates that sum:

    dL/dV[b, s_c, m, :] += A w_c g              g = dL/dout[b, q, m, :]
    dL/dA               = sum_c w_c <V_c, g>
    dL/dx               = A W_l sum_c (+-wy_j) <V_c, g>   (+ for i = 1, - for i = 0); y alike.

Kernel layout: one program per (head, block of BLOCK_Q queries, image). Its tile is
[BLOCK_Q, BLOCK_LP, BLOCK_D]: the queries, every (level, point) of a query flattened (padded to a
power of two), and the channels, contiguous in memory so each corner is one vectorised row read.
The forward gathers the 4 corners of all points at once and sums over points; the backward
recomputes the corners, reduces <V_c, g> over channels for the location and attention gradients
(each owned by one program, plain stores) and scatters A w_c g into the value gradient with
relaxed atomic adds, into a float32 buffer when the values are half precision. Arithmetic runs in
float32 (float64 for float64 values). Level shapes and starts are small int32 tensors read in the
kernel, so a call never reads anything back from the device. Offsets are int64 across images and
int32 within one (so under 2^31 values per image).
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

# Rows (query x point pairs) per program; a starting point for the H100/H200 class, where each
# row is a 128 B read per corner at 32 float32 channels. benchmarks/bench_msda_gpu.py --sweep
# times the alternatives.
FORWARD_ROWS = 128
BACKWARD_ROWS = 64
NUM_WARPS = 4


@triton.jit
def _points(shapes_ptr, starts_ptr, loc_ptr, attn_ptr, q, m, Q, M,
            L: tl.constexpr, P: tl.constexpr, BLOCK_LP: tl.constexpr, ACC: tl.constexpr):
    """The sampling points of queries q [BLOCK_Q] in head m as [BLOCK_Q, BLOCK_LP] tensors:
    their index into attention (location = 2x that), validity, attention, the level's
    (W, H, start) and the clamped pixel coordinates (px, py)."""
    lp = tl.arange(0, BLOCK_LP)                                     # (level, point) flattened
    point = (q[:, None] * M + m) * (L * P) + lp[None, :]            # [BLOCK_Q, BLOCK_LP]
    valid = (q[:, None] < Q) & (lp[None, :] < L * P)
    level = lp // P
    height = tl.load(shapes_ptr + 2 * level, mask=lp < L * P, other=0)[None, :]
    width = tl.load(shapes_ptr + 2 * level + 1, mask=lp < L * P, other=0)[None, :]
    start = tl.load(starts_ptr + level, mask=lp < L * P, other=0)[None, :]
    attn = tl.load(attn_ptr + point, mask=valid, other=0).to(ACC)
    x = tl.load(loc_ptr + 2 * point, mask=valid, other=0).to(ACC)
    y = tl.load(loc_ptr + 2 * point + 1, mask=valid, other=0).to(ACC)
    # clamped to [-2, size + 1]: beyond it every corner is outside, and the int cast stays safe
    w_f, h_f = width.to(ACC), height.to(ACC)
    px = tl.minimum(tl.maximum(x * w_f - 0.5, -2.0), w_f + 1.0)
    py = tl.minimum(tl.maximum(y * h_f - 0.5, -2.0), h_f + 1.0)
    return point, valid, attn, width, height, start, px, py


@triton.jit
def _corner(px, py, width, height, start, valid, m, M, I: tl.constexpr, J: tl.constexpr,
            D: tl.constexpr):
    """Corner (x0 + I, y0 + J) of every point: bilinear factors wx, wy (d wx / d px = 2I - 1),
    whether it lies on the map, and its row offset (token * M + m) * D in the value table."""
    x0, y0 = tl.floor(px), tl.floor(py)
    wx = (1 - I) + (2 * I - 1) * (px - x0)                          # 1 - fx or fx
    wy = (1 - J) + (2 * J - 1) * (py - y0)
    xc = x0.to(tl.int32) + I
    yc = y0.to(tl.int32) + J
    inside = valid & (xc >= 0) & (xc < width) & (yc >= 0) & (yc < height)
    row = ((start + yc * width + xc) * M + m) * D
    return wx, wy, inside, row


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, S, Q, M,
                    L: tl.constexpr, P: tl.constexpr, D: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_LP: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    m, b = tl.program_id(0), tl.program_id(2)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    value_ptr += b.to(tl.int64) * S * M * D                         # this image's [S, M, D]
    loc_ptr += b.to(tl.int64) * Q * M * L * P * 2
    attn_ptr += b.to(tl.int64) * Q * M * L * P
    out_ptr += b.to(tl.int64) * Q * M * D
    _, valid, attn, width, height, start, px, py = _points(
        shapes_ptr, starts_ptr, loc_ptr, attn_ptr, q, m, Q, M, L, P, BLOCK_LP, ACC)
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_Q, BLOCK_LP, BLOCK_D), dtype=ACC)
    for j in tl.static_range(2):
        for i in tl.static_range(2):
            wx, wy, inside, row = _corner(px, py, width, height, start, valid, m, M, i, j, D)
            v = tl.load(value_ptr + row[:, :, None] + d[None, None, :],
                        mask=inside[:, :, None] & (d < D)[None, None, :], other=0).to(ACC)
            acc += (attn * wx * wy)[:, :, None] * v                 # [BLOCK_Q, BLOCK_LP, BLOCK_D]
    out = tl.sum(acc, axis=1)                                       # [BLOCK_Q, BLOCK_D]
    tl.store(out_ptr + (q[:, None] * M + m) * D + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(q < Q)[:, None] & (d < D)[None, :])


@triton.jit
def _backward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_attn_ptr, S, Q, M,
                     L: tl.constexpr, P: tl.constexpr, D: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_LP: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    m, b = tl.program_id(0), tl.program_id(2)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    value_ptr += b.to(tl.int64) * S * M * D
    grad_value_ptr += b.to(tl.int64) * S * M * D
    loc_ptr += b.to(tl.int64) * Q * M * L * P * 2
    grad_loc_ptr += b.to(tl.int64) * Q * M * L * P * 2
    attn_ptr += b.to(tl.int64) * Q * M * L * P
    grad_attn_ptr += b.to(tl.int64) * Q * M * L * P
    grad_out_ptr += b.to(tl.int64) * Q * M * D
    point, valid, attn, width, height, start, px, py = _points(
        shapes_ptr, starts_ptr, loc_ptr, attn_ptr, q, m, Q, M, L, P, BLOCK_LP, ACC)
    d = tl.arange(0, BLOCK_D)
    d_ok = (d < D)[None, None, :]
    g = tl.load(grad_out_ptr + (q[:, None] * M + m) * D + d[None, :],
                mask=(q < Q)[:, None] & (d < D)[None, :], other=0).to(ACC)[:, None, :]  # [BLOCK_Q, 1, BLOCK_D]
    grad_attn = tl.zeros((BLOCK_Q, BLOCK_LP), dtype=ACC)
    grad_px = tl.zeros((BLOCK_Q, BLOCK_LP), dtype=ACC)
    grad_py = tl.zeros((BLOCK_Q, BLOCK_LP), dtype=ACC)
    for j in tl.static_range(2):
        for i in tl.static_range(2):
            wx, wy, inside, row = _corner(px, py, width, height, start, valid, m, M, i, j, D)
            mask = inside[:, :, None] & d_ok
            offsets = row[:, :, None] + d[None, None, :]            # [BLOCK_Q, BLOCK_LP, BLOCK_D]
            v = tl.load(value_ptr + offsets, mask=mask, other=0).to(ACC)
            vg = tl.sum(v * g, axis=2)                              # <V_c, g>: [BLOCK_Q, BLOCK_LP]
            grad_attn += wx * wy * vg
            grad_px += (2 * i - 1) * wy * vg
            grad_py += (2 * j - 1) * wx * vg
            scattered = (attn * wx * wy)[:, :, None] * g               # A w_c g
            tl.atomic_add(grad_value_ptr + offsets, scattered.to(grad_value_ptr.dtype.element_ty), mask=mask,
                          sem="relaxed")
    tl.store(grad_attn_ptr + point, grad_attn.to(grad_attn_ptr.dtype.element_ty), mask=valid)
    loc_ty = grad_loc_ptr.dtype.element_ty
    tl.store(grad_loc_ptr + 2 * point, (attn * grad_px * width.to(ACC)).to(loc_ty), mask=valid)
    tl.store(grad_loc_ptr + 2 * point + 1, (attn * grad_py * height.to(ACC)).to(loc_ty), mask=valid)


def _launch(kernel, value: Tensor, shapes: Tensor, starts: Tensor, loc: Tensor, rows: int,
            *tensors: Tensor) -> None:
    """Runs ``kernel`` over the (head, query block, image) grid; ``tensors`` follow ``loc`` in
    its signature."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = loc.shape
    if B * Q * M == 0:
        return
    block_lp = triton.next_power_of_2(L * P)
    block_q = max(1, rows // block_lp)
    acc = tl.float64 if value.dtype == torch.float64 else tl.float32
    grid = (M, triton.cdiv(Q, block_q), B)
    with torch.cuda.device(value.device) if value.is_cuda else nullcontext():  # launch on the tensors' GPU
        kernel[grid](value, shapes, starts, loc, *tensors, S, Q, M, L=L, P=P, D=D, BLOCK_Q=block_q,
                     BLOCK_LP=block_lp, BLOCK_D=triton.next_power_of_2(D), ACC=acc, num_warps=NUM_WARPS)


class _FusedMSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, shapes: Tensor, starts: Tensor, loc: Tensor, attn: Tensor) -> Tensor:
        B, _, M, D = value.shape
        out = value.new_empty(B, loc.shape[1], M * D)                 # [B, Q, M*D]
        _launch(_forward_kernel, value, shapes, starts, loc, FORWARD_ROWS, attn, out)
        ctx.save_for_backward(value, shapes, starts, loc, attn)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, Tensor, Tensor]:
        value, shapes, starts, loc, attn = ctx.saved_tensors
        half = value.dtype in (torch.float16, torch.bfloat16)
        grad_value = torch.zeros_like(value, dtype=torch.float32 if half else value.dtype)
        grad_loc, grad_attn = torch.empty_like(loc), torch.empty_like(attn)
        _launch(_backward_kernel, value, shapes, starts, loc, BACKWARD_ROWS, attn,
                grad_out.contiguous(), grad_value, grad_loc, grad_attn)
        return grad_value.to(value.dtype), None, None, grad_loc, grad_attn


@lru_cache(maxsize=64)
def _level_tables_of_list(shapes: tuple[tuple[int, int], ...],
                          device: torch.device) -> tuple[Tensor, Tensor]:
    table = torch.tensor(shapes, dtype=torch.int32).view(-1, 2)
    sizes = table[:, 0] * table[:, 1]
    return table.to(device), (sizes.cumsum(0) - sizes).to(torch.int32).to(device)


def level_tables(spatial_shapes: Tensor | list[tuple[int, int]],
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """(H_l, W_l) [L, 2] and level starts [L] as int32 on ``device``: from a tensor already there,
    computed there without reading it back; else built once per (shapes, device) and cached (a
    host tensor is read as a list: copying it to the GPU on every call would wait for the GPU)."""
    if not isinstance(spatial_shapes, Tensor) or spatial_shapes.device != device:
        rows = spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes
        return _level_tables_of_list(tuple((int(h), int(w)) for h, w in rows), device)
    table = spatial_shapes.to(torch.int32).contiguous()
    sizes = table[:, 0] * table[:, 1]
    return table, sizes.cumsum(0, dtype=torch.int32) - sizes


def ms_deform_attn_fused(value: Tensor, spatial_shapes: Tensor | list[tuple[int, int]],
                         sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Shapes as ``codetr.ops.msda.ms_deform_attn_grid_sample``; returns [B, Q, M * D] in the
    values' dtype. Locations and weights may have another floating dtype (float32 under autocast)."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    if sampling_locations.shape != (B, Q, M, L, P, 2) or attention_weights.shape != (B, Q, M, L, P):
        raise ValueError(f"expected locations [B, Q, M, L, P, 2] and weights [B, Q, M, L, P] with B, M = "
                         f"{B}, {M}; got {tuple(sampling_locations.shape)} and {tuple(attention_weights.shape)}")
    if len(spatial_shapes) != L:
        raise ValueError(f"{len(spatial_shapes)} level shapes for {L} levels of sampling locations")
    if not isinstance(spatial_shapes, Tensor) and sum(h * w for h, w in spatial_shapes) != S:
        raise ValueError(f"level shapes {list(spatial_shapes)} hold {sum(h * w for h, w in spatial_shapes)} "
                         f"tokens, values {S}")
    shapes, starts = level_tables(spatial_shapes, value.device)
    return _FusedMSDeformAttn.apply(value.contiguous(), shapes, starts, sampling_locations.contiguous(),
                                    attention_weights.contiguous())
