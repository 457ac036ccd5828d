"""CPU benchmark: codetr's DINO vs Hugging Face transformers' Deformable DETR, side by side.

What is measured (both randomly initialised, nothing downloaded):

* codetr  ``codetr.zoo.create("dino_r50_4scale", num_classes=91)``: official DINO-4scale R50
  (900 queries, 6 + 6 layers, d=256, FFN 2048, dropout 0, contrastive denoising with the
  official budget dn_number=100, i.e. 200 // (2 * max objects) groups).
* HF      ``DeformableDetrForObjectDetection``, two-stage + box refine at the same sizes (900
  queries and proposals, 6 + 6 layers, d=256, FFN 2048, dropout 0, R50 via timm with stem +
  layer1 frozen). transformers has no DINO; this is the closest model it ships. DINO does
  more work per step: its denoising queries (here 5 boxes/image -> 20 groups = 200 extra
  decoder queries in training) and the denoising / encoder losses.

Phases and measurement are those of ``bench_deformable_detr.py`` (imported from it): ``eval``
(no_grad forward) and ``train`` (forward + loss + backward + AdamW step) on a random
``B x 3 x H x W`` batch, interleaved A/B repetitions, median wall time, the ratio HF / codetr,
peak RSS, and the share of codetr's step spent in the Hungarian matcher (every call: final,
auxiliary and encoder outputs), in ``ms_deform_attn`` (forward) and in ``AdamW.step``.

    python benchmarks/bench_dino.py --iters 3 --batch 1 --size 800 1066 [--only codetr]
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_deformable_detr as common  # noqa: E402  (sets the HF offline variables first)
import torch  # noqa: E402
from torch import nn  # noqa: E402

from codetr.backends import configure_cpu_allocator  # noqa: E402
from bench_deformable_detr import (NUM_CLASSES, HotTimer, Inputs, Runner, adamw, hf_labels,  # noqa: E402
                                   make_inputs, valid_mask)

NUM_QUERIES = 900


def hf_model() -> nn.Module:
    """HF two-stage + box-refine Deformable DETR at DINO-4scale's sizes."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection
    config = DeformableDetrConfig(
        two_stage=True, with_box_refine=True, num_queries=NUM_QUERIES, two_stage_num_proposals=NUM_QUERIES,
        encoder_layers=6, decoder_layers=6, d_model=256, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        encoder_attention_heads=8, decoder_attention_heads=8, num_feature_levels=4,
        encoder_n_points=4, decoder_n_points=4, num_labels=NUM_CLASSES, backbone="resnet50",
        use_timm_backbone=True, use_pretrained_backbone=False, dropout=0.0, activation_dropout=0.0,
        attention_dropout=0.0, auxiliary_loss=True, class_cost=2, bbox_cost=5, giou_cost=2)
    model = DeformableDetrForObjectDetection(config)
    for name, p in model.model.backbone.model.named_parameters():  # freeze stem + layer1, as codetr
        if not name.startswith(("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    return model


def build_hf() -> Runner:
    model = hf_model()
    opt = adamw(model)

    @torch.no_grad()
    def eval_step(x: Inputs) -> None:
        model.eval()
        model(pixel_values=x.images, pixel_mask=valid_mask(x))

    def train_step(x: Inputs) -> None:
        model.train()
        out = model(pixel_values=x.images, pixel_mask=valid_mask(x), labels=hf_labels(x))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return Runner("hf", model, eval_step, train_step, opt)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=None, help="timed repetitions of both phases (overrides below)")
    p.add_argument("--train-iters", type=int, default=3)
    p.add_argument("--eval-iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--size", type=int, nargs=2, default=[800, 1066], metavar=("H", "W"))
    p.add_argument("--boxes", type=int, default=5, help="random target boxes per image")
    p.add_argument("--phases", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    p.add_argument("--only", choices=["codetr", "hf"], default=None)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print the top N ops of one profiled codetr train step (batch = first --batch)")
    p.add_argument("--out", default=None, help="append the table (with command, machine, date) here")
    p.add_argument("--codetr-amp", nargs="+", default=["none"], choices=["none", "bf16", "auto"],
                   help="codetr runners: one per precision (HF runs float32)")
    p.add_argument("--cpu-malloc", choices=["system", "reuse"], default="system",
                   help="the process's allocator, for both models: glibc's default, or freed memory kept "
                        "for reuse (codetr.backends.configure_cpu_allocator, what codetr's train / eval / "
                        "predict set)")
    return p.parse_args(argv)


def build_runners(only: str | None, codetr_amps: list[str]) -> list[Runner]:
    builds = [(lambda amp=amp: common.codetr_runner("dino_r50_4scale", amp)) for amp in codetr_amps
              ] if only in (None, "codetr") else []
    runners = []
    for build in builds + ([build_hf] if only in (None, "hf") else []):
        torch.manual_seed(0)
        runners.append(build())
    return runners


def report(args: argparse.Namespace, argv: list[str], runners: list[Runner], rows: list[str]) -> str:
    command = "python benchmarks/bench_dino.py " + " ".join(argv)
    groups = 200 // (2 * args.boxes) if args.boxes else 0
    lines = [f"### DINO {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "",
             f"- command: `{command.strip()}`", f"- machine: {common.machine_info()}",
             f"- {common.versions()}, CPU allocator: {args.cpu_malloc}",
             f"- input {args.size[0]}x{args.size[1]}, {args.boxes} target boxes/image "
             f"(codetr train: {groups} denoising groups = {2 * args.boxes * groups} extra queries)",
             *common.param_lines(runners), "", *common.TABLE_HEAD, *rows, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cpu_malloc == "reuse" and not configure_cpu_allocator():
        raise SystemExit("--cpu-malloc reuse needs glibc")
    runners = build_runners(args.only, args.codetr_amp)
    hot = HotTimer()
    hot.install(next((r.optimizer for r in runners if r.name == "codetr"), None))
    text = report(args, argv, runners, common.run_all(args, runners, hot))
    print(text)
    if args.profile and runners[0].name == "codetr":
        common.profile_train_step(runners[0], make_inputs(args.batch[0], *args.size, args.boxes), args.profile)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
