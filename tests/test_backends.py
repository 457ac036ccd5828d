"""GPU-side defaults (codetr.backends, issue 18) on CPU: the TF32 switch, host -> device tables,
fused AdamW, and compiled inference equal to eager.

Compiled inference is tested with backend="aot_eager" (dynamo + AOT autograd, eager kernels):
inductor's C++ compilation of dino_tiny takes ~4.5 minutes on this 2-core machine, aot_eager
~20 s, and graph capture (``fullgraph=True``: no graph break, hence no sync) is the same.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import platform
import subprocess
import sys

import pytest
import torch

import codetr
from codetr.backends import InferenceForward, compile_inference, configure_tf32, host_to_device, tf32_wanted
from codetr.config import TrainConfig
from codetr.engine.trainer import build_optimizer
from codetr.ops.msda import fused_or_compiled, ms_deform_attn_grid_sample
from codetr.structures import Target


@pytest.fixture
def tf32_flags():
    """Restores torch's float32 precision flags after the test."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def precisions() -> tuple[str, str]:
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


def test_configure_tf32_sets_matmuls_and_convolutions(tf32_flags):
    assert configure_tf32(True) is True and precisions() == ("tf32", "tf32")
    assert configure_tf32(False) is False and precisions() == ("ieee", "ieee")


def test_configure_tf32_default_leaves_cpu_runs_and_chosen_precisions_alone(tf32_flags, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch.backends.cuda.matmul.fp32_precision = "none"
    assert configure_tf32(device="cpu") is None and precisions()[0] == "none"
    assert configure_tf32(device="cuda") is True and precisions() == ("tf32", "tf32")
    configure_tf32(False)   # an explicit choice: the default no longer applies
    assert configure_tf32(device="cuda") is None and precisions() == ("ieee", "ieee")


@pytest.mark.parametrize("capability, env, wanted", [((8, 0), None, True), ((9, 0), "1", True),
                                                     ((7, 5), None, False), ((8, 6), "0", False)])
def test_tf32_is_wanted_on_ampere_and_later_unless_the_environment_says_0(capability, env, wanted, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    if env is None:
        monkeypatch.delenv("CODETR_TF32", raising=False)
    else:
        monkeypatch.setenv("CODETR_TF32", env)
    assert tf32_wanted("cuda") is wanted
    assert tf32_wanted("cpu") is False


def test_host_to_device_keeps_values_and_dtype():
    table = host_to_device([(4, 5), (2, 3)], torch.device("cpu"))
    assert table.dtype == torch.int32 and table.tolist() == [[4, 5], [2, 3]]
    assert host_to_device([1, 2], torch.device("cpu"), torch.float32).tolist() == [1.0, 2.0]


def test_adamw_is_fused_on_cpu_and_cuda_weights_only():
    assert build_optimizer(torch.nn.Linear(2, 2), TrainConfig()).defaults["fused"] is True
    assert build_optimizer(torch.nn.Linear(2, 2, device="meta"), TrainConfig()).defaults["fused"] is False


# ---- compiled inference ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_pair():
    """dino_tiny eager and, with the same weights, compiled (fullgraph, static shapes)."""
    torch.manual_seed(0)
    eager = codetr.create("dino_tiny", num_classes=3).eval()
    compiled = codetr.create("dino_tiny", num_classes=3).eval()
    compiled.load_state_dict(eager.state_dict())
    return eager, compile_inference(compiled, backend="aot_eager", fullgraph=True, dynamic=False)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 3, 64, 64), torch.tensor([[64, 64], [48, 56]])


@torch.no_grad()
def test_compiled_inference_equals_eager(compiled_pair):
    eager, compiled = compiled_pair
    images, sizes = batch()
    ours, ref = compiled(images, sizes), eager(images, sizes)
    torch.testing.assert_close(ours["pred_logits"], ref["pred_logits"])
    torch.testing.assert_close(ours["pred_boxes"], ref["pred_boxes"])
    dets, ref_dets = compiled.detect(images, sizes, [(128, 128)] * 2), eager.detect(images, sizes, [(128, 128)] * 2)
    for d, r in zip(dets, ref_dets, strict=True):
        torch.testing.assert_close((d.boxes, d.scores, d.labels), (r.boxes, r.scores, r.labels))


def test_training_and_calls_with_targets_stay_eager(compiled_pair, monkeypatch):
    _, compiled = compiled_pair
    monkeypatch.setattr(compiled.forward, "compiled", lambda *args: pytest.fail("the compiled forward ran"))
    images, sizes = batch()
    targets = [Target(torch.tensor([[4.0, 4.0, 30.0, 30.0]]), torch.tensor([1]))] * 2
    compiled.train()
    try:
        assert compiled(images, sizes, targets).total().isfinite()
    finally:
        compiled.eval()


def test_compiling_twice_is_refused(compiled_pair):
    with pytest.raises(ValueError, match="already compiled"):
        compile_inference(compiled_pair[1])
    assert isinstance(compiled_pair[1].forward, InferenceForward)


@torch.no_grad()
def test_a_deep_copy_runs_its_own_weights():
    """An EMA deep-copies the model: the copy's compiled forward must read the copy's weights."""
    model = compile_inference(codetr.create("dino_tiny", num_classes=3, enc_layers=1, dec_layers=1).eval(),
                              backend="eager")
    twin = copy.deepcopy(model)
    twin.class_embed[0].bias.add_(1.0)   # shared by the decoder layers
    images, sizes = batch()
    torch.testing.assert_close(twin(images, sizes)["pred_logits"], model(images, sizes)["pred_logits"] + 1.0)


def msda_inputs() -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """shapes, value [1, S, 2, 4], locations [1, 5, 2, L, 2, 2], weights [1, 5, 2, L, 2]."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    value = torch.randn(1, 26, 2, 4, generator=g)
    loc = torch.rand(1, 5, 2, 2, 2, 2, generator=g) * 1.4 - 0.2
    attn = torch.rand(1, 5, 2, 2, 2, generator=g).softmax(-1)
    return shapes, value, loc, attn


def compiled_fused_error() -> float:
    """Max |compiled fused MSDA - reference| (fullgraph, no gradient: the custom op). Run in a child
    process under Triton's interpreter."""
    shapes, value, loc, attn = msda_inputs()
    table = torch.tensor(shapes, dtype=torch.int32)
    with torch.no_grad():
        out = torch.compile(fused_or_compiled, backend="aot_eager", fullgraph=True)(value, shapes, loc, attn, table)
    return (out - ms_deform_attn_grid_sample(value, shapes, loc, attn)).abs().max().item()


def test_compiled_fused_msda_is_one_opaque_op_equal_to_the_reference(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")   # the spawned child inherits it
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply_async(compiled_fused_error).get(timeout=300) < 1e-5


def test_compiled_msda_with_gradients_uses_the_reference():
    shapes, value, loc, attn = msda_inputs()
    table = torch.tensor(shapes, dtype=torch.int32)
    value.requires_grad_()
    out = torch.compile(fused_or_compiled, backend="aot_eager", fullgraph=True)(value, shapes, loc, attn, table)
    (grad,) = torch.autograd.grad(out.sum(), value)
    ref_value = value.detach().requires_grad_()
    (ref_grad,) = torch.autograd.grad(ms_deform_attn_grid_sample(ref_value, shapes, loc, attn).sum(), ref_value)
    torch.testing.assert_close(grad, ref_grad)


MAPPED_BLOCKS = r"""
import ctypes, sys, torch
from codetr.backends import configure_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mmapped_while_held():   # bytes in mmap'ed blocks while a 64 MiB tensor is alive
    t = torch.empty(64 << 20, dtype=torch.uint8)
    held = libc.mallinfo2().hblkhd
    del t
    return held

before = mmapped_while_held()
applied = configure_cpu_allocator(sys.argv[1])
print(applied, before >= 64 << 20, mmapped_while_held() >= 64 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("device, env, expected", [
    ("cpu", "", "True True False"),            # large blocks now come from the heap, not mmap
    ("cpu", "system", "False True True"),      # the documented opt-out
    ("cuda", "", "False True True"),           # a GPU run leaves the host allocator alone
])
def test_cpu_allocator_serves_large_blocks_from_the_heap(device, env, expected):
    """``configure_cpu_allocator`` changes this process's glibc malloc (so it runs in a child):
    a 64 MiB tensor is mmap'ed (page-faulted anew each time) before, and not after."""
    result = subprocess.run([sys.executable, "-c", MAPPED_BLOCKS, device], capture_output=True, text=True,
                            env={**os.environ, "CODETR_CPU_MALLOC": env}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected.split()
