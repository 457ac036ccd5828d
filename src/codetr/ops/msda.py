"""Multi-scale deformable attention core (Zhu et al., Deformable DETR, Eq. 3).

Eq. 2 (one map x): out(q) = sum_m W_m [ sum_k A_mqk * W'_m x(p_q + dp_mqk) ], the attention of query
q as a weighted sum of K sampled points per head m instead of all pixels. Eq. 3 extends the sum to
the L levels of a feature pyramid, each point sampled on its own level around the reference point
rescaled to that level. The projections W_m, W'_m live in ``nn.MultiScaleDeformableAttention``;
this core computes, per image, query q and head m (values already projected, V_l[m] = W'_m x^l):

    out[q, m] = sum_l sum_k  A[q, m, l, k] * V_l[m](p[q, m, l, k])

Locations are normalized to [0, 1] over each level's map (0 = left/top edge of the first
pixel, 1 = right/bottom edge of the last), so (x, y) falls on pixel coordinates
(x W_l - 1/2, y H_l - 1/2); sampling is bilinear with zeros outside the map.

Four backends, chosen by ``ms_deform_attn`` from the device and the problem size:
- ``ms_deform_attn_grid_sample``: the readable reference (one ``grid_sample`` per level, batched
  over images and heads), the one every other backend is tested against; used on GPUs when
  triton is not installed or ``CODETR_MSDA=reference`` is set in the environment;
- ``ms_deform_attn_triton`` (GPU): fused Triton forward and backward kernels
  (``codetr.ops.msda_triton``), compiled on first use; used on CUDA whenever triton imports
  (under torch.compile as an opaque custom op, see ``fused_or_compiled``);
- ``ms_deform_attn_bag`` (CPU): the same sum written as one ``embedding_bag``: each (image,
  head, query) is a bag of the L*P*4 bilinear corner rows of the value table, weighted by
  attention x bilinear weight. On CPU it runs ~2x faster forward than the reference
  (benchmarks/RESULTS.md);
- ``ms_deform_attn_dense`` (CPU, small maps): the corner weights scattered into a dense
  [Q, S] matrix per (image, head), then one batched matrix product. Its cost grows with Q x S,
  so it only pays while that is small: ~2x faster than the bag forward + backward at the
  ~340 tokens of 128 px images, even at ~1000 tokens, slower beyond.

``spatial_shapes`` may be a list of (H_l, W_l) or an [L, 2] tensor; the model passes the list
it computed once per forward and, for the fused kernel, the same shapes as a table already on
the device (``level_table``), so no call reads shapes back from the device or copies them to it.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor


# Largest B * M * Q * S (entries of the dense mixing matrices, 32 MB in float32) for which the
# CPU uses the dense backend: there it was >= 2x faster than the bag up to ~2M entries and
# even at ~16M (benchmarks/bench_msda.py --small).
DENSE_MAX_ENTRIES = 1 << 23

Shapes = Tensor | list[tuple[int, int]]


def int_shapes(spatial_shapes: Shapes) -> list[tuple[int, int]]:
    """(H_l, W_l) per level as Python ints (a tensor is read back once, here); a list as given
    (while exporting its sizes are traced values, which ``int`` would freeze)."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def exporting() -> bool:
    """Whether an ONNX export (or ``torch.export``) is tracing the model: the graph then takes
    the grid_sample reference (ONNX GridSample) and keeps the map sizes as traced values."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def ms_deform_attn(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                   attention_weights: Tensor, level_table: Tensor | None = None) -> Tensor:
    """Multi-scale deformable attention with the fastest backend for the inputs' device and
    size (shapes as in ``ms_deform_attn_grid_sample``). ``level_table``: the same shapes as an
    [L, 2] integer tensor on the values' device; the fused kernel reads it there instead of
    copying the shapes to the GPU (the other backends use the Python ints)."""
    if exporting():
        return ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)
    if value.device.type == "cuda" and gpu_backend() is ms_deform_attn_triton:
        return fused_or_compiled(value, spatial_shapes, sampling_locations, attention_weights, level_table)
    if value.device.type != "cpu":
        backend = ms_deform_attn_grid_sample
    elif value.shape[0] * value.shape[1] * value.shape[2] * sampling_locations.shape[1] <= DENSE_MAX_ENTRIES:
        backend = ms_deform_attn_dense
    else:
        backend = ms_deform_attn_bag
    return backend(value, spatial_shapes, sampling_locations, attention_weights)


@cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def gpu_backend() -> Callable[..., Tensor]:
    """The CUDA backend: the Triton kernels when triton is installed, unless the environment sets
    ``CODETR_MSDA=reference`` (read at every call), else the grid_sample reference."""
    if os.environ.get("CODETR_MSDA", "") != "reference" and triton_available():
        return ms_deform_attn_triton
    return ms_deform_attn_grid_sample


def ms_deform_attn_triton(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                          attention_weights: Tensor) -> Tensor:
    """The sum in fused Triton kernels (``codetr.ops.msda_triton``, imported here so that codetr
    imports without triton), shapes as ``ms_deform_attn_grid_sample``. Needs CUDA tensors, or
    ``TRITON_INTERPRET=1`` set before the first call for CPU ones (slow; for tests)."""
    from .msda_triton import ms_deform_attn_fused
    return ms_deform_attn_fused(value, spatial_shapes, sampling_locations, attention_weights)


def fused_or_compiled(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                      attention_weights: Tensor, level_table: Tensor | None = None) -> Tensor:
    """``ms_deform_attn_triton``, fed ``level_table`` when given. While torch.compile traces (dynamo
    cannot trace a Triton launch inside an autograd.Function): the forward kernel as the opaque
    custom op ``codetr::msda_fused``, or, where gradients are needed (the op has no backward), the
    grid_sample reference, which the compiler fuses itself."""
    table = spatial_shapes if level_table is None else level_table
    if not torch.compiler.is_compiling():
        return ms_deform_attn_triton(value, table, sampling_locations, attention_weights)
    inputs = (value, sampling_locations, attention_weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)
    if not isinstance(table, Tensor):
        table = torch.tensor(table, dtype=torch.int32, device=value.device)
    return _msda_fused(value, table, sampling_locations, attention_weights)


@torch.library.custom_op("codetr::msda_fused", mutates_args=())
def _msda_fused(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                attention_weights: Tensor) -> Tensor:
    return ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights)


@_msda_fused.register_fake
def _msda_fused_shape(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                      attention_weights: Tensor) -> Tensor:
    B, _, M, D = value.shape
    return value.new_empty(B, sampling_locations.shape[1], M * D)                  # [B, Q, M*D]


def ms_deform_attn_grid_sample(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                               attention_weights: Tensor) -> Tensor:
    """The reference, Eq. 3 summed level by level: per level, one bilinear ``grid_sample`` of
    that level's map at every (query, point) location of every (image, head), weighted by the
    attention and added to the output.

    value:               [B, S, M, D]   S = sum_l H_l * W_l tokens, M heads of D channels
    spatial_shapes:      [L, 2]         (H_l, W_l) per level, tokens flattened level by level
    sampling_locations:  [B, Q, M, L, P, 2]  (x, y) in [0, 1]
    attention_weights:   [B, Q, M, L, P]
    returns:             [B, Q, M * D]

    Layout: n = (image, head) is grid_sample's batch; its Q*P points of one level form a single
    row of the sampling grid. grid_sample(align_corners=False) addresses pixel (x W - 1/2,
    y H - 1/2) of a map as 2 (x, y) - 1 and reads zeros outside it, as Eq. 3 wants.
    """
    shapes = int_shapes(spatial_shapes)
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    grid = (2 * sampling_locations - 1).permute(0, 2, 3, 1, 4, 5).reshape(B * M, L, 1, Q * P, 2)
    weights = attention_weights.permute(0, 2, 3, 1, 4).reshape(B * M, L, 1, Q, P)
    out = value.new_zeros(B * M, D, Q)
    for lvl, (tokens, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], dim=1), shapes)):
        if h * w == 0:  # an empty level: every sample reads the zero padding
            continue
        level_map = tokens.permute(0, 2, 3, 1).reshape(B * M, D, h, w)     # [B, HW, M, D] -> [B*M, D, H, W]
        samples = F.grid_sample(level_map, grid[:, lvl], mode="bilinear", padding_mode="zeros",
                                align_corners=False)                        # [B*M, D, 1, Q*P]
        out = out + (samples.view(B * M, D, Q, P) * weights[:, lvl]).sum(-1)
    return out.view(B, M, D, Q).permute(0, 3, 1, 2).reshape(B, Q, M * D)


def _bilinear_corners(shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor,
                      stacked: bool = False) -> tuple[Tensor, Tensor]:
    """The 4 bilinear corners of every sampling point as rows of one (image, head)'s value
    table, with weight attention x bilinear weight (0 for corners outside the map, whose row is
    then any row of the table). ``stacked``: rows of the B * M tables stacked, (image, head)
    after (image, head). returns rows [B, M, Q, 4*L*P] (int32) and weights [B, M, Q, 4*L*P]
    (float32 at least, whatever the inputs' dtype), corner-major: top-left, top-right,
    bottom-left, bottom-right, each over (level, point).

    Written for the CPU backends' cost, a few passes over the B*M*Q*L*P points, each over
    contiguous memory: per axis the near / far pixel's weight (0 outside the map) once, each
    corner's weight their product, and the rows the top-left corner's plus 0, 1, W_l, W_l + 1."""
    B, Q, M, L, P, _ = sampling_locations.shape
    device, dtype = sampling_locations.device, torch.promote_types(sampling_locations.dtype, torch.float32)
    # per-level sizes repeated for each point: [L*P] tables broadcast over the last dimension,
    # several times faster on CPU than [L, 1] ones (an inner loop of P elements)
    heights = torch.tensor([h for h, _ in shapes], dtype=dtype, device=device).repeat_interleave(P)
    widths = torch.tensor([w for _, w in shapes], dtype=dtype, device=device).repeat_interleave(P)
    loc = sampling_locations.permute(5, 0, 2, 1, 3, 4).to(dtype).reshape(2, B, M, Q, L * P)
    px = loc[0] * widths - 0.5                                                  # pixel coordinates
    py = loc[1] * heights - 0.5
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    zero = torch.zeros((), dtype=dtype, device=device)
    wx = (torch.where((x0 >= 0) & (x0 < widths), 1 - fx, zero), torch.where((x0 >= -1) & (x0 < widths - 1), fx, zero))
    attn = attention_weights.transpose(1, 2).to(dtype).reshape(B, M, Q, L * P)
    wy = (torch.where((y0 >= 0) & (y0 < heights), 1 - fy, zero) * attn,
          torch.where((y0 >= -1) & (y0 < heights - 1), fy, zero) * attn)
    corners = ((0, 0), (0, 1), (1, 0), (1, 1))                                  # (dy, dx)
    weights = torch.stack([wy[dy] * wx[dx] for dy, dx in corners], 3)           # [B, M, Q, 4, L*P]
    return _corner_rows(shapes, x0, y0, P, stacked), weights.view(B, M, Q, 4 * L * P)


def _corner_rows(shapes: list[tuple[int, int]], x0: Tensor, y0: Tensor, num_points: int, stacked: bool) -> Tensor:
    """Rows [B, M, Q, 4*L*P] (int32) of the corners of the top-left pixels (x0, y0) [B, M, Q,
    L*P]. Off-map coordinates are first clamped to within a pixel of the largest map (no integer
    overflow), then the rows to the table: the corners they give have weight 0."""
    B, M, Q, _ = x0.shape
    device, sizes = x0.device, [h * w for h, w in shapes]
    x = x0.clamp(-1, max(w for _, w in shapes)).to(torch.int32)
    y = y0.clamp(-1, max(h for h, _ in shapes)).to(torch.int32)
    widths = torch.tensor([w for _, w in shapes], dtype=torch.int32, device=device).repeat_interleave(num_points)
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(shapes))], dtype=torch.int32,
                          device=device).repeat_interleave(num_points)
    first = torch.zeros((), dtype=torch.int32, device=device)                   # the table's first row
    if stacked:
        first = torch.arange(B * M, dtype=torch.int32, device=device).view(B, M, 1, 1) * sum(sizes)
    last = first + (sum(sizes) - 1)
    top_left = (y * widths).add_(x).add_(starts).add_(first)
    rows = [top_left, top_left + 1, top_left + widths, top_left + (widths + 1)]
    return torch.stack([r.clamp_(first, last) for r in rows], 3).view(B, M, Q, -1)


def ms_deform_attn_bag(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                       attention_weights: Tensor) -> Tensor:
    """The reference's sum as one weighted ``embedding_bag`` over the rows of the value table."""
    shapes = int_shapes(spatial_shapes)
    B, S, M, D = value.shape
    Q = sampling_locations.shape[1]
    rows, weights = _bilinear_corners(shapes, sampling_locations, attention_weights, stacked=True)
    table = value.transpose(1, 2).reshape(B * M * S, D)                    # row (b, m, s)
    out = WeightedBags.apply(rows.view(B * M * Q, -1), weights.view(B * M * Q, -1), table)   # [B*M*Q, D]
    return out.view(B, M, Q, D).transpose(1, 2).reshape(B, Q, M * D)


class WeightedBags(torch.autograd.Function):
    """out[n] = sum_k weights[n, k] * table[rows[n, k]]: rows [N, K] int32, weights [N, K]
    float32, table [T, D] -> [N, D] in the table's dtype, forward by ``F.embedding_bag``.

    Its own backward, ~3x faster than ``embedding_bag``'s on CPU and accumulated in float32
    (bfloat16 ``embedding_bag`` sums a table row's thousands of contributions in bfloat16):

    * d table = A^T grad, with A the [N, T] sparse matrix of the weights: the (n, k) entries
      sorted by row make A^T's rows, summed by one ``embedding_bag`` over grad's rows;
    * d weights[n, k] = <grad[n], table[rows[n, k]]>: ``torch.sparse.sampled_addmm`` on A's
      pattern (grad @ table^T, computed only where A has entries)."""

    @staticmethod
    def forward(ctx, rows: Tensor, weights: Tensor, table: Tensor) -> Tensor:
        ctx.save_for_backward(rows, weights, table)
        return F.embedding_bag(rows, table, per_sample_weights=weights.to(table.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None]:
        rows, weights, table = ctx.saved_tensors
        grad = grad.to(weights.dtype)
        grad_weights = grad_table = None
        if ctx.needs_input_grad[2]:
            entry_rows, order = rows.view(-1).sort()
            counts = torch.bincount(entry_rows, minlength=table.shape[0])
            grad_table = F.embedding_bag(order // rows.shape[1], grad, offsets=counts.cumsum(0) - counts,
                                         per_sample_weights=weights.view(-1)[order], mode="sum").to(table.dtype)
        if ctx.needs_input_grad[1]:
            grad_weights = sampled_rows_dot(rows, grad, table.to(weights.dtype))
        return None, grad_weights, grad_table


def sampled_rows_dot(rows: Tensor, left: Tensor, table: Tensor) -> Tensor:
    """[N, K]: left[n] . table[rows[n, k]] (left [N, D], table [T, D]) without gathering the
    N x K rows: the sampled product left @ table^T on the pattern of ``rows`` (CSR)."""
    N, K = rows.shape
    if K > table.shape[0]:  # sampled_addmm refuses CSR rows with more entries than columns
        return (table[rows.long()] * left[:, None, :]).sum(-1)
    crow = torch.arange(0, N * K + 1, K, dtype=rows.dtype, device=rows.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are not
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, rows.reshape(-1), left.new_ones(N * K), size=(N, table.shape[0]),
                                          check_invariants=False)  # valid by construction
    return torch.sparse.sampled_addmm(pattern, left, table.t(), beta=0.0).values().view(N, K)


def ms_deform_attn_dense(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                         attention_weights: Tensor) -> Tensor:
    """The reference's sum as a batched matrix product with a dense [Q, S] matrix per (image,
    head) that holds the corner weights: for small maps (a few hundred tokens) the products and
    their backward are far cheaper than gathering and scattering rows one by one."""
    shapes = int_shapes(spatial_shapes)
    B, S, M, D = value.shape
    Q = sampling_locations.shape[1]
    rows, weights = _bilinear_corners(shapes, sampling_locations, attention_weights)
    # corners that fall on the same token add up, as the bilinear sum does; the scatter runs
    # in the weights' dtype (float32): CPU scatter_add in bfloat16 is ~10x slower
    mixing = weights.new_zeros(B * M * Q, S).scatter_add(1, rows.view(B * M * Q, -1).long(), weights.view(B * M * Q, -1))
    per_head = value.transpose(1, 2).reshape(B * M, S, D)
    out = torch.bmm(mixing.view(B * M, Q, S).to(value.dtype), per_head)     # [B*M, Q, D]
    return out.view(B, M, Q, D).transpose(1, 2).reshape(B, Q, M * D)
