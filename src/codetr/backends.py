"""Device defaults and helpers: TF32, the CPU allocator, sync-free host-to-device tables,
compiled inference.

* ``configure_tf32``: float32 matmuls and convolutions in TF32 on Ampere and later GPUs (on by
  default when training or evaluating on such a GPU; ``CODETR_TF32=0`` turns it off);
* ``configure_cpu_allocator``: freed CPU memory kept for reuse (on by default when training,
  evaluating or predicting on the CPU under glibc; ``CODETR_CPU_MALLOC=system`` turns it off);
* ``host_to_device``: a small table of Python numbers on the GPU without making the host wait
  for the GPU (the models build their per-forward level tables with it);
* ``compile_inference``: opt-in ``torch.compile`` of a detector's eval-mode network pass;
* ``amp_dtype``: the autocast dtype of an ``amp`` setting (``train.amp``, ``--amp``) on a device.
"""
from __future__ import annotations

import copy
import ctypes
import os
import platform
import sys
from collections.abc import Sequence
from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn

TF32_ENV = "CODETR_TF32"
CPU_MALLOC_ENV = "CODETR_CPU_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)
TF32_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs with TF32 tensor cores


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (``train.amp``, eval / predict ``--amp``: none, bf16, fp16
    or auto) on ``device`` (None: full precision). ``"auto"`` is
    bfloat16 where the device computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16
    or AMX: there the tiny recipes step ~1.4x faster) and full precision elsewhere, where
    emulated bfloat16 would be slower than float32."""
    if amp == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and any(
                getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))
        return torch.bfloat16 if native else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def tf32_wanted(device: torch.device | str) -> bool:
    """The default: TF32 on a CUDA GPU of compute capability >= 8.0, unless the environment
    sets ``CODETR_TF32=0`` (or false / off / no)."""
    device = torch.device(device)
    if os.environ.get(TF32_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= TF32_MIN_CAPABILITY


def configure_tf32(enabled: bool | None = None, device: torch.device | str | None = None) -> bool | None:
    """The one switch for TF32 on float32 CUDA matmuls (cuBLAS) and convolutions (cuDNN): 10-bit
    mantissas in the products, float32 accumulation, on Ampere+ tensor cores several times
    faster than float32. ``enabled`` True / False sets both. None (what training and evaluation
    call) applies ``tf32_wanted(device)`` on a CUDA device unless the float32 matmul precision
    has already been chosen (by this function or torch's own API, legacy ``allow_tf32`` and
    ``set_float32_matmul_precision`` included), and changes nothing otherwise. Returns the state
    set (None: unchanged). Uses torch's ``fp32_precision`` API ("tf32" / "ieee"); once it is
    used, torch refuses reads of the legacy ``allow_tf32`` flags."""
    if enabled is None:
        chosen = torch.backends.cuda.matmul.fp32_precision != "none"   # "none": torch's untouched default
        if device is None or torch.device(device).type != "cuda" or chosen:
            return None
        enabled = tf32_wanted(device)
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    return enabled


def configure_cpu_allocator(device: torch.device | str = "cpu") -> bool:
    """Keep freed CPU memory in the process for the next tensors, as a caching allocator does on
    GPUs, unless the environment sets ``CODETR_CPU_MALLOC=system``. glibc serves every block of
    32 MiB or more by a fresh ``mmap`` and returns it on free, so each step of a full-size model
    page-faults gigabytes of new zeroed memory (activations, FFN hiddens): here all blocks come
    from the heap (``M_MMAP_MAX`` 0) and the heap is never trimmed (``M_TRIM_THRESHOLD`` -1).
    The process then holds its peak memory until it exits, and the peak can rise with the
    heap's fragmentation. DINO-R50 train step at 800x1066 on 2 cores: float32 ~25% faster
    (peak RSS 6.8 -> 7.8 GB), bfloat16 ~20% (benchmarks/RESULTS.md).
    Applies only for a CPU ``device`` under glibc (Linux); process-wide, like ``configure_tf32``.
    Returns whether it applied."""
    if torch.device(device).type != "cpu" or os.environ.get(CPU_MALLOC_ENV, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)   # the C library this process runs on
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


def apply_device_defaults(device: torch.device | str) -> None:
    """What training, evaluation and prediction set up for ``device``: TF32 on Ampere+ GPUs
    (``configure_tf32``) and the CPU allocator's reuse of freed memory (``configure_cpu_allocator``)."""
    configure_tf32(device=device)
    configure_cpu_allocator(device)


def host_to_device(rows: Sequence[Sequence[int]] | Sequence[int], device: torch.device,
                   dtype: torch.dtype = torch.int32) -> Tensor:
    """A small table of Python numbers as a tensor on ``device`` without a host sync: a CUDA
    copy from pageable memory waits for every kernel already queued, so the table is staged in
    pinned memory and copied asynchronously (the caching host allocator keeps the pinned block
    until the copy has run). Without a CUDA runtime (a fake CUDA device in the tests) and while
    torch.compile traces (the table is a constant there), a plain non-blocking copy."""
    table = torch.tensor(rows, dtype=dtype, device="cpu")   # on the host whatever the default device
    if device.type == "cpu":
        return table
    if device.type == "cuda" and torch.cuda.is_available() and not torch.compiler.is_compiling():
        table = table.pin_memory()
    return table.to(device, non_blocking=True)


class InferenceForward:
    """A detector's ``forward`` with its eval-mode call ``forward(images, sizes)`` compiled;
    training and calls with more arguments (targets) run the eager forward."""

    def __init__(self, eager: MethodType, **compile_options: Any) -> None:
        self.eager, self.options = eager, compile_options
        self.compiled = torch.compile(eager, **compile_options)

    def __deepcopy__(self, memo: dict) -> InferenceForward:
        """The forward of a deep copy of the model (an EMA, say): compiled for the copy, whose
        weights it reads, not the original's."""
        model = copy.deepcopy(self.eager.__self__, memo)   # the copy being built, when it is the model's
        return InferenceForward(MethodType(self.eager.__func__, model), **self.options)

    def __call__(self, images: Tensor, sizes: Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or self.eager.__self__.training:
            return self.eager(images, sizes, *args, **kwargs)
        return self.compiled(images, sizes)


def compile_inference(model: nn.Module, **compile_options: Any) -> nn.Module:
    """Opt-in compiled inference: from now on ``model(images, sizes)`` in eval mode (the network
    up to its raw outputs) runs through ``torch.compile(**compile_options)`` (e.g.
    ``fullgraph=True``: the forward has no graph break); the post-processing stays eager Python.
    ``predict``, ``detect`` and ``engine.evaluate`` then use it as they are. The level sizes are
    Python ints, so each new input size compiles anew: it pays off for fixed input sizes.
    Changes ``model`` in place (its ``forward``) and returns it."""
    if isinstance(model.forward, InferenceForward):
        raise ValueError("this model's inference is already compiled")
    model.forward = InferenceForward(model.forward, **compile_options)
    return model
