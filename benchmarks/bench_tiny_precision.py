"""Training-step time of a tiny recipe in float32 vs bfloat16 autocast, NCHW vs NHWC (channels
last), on CPU, side by side in one run, with ratios to the float32 / NCHW row.

    codetr data synth /tmp/synth --train 1000 --val 200
    python benchmarks/bench_tiny_precision.py dino_tiny --data /tmp/synth --threads 1 --batch 4
    python benchmarks/bench_tiny_precision.py yolact_tiny --data /tmp/synth --threads 2 --batch 8

Each variant trains the same model (same init) on the same pre-loaded batches through the
recipe's optimizer (forward, loss, backward, AdamW step), the first ``--warmup`` steps untimed;
the median and minimum step over ``--iters`` steps are reported. Data loading and DDP are not
in the figure (see benchmarks/RESULTS.md for whole runs).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import replace

import torch

VARIANTS = [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]


def time_variant(name: str, cfg, dataset, batches, dtype: str, channels_last: bool, warmup: int) -> list[float]:
    from codetr.engine.trainer import build_optimizer
    from codetr.zoo import create

    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create(name, classes=dataset.classes, **cfg.model_args).train().to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.train)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    times = []
    for batch in batches:
        start = time.perf_counter()
        with autocast:
            losses = model(batch.images.contiguous(memory_format=memory_format), batch.sizes, batch.targets)
        sum(v for k, v in losses.items() if k.startswith("loss")).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a tiny zoo model, e.g. dino_tiny, deformable_detr_tiny, defcn_tiny, yolact_tiny")
    p.add_argument("--data", required=True, help="COCO-style root (codetr data synth)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from codetr.data.build import train_dataset
    from codetr.data.loader import build_loader
    from codetr.zoo import recipe

    cfg = recipe(args.model)
    cfg = replace(cfg, data=replace(cfg.data, path=args.data))
    dataset = train_dataset(cfg.data)
    loader = iter(build_loader(dataset, args.batch, shuffle=True, num_workers=0, seed=0))
    batches = [next(loader) for _ in range(args.warmup + args.iters)]
    bf16_units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    print(f"{args.model}: train step, batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}, "
          f"CPU bf16 units: {bf16_units}")
    print("| precision | memory format | median ms | min ms | float32 NCHW / this |")
    print("| --- | --- | --- | --- | --- |")
    baseline = None
    for dtype, channels_last in VARIANTS:
        times = time_variant(args.model, cfg, dataset, batches, dtype, channels_last, args.warmup)
        median = statistics.median(times)
        baseline = baseline or median
        print(f"| {dtype} | {'NHWC' if channels_last else 'NCHW'} | {median * 1e3:.0f} | {min(times) * 1e3:.0f} "
              f"| {baseline / median:.2f} |", flush=True)


if __name__ == "__main__":
    main()
