"""Running test workers in several spawned processes (DDP on CPU with gloo)."""
import socket
import time

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(worker, args: tuple, nprocs: int = 2, timeout_s: float = 180) -> None:
    """Spawn ``worker(rank, *args)`` in ``nprocs`` processes; fail the test if they do not all
    finish within ``timeout_s`` (a worker's exception fails it too)."""
    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{nprocs} worker processes did not finish in {timeout_s:.0f} s")
