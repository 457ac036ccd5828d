"""DDP on one CPU: the training step of a tiny recipe in 2 single-thread gloo processes, with
torch's default DistributedDataParallel settings vs codetr's (``engine.trainer.wrap_ddp``: no
buffer broadcast before each forward, gradients all-reduced in bfloat16), side by side in one run.

    codetr data synth /tmp/synth --train 1000 --val 200
    python benchmarks/bench_ddp_cpu.py deformable_detr_tiny --data /tmp/synth --rounds 2

Both settings train under bfloat16 autocast with NHWC weights (the tiny recipes on a CPU with
bf16 units) on the recipe's per-process batch; the settings alternate ``--rounds`` times, since
this host's speed drifts. Median step of rank 0 after 5 untimed steps.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SETTINGS = ("torch default", "codetr")


def worker(rank: int, port: int, model_name: str, data: str, setting: str, steps: int, out: dict) -> None:
    from codetr.commands import build_run
    from codetr.data.loader import build_loader
    from codetr.engine.trainer import build_optimizer, wrap_ddp
    from codetr.recipes import recipe

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    cfg = recipe(model_name)
    cfg = replace(cfg, data=replace(cfg.data, path=data))
    model, dataset, _ = build_run(cfg)
    model = model.train().to(memory_format=torch.channels_last)
    ddp = (torch.nn.parallel.DistributedDataParallel(model) if setting == "torch default"
           else wrap_ddp(model, torch.device("cpu"), bf16_gradients=True))
    optimizer = build_optimizer(model, cfg.train)
    loader = iter(build_loader(dataset, cfg.train.batch_size, shuffle=True, num_workers=0, seed=0, distributed=True))
    times = []
    for _ in range(steps + 5):
        batch = next(loader)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = ddp(batch.images.contiguous(memory_format=torch.channels_last), batch.sizes, batch.targets)
        losses.total().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out[setting] = statistics.median(times[5:])
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(f"{args.model}: 2 single-thread gloo processes, bf16 autocast, NHWC, median step of rank 0 (ms)")
    print("| round | " + " | ".join(SETTINGS) + " | default / codetr |")
    print("| --- | --- | --- | --- |")
    with mp.Manager() as manager:
        for r in range(args.rounds):
            out = manager.dict()
            for setting in SETTINGS:
                mp.start_processes(worker, args=(free_port(), args.model, args.data, setting, args.steps, out),
                                   nprocs=2, start_method="spawn")
            a, b = (out[s] for s in SETTINGS)
            print(f"| {r + 1} | {a * 1e3:.0f} | {b * 1e3:.0f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
