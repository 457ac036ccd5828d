"""No host syncs in the eval forward of the DETR models (issue 18).

A host sync is an op after which the host waits for the device: a read of device values
(``.item()``, ``bool()``, ``nonzero``, boolean-mask indexing, ...) or a blocking copy between host
and device. ``HostSyncs``, a dispatch mode, records them as aten ops:

* on CPU tensors it sees every read of values (the same aten ops run on every device);
* copies only exist with a device, so the forward also runs on a *fake* CUDA device
  (``FakeTensorMode``: shapes and devices without data, no GPU needed), where a host <-> device
  copy shows up as ``_to_copy`` / ``copy_`` across devices.

Each eval forward makes exactly one host -> device copy, asynchronous: the level table
(``LevelLayout.hw``: (H_l, W_l) of the levels, built from Python ints and staged in pinned
memory on a real GPU), read by the fused MSDA kernel. On a GPU, ``torch.cuda.set_sync_debug_mode``
checks the same forward for real.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import codetr
from codetr.backends import host_to_device

aten = torch.ops.aten
# ops that read device values (item / bool / int all reach the mode as _local_scalar_dense)
READS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.equal, aten.allclose, aten._unique2,
         aten.unique_dim, aten.unique_consecutive, aten.unique_dim_consecutive, aten.bincount, aten.histc}
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
MODELS = ["deformable_detr_tiny", "dino_tiny", "co_dino_tiny", "dino_r50_4scale"]


def sync_reason(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> str | None:
    """Why ``func`` makes the host wait for the device, or None."""
    packet = func.overloadpacket
    if packet in READS:
        return "reads device values"
    if packet in INDEXING and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
        return "boolean-mask index (a nonzero)"
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    return copy_reason(func, args, kwargs)


def copy_reason(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> str | None:
    """Host <-> device copies: device -> host always waits, host -> device unless non_blocking."""
    if func is aten._to_copy.default:
        src, dst = args[0].device, torch.device(kwargs.get("device") or args[0].device)
        non_blocking = kwargs.get("non_blocking", False)
    elif func is aten.copy_.default:
        src, dst = args[1].device, args[0].device
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    else:
        return None
    if src.type != "cpu" and dst.type == "cpu":
        return "device -> host copy"
    if src.type == "cpu" and dst.type != "cpu":
        return "async host -> device copy" if non_blocking else "blocking host -> device copy"
    return None


class HostSyncs(TorchDispatchMode):
    """Records the host syncs of the ops run under it (``syncs``) and, apart, the asynchronous
    host -> device copies (``async_copies``), as 'op: reason' strings."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.async_copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            (self.async_copies if reason.startswith("async") else self.syncs).append(f"{func}: {reason}")
        return func(*args, **kwargs)


def recorded(fn: Callable[[], object]) -> HostSyncs:
    with HostSyncs() as mode:
        fn()
    return mode


# ---- the counter -----------------------------------------------------------------------------
x = torch.tensor([0.5, -1.0, 2.0])   # the toy ops' input


@pytest.mark.parametrize("op, expected", [
    (lambda: x.sum().item(), "aten._local_scalar_dense.default: reads device values"),
    (lambda: bool(x.sum()), "aten._local_scalar_dense.default: reads device values"),
    (lambda: torch.equal(x, x), "aten.equal.default: reads device values"),
    (lambda: x[x > 0], "aten.index.Tensor: boolean-mask index (a nonzero)"),
    (lambda: x.clone().__setitem__(x > 0, 0.0), "aten.index_put_.default: boolean-mask index (a nonzero)"),
    (lambda: x.nonzero(), "aten.nonzero.default: reads device values"),
    (lambda: torch.unique(x), "aten._unique2.default: reads device values"),
    (lambda: x.masked_select(x > 0), "aten.masked_select.default: reads device values"),
    (lambda: x.repeat_interleave(torch.tensor([1, 2, 0])), "aten.repeat_interleave.Tensor: "
                                                           "repeat_interleave without output_size"),
])
def test_counter_catches_reads_of_device_values(op, expected):
    assert expected in recorded(op).syncs


def test_counter_passes_sync_free_ops():
    def sync_free():
        mask = x > 0
        x.masked_fill(~mask, 0.0).topk(2)
        torch.where(mask, x, x.new_zeros(()))
        x.repeat_interleave(torch.tensor([1, 2, 0]), output_size=3)
    mode = recorded(sync_free)
    assert mode.syncs == [] and mode.async_copies == []


def test_counter_catches_copies_on_a_fake_gpu():
    with FakeTensorMode():
        on_gpu = torch.zeros(3, device="cuda")
        mode = recorded(lambda: (on_gpu.cpu(), torch.tensor([1, 2], device="cuda"),
                                 host_to_device([(1, 2)], torch.device("cuda"))))
    assert mode.syncs == ["aten._to_copy.default: device -> host copy",
                          "aten._to_copy.default: blocking host -> device copy"]
    assert mode.async_copies == ["aten._to_copy.default: async host -> device copy"]


# ---- the models ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return codetr.create(request.param, num_classes=3).eval()


def inputs(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64 x 64 padded images, the second with padding (valid 48 x 56)."""
    return torch.randn(2, 3, 64, 64, device=device), torch.tensor([[64, 64], [48, 56]], device=device)


@torch.no_grad()
def test_eval_forward_and_postprocess_read_nothing_back(model):
    """Real tensors on CPU: no read of values in the forward nor in the top-k post-processing
    (Co-DETR's reads the number of detections over ``score_thr`` once at the very end, with
    ``tolist``, which a CPU tensor serves without an aten op)."""
    images, sizes = inputs()
    forward = recorded(lambda: model(images, sizes))
    out = model(images, sizes)
    post = recorded(lambda: model.postprocess(out, sizes))
    assert forward.syncs == [] and post.syncs == []


def on_fake_gpu(model: torch.nn.Module, fake: FakeTensorMode) -> None:
    """Replaces ``model``'s weights and buffers by fake CUDA tensors, in place (shared ones stay shared)."""
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is not None:
                    tensors[name] = fake.from_tensor(t).to("cuda")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("msda", ["triton", "reference"])
@torch.no_grad()
def test_eval_forward_on_a_fake_gpu_copies_one_level_table(name, msda, monkeypatch):
    """On a (fake) CUDA device, with either MSDA backend: no sync and exactly one asynchronous
    host -> device copy per forward, the level table. The Triton kernels are not launched
    (fake tensors hold no data); what leads to them (the level tables) runs."""
    if msda == "triton":
        msda_triton = pytest.importorskip("codetr.ops.msda_triton")
        monkeypatch.setattr(msda_triton, "_launch", lambda *args: None)
    monkeypatch.setenv("CODETR_MSDA", msda)
    model = codetr.create(name, num_classes=3).eval()
    with FakeTensorMode() as fake:
        on_fake_gpu(model, fake)
        images, sizes = inputs("cuda")
        mode = recorded(lambda: model(images, sizes))
    assert mode.syncs == []
    assert mode.async_copies == ["aten._to_copy.default: async host -> device copy"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_eval_forward_on_cuda_does_not_sync(model):
    """The real check: CUDA's sync debug mode raises on any synchronizing call. The first call
    runs outside it (kernel compilation, cuBLAS / cuDNN set-up)."""
    model = model.cuda()
    images, sizes = inputs("cuda")
    out = model(images, sizes)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(images, sizes)
        if model.family != "co_detr":  # Co-DETR's ends with one read of the detection counts
            model.postprocess(out, sizes)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        model.cpu()
