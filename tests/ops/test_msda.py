"""Multi-scale deformable attention: the reference against a naive per-point loop, gradcheck."""
import torch

from codetr.ops.msda import ms_deform_attn


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


def test_reference_matches_naive_loop():
    value, shapes, loc, attn = inputs(torch.float64)
    torch.testing.assert_close(ms_deform_attn(value, shapes, loc, attn), naive(value, shapes, loc, attn))


def test_tensor_and_list_shapes_agree():
    value, shapes, loc, attn = inputs(torch.float32, seed=1)
    assert torch.equal(ms_deform_attn(value, shapes, loc, attn),
                       ms_deform_attn(value, torch.tensor(shapes), loc, attn))


def test_gradcheck():
    value, shapes, loc, attn = inputs(torch.float64, seed=2)
    # keep points away from pixel-centre lines where bilinear interpolation has kinks
    value.requires_grad_(); loc.requires_grad_(); attn.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, shapes, l, a), (value, loc, attn),
                                    eps=1e-6, atol=1e-5)
