"""The fused Triton MSDA kernels against the grid_sample reference, in value and gradient.

On a GPU the kernels run here. Without one they run in Triton's interpreter (numpy on the CPU),
which must be chosen (TRITON_INTERPRET=1) before ``triton.language`` is first imported, and
importing codetr already imports it: so the ``fused`` fixture runs them in one child process
spawned with that variable set. Shapes stay tiny: the interpreter is slow.
"""
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from codetr.ops import msda
from codetr.ops.msda import ms_deform_attn_grid_sample, ms_deform_attn_triton

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_inputs(shapes, batch, queries, heads, channels, points, dtype=torch.float64, seed=0,
                  low=-0.2, high=1.2):
    """value [B, S, M, D], locations [B, Q, M, L, P, 2] uniform in [low, high], softmaxed weights."""
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, channels, generator=g, dtype=dtype)
    loc = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g, dtype=dtype) * (high - low) + low
    attn = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=dtype).softmax(-1)
    return value, loc, attn


def value_and_grads(backend, shapes, value, loc, attn, grad_out):
    """(out, d value, d locations, d weights) of ``backend`` on DEVICE for the output gradient
    ``grad_out``, detached on the CPU."""
    value, loc, attn = (t.detach().to(DEVICE).requires_grad_() for t in (value, loc, attn))
    shapes = shapes.to(DEVICE) if isinstance(shapes, torch.Tensor) else shapes
    out = backend(value, shapes, loc, attn)
    grads = torch.autograd.grad(out, (value, loc, attn), grad_out.to(DEVICE, out.dtype))
    return tuple(t.detach().cpu() for t in (out, *grads))


def fused_value_and_grads(shapes, value, loc, attn, grad_out):
    return value_and_grads(ms_deform_attn_triton, shapes, value, loc, attn, grad_out)


@pytest.fixture(scope="module")
def fused():
    """``fused_value_and_grads``, run here on a GPU, else in a child process under the interpreter."""
    if DEVICE.type == "cuda":
        yield fused_value_and_grads
        return
    with pytest.MonkeyPatch.context() as env:  # the child inherits the environment at spawn
        env.setenv("TRITON_INTERPRET", "1")
        pool = multiprocessing.get_context("spawn").Pool(1)
    with pool:
        yield lambda *args: pool.apply_async(fused_value_and_grads, args).get(timeout=120)


def assert_matches_reference(fused, shapes, value, loc, attn, seed=0, **tolerance):
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], generator=g,
                           dtype=value.dtype)
    got = fused(shapes, value, loc, attn, grad_out)
    expected = value_and_grads(ms_deform_attn_grid_sample, shapes, value, loc, attn, grad_out)
    for name, a, b in zip(("output", "grad value", "grad locations", "grad weights"), got, expected):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}", **tolerance)


def padded_three_levels():
    """Three levels down to 1x1; the second image is padded (its right columns zero)."""
    shapes = [(4, 5), (2, 3), (1, 1)]
    value, loc, attn = random_inputs(shapes, batch=2, queries=5, heads=2, channels=4, points=2)
    value[1, :20].view(4, 5, 2, 4)[:, 3:] = 0
    value[1, 20:26].view(2, 3, 2, 4)[:, 2:] = 0
    return shapes, value, loc, attn


def odd_sizes():
    """Channels, levels x points and queries that are not powers of two (masked lanes)."""
    shapes = [(3, 7), (5, 2), (1, 1)]
    return (shapes, *random_inputs(shapes, batch=1, queries=11, heads=3, channels=6, points=3, seed=1))


def empty_level():
    """A level with no tokens: its points read zeros."""
    shapes = [(3, 4), (0, 5), (2, 2)]
    return (shapes, *random_inputs(shapes, batch=2, queries=3, heads=2, channels=4, points=2, seed=2))


def on_borders():
    """Locations k/8 with maps of power-of-two sides: pixel coordinates fall exactly on pixel
    centres, pixel edges and the map's borders (0 and 1), where the bilinear corners switch."""
    shapes = [(4, 4), (2, 4), (1, 2)]
    value, loc, attn = random_inputs(shapes, batch=1, queries=6, heads=2, channels=4, points=4, seed=3)
    g = torch.Generator().manual_seed(3)
    loc = torch.randint(-4, 13, loc.shape, generator=g).double() / 8
    return shapes, value, loc, attn


def far_outside():
    """Some points far outside the map (pixel coordinates clamped before the int cast) or just
    beyond it, among points on it."""
    shapes = [(3, 3), (2, 2)]
    value, loc, attn = random_inputs(shapes, batch=1, queries=4, heads=2, channels=4, points=2, seed=4)
    loc[0, :, 0, 0, 0] = torch.tensor([[1e9, 0.5], [0.5, -1e9], [-3.0, 4.0], [1.1, -0.1]])
    return shapes, value, loc, attn


@pytest.mark.parametrize("case", [padded_three_levels, odd_sizes, empty_level, on_borders, far_outside])
def test_matches_reference_float64(fused, case):
    shapes, value, loc, attn = case()
    assert_matches_reference(fused, shapes, value, loc, attn, rtol=1e-10, atol=1e-10)


def test_encoder_layout_float32(fused):
    """The encoder's layout (4 levels x 4 points, 8 heads x 32 channels) on a small pyramid."""
    shapes = [(6, 8), (3, 4), (2, 2), (1, 1)]
    value, loc, attn = random_inputs(shapes, batch=2, queries=9, heads=8, channels=32, points=4,
                                     dtype=torch.float32, seed=5)
    assert_matches_reference(fused, shapes, value, loc, attn, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("half_locations", [False, True], ids=["float32_locations", "half_locations"])
def test_half_precision_against_float32_reference(fused, dtype, half_locations):
    """Half values (with float32 locations and weights, as under autocast, or all half): output
    and gradients in the inputs' dtypes, close to the float32 reference on the same numbers."""
    shapes = [(4, 5), (2, 3), (1, 1)]
    value, loc, attn = random_inputs(shapes, batch=2, queries=6, heads=2, channels=8, points=2,
                                     dtype=torch.float32, seed=6)
    value = value.to(dtype)
    if half_locations:
        loc, attn = loc.to(dtype), attn.to(dtype)
    grad_out = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(6)).to(dtype)
    got = fused(shapes, value, loc, attn, grad_out)
    assert [t.dtype for t in got] == [dtype, dtype, loc.dtype, attn.dtype]
    expected = value_and_grads(ms_deform_attn_grid_sample, shapes, value.float(), loc.float(), attn.float(),
                               grad_out.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol)


def test_tensor_and_list_shapes_agree(fused):
    shapes, value, loc, attn = odd_sizes()
    grad_out = torch.randn(1, 11, 18, dtype=value.dtype)
    by_list = fused(shapes, value, loc, attn, grad_out)
    by_tensor = fused(torch.tensor(shapes), value, loc, attn, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(by_list, by_tensor))


def test_inconsistent_shapes_raise():
    shapes, value, loc, attn = padded_three_levels()
    with pytest.raises(ValueError, match="tokens"):
        ms_deform_attn_triton(value[:, 1:], shapes, loc, attn)
    with pytest.raises(ValueError, match="weights"):
        ms_deform_attn_triton(value, shapes, loc, attn[:, :, :, :, :1])


def test_gpu_dispatch_picks_triton_unless_reference_is_forced(monkeypatch):
    monkeypatch.delenv("CODETR_MSDA", raising=False)
    assert msda.gpu_backend() is ms_deform_attn_triton
    monkeypatch.setenv("CODETR_MSDA", "reference")
    assert msda.gpu_backend() is ms_deform_attn_grid_sample


# Builds both kernels for an sm_90 GPU (H100/H200) through Triton's own compiler, which needs no
# GPU: the interpreter above never lowers them, so this is what catches code that only fails to
# compile. float32 throughout, and bfloat16 values with float32 locations (autocast).
COMPILE_FOR_SM90 = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from codetr.ops import msda_triton
const = dict(L=4, P=4, D=32, BLOCK_Q=8, BLOCK_LP=16, BLOCK_D=32, ACC=tl.float32)
for values in ("fp32", "bf16"):
    types = dict(value_ptr=values, grad_out_ptr=values, out_ptr=values, shapes_ptr="i32", starts_ptr="i32")
    for kernel in (msda_triton._forward_kernel, msda_triton._backward_kernel):
        names = kernel.arg_names
        signature = {n: "constexpr" if n in const else "*" + types.get(n, "fp32") if n.endswith("_ptr") else "i32"
                     for n in names}
        aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr")}
        source = ASTSource(kernel, signature, constexprs=const, attrs=aligned)
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
"""


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
