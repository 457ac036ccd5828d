"""Does NMS add anything on top of an NMS-free detector? COCO AP of one trained checkpoint
with its own post-processing and with class-wise NMS (torchvision ``batched_nms``) added at
several IoU thresholds, on a dataset's val split.

    codetr train defcn_tiny --data data/shapes --out runs/defcn
    python benchmarks/nms_ablation.py runs/defcn/last.ckpt --data data/shapes --iou 0.5 0.6 0.7

Works for the dense family (DeFCN / FCOS: ``config.nms_threshold``); POTO's claim (Wang et al.
2021, Table 1) is that the one-to-one assignment makes NMS unnecessary.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="COCO-style root with annotations/instances_val.json and val/")
    p.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.6, 0.7], help="NMS IoU thresholds to try")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from codetr.api import load
    from codetr.config import DataConfig
    from codetr.data.build import val_dataset
    from codetr.data.loader import build_loader
    from codetr.engine.evaluate import evaluate

    model = load(args.checkpoint)
    if model.family != "defcn":
        raise SystemExit(f"{args.checkpoint}: a {model.family} model has no optional NMS (dense family only)")
    dataset = val_dataset(DataConfig(path=args.data), model.input_spec)
    loader = build_loader(dataset, 8, shuffle=False, num_workers=0)
    own = model.config.nms_threshold
    print(f"{args.checkpoint} ({model.family}, own NMS: {own}) on {len(dataset)} val images")
    print("| post-processing | AP | AP50 | AP75 |\n| --- | --- | --- | --- |")
    for iou in [own, *[t for t in args.iou if t != own]]:
        model.config = replace(model.config, nms_threshold=iou)
        m = evaluate(model, loader, dataset.coco, model.classes)
        label = "no NMS" if iou is None else f"+ NMS IoU {iou}"
        print(f"| {label} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} |")


if __name__ == "__main__":
    main()
