"""Thin helpers over ``torch.distributed``; every function also works in a single process.

A low module: models (loss normalisers) and the engine (DDP, gathering results) both use it,
and it imports nothing of codetr. ``init_distributed()`` reads the torchrun environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and picks nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group described by the torchrun env; True if running distributed.
    Does nothing when WORLD_SIZE is unset or 1, or when already initialized."""
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), init_method="env://")
    return True


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def default_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is untouched)."""
    out = tensor.detach().clone()
    if world_size() > 1:
        if dist.get_backend() == "nccl" and not out.is_cuda:
            out = out.cuda()
        dist.all_reduce(out)
        out = out.to(tensor.device) / world_size()
    return out


def nanmean_over_ranks(tensor: Tensor) -> Tensor:
    """Element-wise mean over ranks of ``tensor``, leaving out the ranks where an element is
    NaN (NaN where it is NaN on every rank)."""
    present = ~tensor.isnan()
    sums = all_reduce_mean(torch.stack([tensor.nan_to_num(0.0), present.to(tensor.dtype)]))
    return sums[0] / sums[1]


def mean_count_over_ranks(count: Tensor | float) -> float:
    """The loss normaliser of every family: ``count`` (target boxes, positive points or priors)
    averaged over ranks, at least 1, so that under DDP each rank's loss is normalised as one
    process holding the whole batch. Collective: every rank calls it, in the same order."""
    count = torch.as_tensor(count, dtype=torch.float32)
    return max(1.0, float(all_reduce_mean(count)))


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank the buffers (BatchNorm running statistics) of rank ``src``, in place."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup(synchronize: bool = False) -> None:
    """Leave the process group (no-op when not distributed). ``synchronize``: first wait until
    every rank gets here, so no rank closes its connections while another still uses them
    (gloo can then abort the other process); only for a normal exit, where every rank calls it."""
    if is_initialized():
        if synchronize:
            dist.barrier()
        gc.collect()  # a DDP wrapper caught in a reference cycle still holds the group
        dist.destroy_process_group()
