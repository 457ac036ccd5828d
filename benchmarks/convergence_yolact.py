"""How fast yolact_tiny learns the synthetic shapes: box / mask AP50 vs images seen.

    codetr data synth /tmp/synth_yolact
    python benchmarks/convergence_yolact.py --data /tmp/synth_yolact --minutes 8 --threads 2 \
        --set train.lr=2e-3 model_args.fpn_features=64

Trains the zoo recipe (plus ``--set`` overrides) for a wall-clock budget with AdamW, linear
warmup and one LR drop (x0.1) at ``--drop`` of the budget, and evaluates (COCO box and mask
AP on ``--val-images`` val images, not counted in the budget) at the fractions ``--evals``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="yolact_tiny")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--drop", type=float, default=0.8, help="fraction of the budget where the LR drops")
    p.add_argument("--evals", type=float, nargs="*", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--set", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from torch.utils.data import Subset

    from codetr.config import apply_overrides
    from codetr.commands import build_run
    from codetr.data.loader import build_loader
    from codetr.engine.evaluate import evaluate
    from codetr.engine.trainer import build_optimizer
    from codetr.recipes import recipe

    cfg = recipe(args.model)
    cfg = apply_overrides(replace(cfg, data=replace(cfg.data, path=args.data)), args.set)
    tc = cfg.train
    model, train_ds, val_ds = build_run(cfg)
    optimizer = build_optimizer(model, tc)
    loader = build_loader(train_ds, tc.batch_size, shuffle=True, num_workers=0, drop_last=True, seed=tc.seed)
    val_ids = list(range(min(args.val_images, len(val_ds))))
    val_loader = build_loader(Subset(val_ds, val_ids), 8, shuffle=False, num_workers=0)
    coco_gt = val_ds.coco
    budget = args.minutes * 60
    evals = sorted(args.evals)
    trained, step, images, dropped = 0.0, 0, 0, False
    print(f"{args.model} {' '.join(args.set)}", flush=True)
    while evals:
        for batch in loader:
            start = time.perf_counter()
            warm = min(1.0, (step + 1) / max(tc.warmup_iters, 1))
            for group in optimizer.param_groups:
                group["lr"] = tc.lr * group["lr_multiplier"] * warm * (0.1 if dropped else 1.0)
            model.train()
            losses = model(batch.images, batch.sizes, batch.targets)
            total = losses.total()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if tc.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_max_norm)
            optimizer.step()
            trained += time.perf_counter() - start
            step, images = step + 1, images + len(batch)
            dropped = trained >= args.drop * budget
            if step % 50 == 0:
                print(f"  step {step} {trained:.0f}s loss {float(total.detach()):.3f} "
                      + " ".join(f"{k[5:]} {float(v.detach()):.3f}" for k, v in losses.losses.items()), flush=True)
            if evals and trained >= evals[0] * budget:
                evals.pop(0)
                t0 = time.perf_counter()
                m = evaluate(model, val_loader, coco_gt, train_ds.classes)
                print(f"EVAL train {trained:.0f}s images {images} step {step} ({trained / step:.2f} s/step) "
                      f"box AP50 {m['AP50']:.3f} mask AP50 {m.get('mask_AP50', float('nan')):.3f} "
                      f"box AP {m['AP']:.3f} mask AP {m.get('mask_AP', float('nan')):.3f} "
                      f"(eval {time.perf_counter() - t0:.0f}s)", flush=True)
            if not evals:
                break


if __name__ == "__main__":
    main()
