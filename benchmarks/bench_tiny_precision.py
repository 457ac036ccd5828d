"""Training-step time of a tiny recipe in float32 vs bfloat16 autocast, NCHW vs NHWC (channels
last), on CPU, side by side in one run, with ratios to the float32 / NCHW row.

    codetr data synth /tmp/synth --train 1000 --val 200
    python benchmarks/bench_tiny_precision.py dino_tiny --data /tmp/synth --threads 1 --batch 4
    python benchmarks/bench_tiny_precision.py yolact_tiny --data /tmp/synth --threads 2 --batch 8

Each variant trains the same model (same init) on the same pre-loaded batches through the
recipe's optimizer (forward, loss, backward, AdamW step); the variants take turns for
``--rounds`` rounds (the first ``--warmup`` steps of each untimed), and the median and minimum
step over all rounds are reported. Data loading and DDP are not
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


class Variant:
    """One model (same init for every variant) with its optimizer, precision and memory format."""

    def __init__(self, name: str, cfg, dataset, dtype: str, channels_last: bool) -> None:
        from codetr.engine.trainer import build_optimizer
        from codetr.zoo import create

        torch.manual_seed(0)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = create(name, classes=dataset.classes, **cfg.model_args).train().to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.dtype = dtype

    def step_times(self, batches) -> list[float]:
        times = []
        for batch in batches:
            start = time.perf_counter()
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.dtype == "bfloat16"
                        else contextlib.nullcontext())
            with autocast:
                losses = self.model(batch.images.contiguous(memory_format=self.memory_format), batch.sizes,
                                    batch.targets)
            losses.total().backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a tiny zoo model, e.g. dino_tiny, deformable_detr_tiny, defcn_tiny, yolact_tiny")
    p.add_argument("--data", required=True, help="COCO-style root (codetr data synth)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from codetr.commands import build_run
    from codetr.data.loader import build_loader
    from codetr.recipes import recipe

    cfg = recipe(args.model)
    cfg = replace(cfg, data=replace(cfg.data, path=args.data))
    _, dataset, _ = build_run(cfg)
    loader = iter(build_loader(dataset, args.batch, shuffle=True, num_workers=0, seed=0))
    batches = [next(loader) for _ in range(args.warmup + args.iters)]
    bf16_units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    print(f"{args.model}: train step, batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}, "
          f"CPU bf16 units: {bf16_units}; {args.rounds} interleaved rounds of {args.iters} steps")
    variants = {v: Variant(args.model, cfg, dataset, *v) for v in VARIANTS}
    times: dict[tuple, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):  # interleaved: this host's speed drifts over minutes
        for v, variant in variants.items():
            times[v] += variant.step_times(batches)[args.warmup:]
    print("| precision | memory format | median ms | min ms | float32 NCHW / this |")
    print("| --- | --- | --- | --- | --- |")
    baseline = statistics.median(times[VARIANTS[0]])
    for (dtype, channels_last), ts in times.items():
        median = statistics.median(ts)
        print(f"| {dtype} | {'NHWC' if channels_last else 'NCHW'} | {median * 1e3:.0f} | {min(ts) * 1e3:.0f} "
              f"| {baseline / median:.2f} |")

if __name__ == "__main__":
    main()
