"""The one seam for random draws in training-time assignment (samplers, Co-DETR positive-query
subsampling, DINO denoising noise).

Each function calls torch exactly as the official code does (same function, same size, the
default CPU generator for ``randperm``), so seeding torch reproduces the official draws. For
parity tests, ``replay(calls)`` makes the seam return recorded values instead: ``calls`` are
the fixture's ``train['random_calls']`` entries ``{'fn', 'site', 'phase', 'value'}``, consumed in
order; the function name and the output shape must match, and the context raises
``ReplayError`` when a draw finds no recorded value left or when values are left unused.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from torch import Tensor


class ReplayError(RuntimeError):
    """A draw did not match the recorded sequence under ``replay``."""


class _Replay:
    """Recorded draws and a cursor."""

    def __init__(self, calls: list[dict]) -> None:
        self.calls = list(calls)
        self.next = 0

    def take(self, fn: str, shape: tuple[int, ...]) -> Tensor:
        if self.next >= len(self.calls):
            raise ReplayError(f"draw #{self.next} ({fn}, shape {shape}) but only "
                              f"{len(self.calls)} recorded draws")
        call = self.calls[self.next]
        value = call["value"]
        where = f"recorded draw #{self.next} ({call['fn']} at {call.get('site', '?')}, phase {call.get('phase', '?')})"
        if call["fn"] != fn:
            raise ReplayError(f"{where} is {call['fn']}, the code calls {fn}")
        if tuple(value.shape) != tuple(shape):
            raise ReplayError(f"{where} has shape {tuple(value.shape)}, the code draws {tuple(shape)}")
        self.next += 1
        return value


_state = threading.local()


def _active() -> _Replay | None:
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def replay(calls: list[dict]) -> Iterator[None]:
    """Within the block every seam draw returns the next recorded ``value`` (moved to the
    requested device / dtype); all of ``calls`` must be consumed by the end of the block."""
    record = _Replay(calls)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(record)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        stack.pop()
        if not failed and record.next != len(record.calls):
            left = record.calls[record.next]
            raise ReplayError(f"{len(record.calls) - record.next} recorded draws left unused, the "
                              f"first {left['fn']} at {left.get('site', '?')}")


def randperm(n: int, device: torch.device | str | None = None) -> Tensor:
    """[n] int64 permutation, drawn on the CPU generator (as mmdet's sampler), then moved."""
    record = _active()
    perm = record.take("randperm", (n,)) if record else torch.randperm(n)
    return perm.to(device=device, dtype=torch.long) if device is not None else perm.long()


def rand_like(x: Tensor) -> Tensor:
    """U[0, 1) of x's shape, dtype and device."""
    record = _active()
    if record is None:
        return torch.rand_like(x)
    return record.take("rand_like", tuple(x.shape)).to(device=x.device, dtype=x.dtype)


def randint_like(x: Tensor, low: int, high: int, dtype: torch.dtype | None = None) -> Tensor:
    """Integers in [low, high) of x's shape and device, in ``dtype`` (default x's dtype)."""
    record = _active()
    if record is None:
        return torch.randint_like(x, low, high, dtype=dtype)
    return record.take("randint_like", tuple(x.shape)).to(device=x.device, dtype=dtype or x.dtype)
