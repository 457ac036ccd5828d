"""Multi-scale deformable attention: every backend against a naive per-point loop, gradcheck."""
import pytest
import torch

from codetr.ops import msda
from codetr.ops.msda import ms_deform_attn, ms_deform_attn_bag, ms_deform_attn_dense, ms_deform_attn_grid_sample

BACKENDS = [ms_deform_attn_grid_sample, ms_deform_attn_bag, ms_deform_attn_dense]


def bilinear_zero_pad(v, x, y):
    """v [D, H, W]; (x, y) in [0, 1] image coordinates (align_corners=False)."""
    _, h, w = v.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(px)), int(torch.floor(py))
    out = torch.zeros(v.shape[0], dtype=v.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * v[:, yi, xi]
    return out


def naive(value, shapes, loc, attn):
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = loc.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for lvl, (h, w) in enumerate(shapes):
                    v = value[b, starts[lvl]:starts[lvl] + h * w, m].T.reshape(D, h, w)
                    for p in range(P):
                        x, y = loc[b, q, m, lvl, p]
                        out[b, q, m] += attn[b, q, m, lvl, p] * bilinear_zero_pad(v, x, y)
    return out.flatten(2)


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 5), (2, 3), (1, 1)]
    S = sum(h * w for h, w in shapes)
    B, Q, M, D, L, P = 2, 3, 2, 4, len(shapes), 2
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    # include locations outside [0, 1] to exercise the zero padding
    loc = (torch.rand(B, Q, M, L, P, 2, generator=g, dtype=dtype) * 1.4 - 0.2)
    attn = torch.rand(B, Q, M, L, P, generator=g, dtype=dtype).softmax(-1)
    return value, shapes, loc, attn


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_naive_loop(backend):
    value, shapes, loc, attn = inputs(torch.float64)
    torch.testing.assert_close(backend(value, shapes, loc, attn), naive(value, shapes, loc, attn))


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_outside_points_and_level_edges(backend):
    """Points several maps away (their corners clamp onto valid rows with weight 0) and points
    on the last row / column of a level (their far corners would be the next level's tokens)."""
    value, shapes, loc, attn = inputs(torch.float64, seed=3)
    loc = loc * 8 - 3.5                                                 # mostly far outside
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=loc.dtype)    # [L, 2]
    loc[:, 0] = 1 - 0.25 / wh[:, None, :]                               # query 0: a quarter pixel from the far edges
    torch.testing.assert_close(backend(value, shapes, loc, attn), naive(value, shapes, loc, attn))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_and_list_shapes_agree(backend):
    value, shapes, loc, attn = inputs(torch.float32, seed=1)
    assert torch.equal(backend(value, shapes, loc, attn), backend(value, torch.tensor(shapes), loc, attn))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    value, shapes, loc, attn = inputs(torch.float64, seed=2)
    value.requires_grad_(); loc.requires_grad_(); attn.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, l, a: backend(v, shapes, l, a), (value, loc, attn),
                                    eps=1e-6, atol=1e-5)


def test_cpu_backends_equal_reference_in_value_and_gradient_float32():
    """At a realistic size (4 levels, 8 heads) the CPU backends reproduce the reference."""
    g = torch.Generator().manual_seed(3)
    shapes = [(20, 27), (10, 14), (5, 7), (3, 4)]
    S, B, Q, M, D, L, P = sum(h * w for h, w in shapes), 2, 50, 8, 32, 4, 4
    value = torch.randn(B, S, M, D, generator=g, requires_grad=True)
    loc = (torch.rand(B, Q, M, L, P, 2, generator=g) * 1.2 - 0.1).requires_grad_()
    attn = torch.rand(B, Q, M, L, P, generator=g).softmax(-1).requires_grad_()
    grad_out = torch.randn(B, Q, M * D, generator=g)
    results = []
    for backend in BACKENDS:
        out = backend(value, shapes, loc, attn)
        results.append((out, *torch.autograd.grad(out, (value, loc, attn), grad_out)))
    reference, *fast_backends = results
    for fast in fast_backends:
        for ref, got in zip(reference, fast):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_cpu_dispatch_picks_dense_for_small_problems_and_bag_for_large(monkeypatch):
    value, shapes, loc, attn = inputs(torch.float32, seed=4)
    entries = value.shape[0] * value.shape[1] * value.shape[2] * loc.shape[1]
    monkeypatch.setattr(msda, "DENSE_MAX_ENTRIES", entries)
    assert ms_deform_attn(value, shapes, loc, attn).equal(ms_deform_attn_dense(value, shapes, loc, attn))
    monkeypatch.setattr(msda, "DENSE_MAX_ENTRIES", entries - 1)
    assert ms_deform_attn(value, shapes, loc, attn).equal(ms_deform_attn_bag(value, shapes, loc, attn))


def test_dense_backend_with_bfloat16_values():
    """Under autocast the values arrive in bfloat16 and the locations in float32: the corner
    weights are scattered in float32 and only rounded for the product."""
    value, shapes, loc, attn = inputs(torch.float32)
    value16 = value.to(torch.bfloat16)
    out = ms_deform_attn_dense(value16, shapes, loc, attn)
    assert out.dtype == torch.bfloat16
    expected = naive(value16.double(), shapes, loc.double(), attn.double())
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("table_rows", [5, 9])   # fewer / more rows than a bag's 8 entries
def test_weighted_bags_gradients_equal_embedding_bag_and_sum_bf16_in_float32(table_rows):
    """The bag backend's own backward: float64 gradients = embedding_bag's autograd (bags with
    repeated rows included); with a bfloat16 table a row shared by ~500-800 entries still gets
    its gradient to ~bf16 rounding (the sum runs in float32), within 1% of the exact one."""
    g = torch.Generator().manual_seed(4)
    rows = torch.randint(0, table_rows, (512, 8), generator=g, dtype=torch.int32)
    weights = torch.rand(512, 8, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(table_rows, 3, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(512, 3, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(msda.WeightedBags.apply(rows, weights, table), (weights, table), grad)
    theirs = torch.autograd.grad(torch.nn.functional.embedding_bag(rows.long(), table, per_sample_weights=weights,
                                                                    mode="sum"), (weights, table), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    table16 = table.detach().bfloat16().requires_grad_()
    grad_table16, = torch.autograd.grad(msda.WeightedBags.apply(rows, weights.detach().float(), table16), table16,
                                        grad.bfloat16())
    exact = torch.zeros(table_rows, 3, dtype=torch.float64).index_add_(
        0, rows.view(-1).long(), (weights.detach()[..., None] * grad.bfloat16().double()[:, None, :]).view(-1, 3))
    torch.testing.assert_close(grad_table16.double(), exact, rtol=1e-2, atol=1e-2 * exact.abs().max().item())
