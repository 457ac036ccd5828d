"""CPU benchmark: codetr's Deformable DETR vs Hugging Face transformers', side by side.

What is measured (both models randomly initialised, nothing downloaded):

* codetr   ``codetr.zoo.create("deformable_detr_r50_two_stage", num_classes=91)``
* HF       ``DeformableDetrForObjectDetection`` with the same configuration (R50 via timm,
  box refine + two-stage, 300 queries, 6 + 6 layers, d=256, FFN 1024, 4 levels x 4 points,
  aux losses on). The parameter counts of both are printed; HF's timm backbone is left fully
  trainable by transformers, so this script freezes its stem + layer1 like codetr (and official).
  By default HF's FFN-activation and decoder self-attention dropouts are set to 0.1 like codetr
  and official (transformers' defaults are 0: ``--hf-dropout default``).

Phases, per batch size, on a random ``B x 3 x H x W`` image batch (all pixels valid):

* ``eval``:  ``model.eval()`` + ``torch.no_grad()`` forward (no post-processing).
* ``train``: ``model.train()`` (dropout 0.1, see above), forward + loss on a few random
  target boxes + backward + ``AdamW.step()``.

Each phase warms both models up, then runs ``iters`` repetitions, interleaved A/B (the order
flips each repetition) so machine drift hits both; the table reports the median wall time and
the ratio HF / codetr.

Memory: before each timed step the process's peak RSS (VmHWM) is reset via
``/proc/self/clear_refs``; the table reports the peak RSS reached during the step (whole
process: both models' weights included) and its rise over the RSS just before the step.

Hot parts of codetr: ``HungarianMatcher.__call__``, ``ms_deform_attn`` (forward only; its
backward runs inside autograd and is not counted) and ``AdamW.step`` are wrapped with a
wall-clock timer during codetr's timed steps and reported as a share of codetr's step time.
``--profile N`` adds one torch.profiler'd codetr train step and prints its top N ops (stderr).

    python benchmarks/bench_deformable_detr.py --iters 3 --batch 1 --size 800 1066 [--only codetr]
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import codetr.zoo  # noqa: E402
from codetr.backends import amp_dtype, configure_cpu_allocator  # noqa: E402
import codetr.nn.deformable_attention as codetr_msda_site  # noqa: E402
from codetr.assign.hungarian import HungarianMatcher  # noqa: E402
from codetr.boxes import xyxy_to_cxcywh  # noqa: E402
from codetr.structures import Target  # noqa: E402

NUM_CLASSES = 91
HOT_PARTS = ("hungarian", "ms_deform_attn", "adamw_step")


# -- inputs -------------------------------------------------------------------------------
@dataclass
class Inputs:
    images: Tensor          # [B, 3, H, W]
    sizes: Tensor           # [B, 2] valid (h, w)
    targets: list[Target]   # absolute xyxy boxes


def make_inputs(batch: int, height: int, width: int, boxes_per_image: int, seed: int = 0) -> Inputs:
    """Random images and ``boxes_per_image`` random boxes (>= 32 px) per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    sizes = torch.tensor([[height, width]] * batch, dtype=torch.long)
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width - 64.0, height - 64.0])
        wh = 32 + torch.rand(boxes_per_image, 2, generator=g) * (torch.tensor([width, height]) - xy - 32)
        labels = torch.randint(0, NUM_CLASSES, (boxes_per_image,), generator=g)
        targets.append(Target(boxes=torch.cat([xy, xy + wh], 1), labels=labels))
    return Inputs(images, sizes, targets)


def hf_labels(inputs: Inputs) -> list[dict[str, Tensor]]:
    """codetr Targets -> HF labels: {'class_labels', 'boxes' normalized cxcywh}."""
    out = []
    for t, (h, w) in zip(inputs.targets, inputs.sizes.tolist()):
        scale = torch.tensor([w, h, w, h], dtype=t.boxes.dtype)
        out.append({"class_labels": t.labels, "boxes": xyxy_to_cxcywh(t.boxes / scale)})
    return out


# -- models -------------------------------------------------------------------------------
@dataclass
class Runner:
    """One model with its eval step and train step (both take the same Inputs)."""
    name: str
    model: nn.Module
    eval_step: Callable[[Inputs], None]
    train_step: Callable[[Inputs], None]
    optimizer: torch.optim.Optimizer

    def params(self) -> tuple[int, int]:
        ps = list(self.model.parameters())
        return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)


def codetr_runner(zoo_name: str, amp: str = "none") -> Runner:
    """codetr's ``zoo_name``; eval through ``eval_forward`` (the network pass of ``codetr eval``
    and ``predict``: NHWC on CPU, autocast to ``amp``); train under autocast to ``amp`` as
    ``train.amp`` does. Named "codetr", or "codetr-<amp>" in mixed precision."""
    model = codetr.zoo.create(zoo_name, num_classes=NUM_CLASSES)
    opt = adamw(model)
    dtype = amp_dtype(amp, torch.device("cpu"))

    def eval_step(x: Inputs) -> None:
        model.eval_forward(x.images, x.sizes, dtype)

    def train_step(x: Inputs) -> None:
        model.train()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            losses = model(x.images, x.sizes, x.targets)
        loss = losses.total()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Runner("codetr" if dtype is None else f"codetr-{amp}", model, eval_step, train_step, opt)


def hf_model(official_dropout: bool = True) -> nn.Module:
    """HF Deformable DETR at codetr's configuration. transformers defaults to no dropout after
    the FFN activation nor in the decoder self-attention (``activation_dropout`` and
    ``attention_dropout`` = 0); ``official_dropout`` sets both to 0.1 as official and codetr."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection
    extra = {"activation_dropout": 0.1, "attention_dropout": 0.1} if official_dropout else {}
    config = DeformableDetrConfig(
        two_stage=True, with_box_refine=True, num_queries=300, two_stage_num_proposals=300,
        encoder_layers=6, decoder_layers=6, d_model=256, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
        encoder_attention_heads=8, decoder_attention_heads=8, num_feature_levels=4,
        encoder_n_points=4, decoder_n_points=4, num_labels=NUM_CLASSES, backbone="resnet50",
        use_timm_backbone=True, use_pretrained_backbone=False, dropout=0.1, auxiliary_loss=True,
        class_cost=2, bbox_cost=5, giou_cost=2, **extra)
    model = DeformableDetrForObjectDetection(config)
    # transformers only freezes ResNet stem + layer1 for model_type "resnet", not "timm_backbone":
    # freeze them here as codetr (backbone_frozen_stages=1) and the official code do.
    for name, p in model.model.backbone.model.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    return model


def build_hf(official_dropout: bool = True) -> Runner:
    model = hf_model(official_dropout)
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


def valid_mask(x: Inputs) -> Tensor:
    """[B, H, W] long, 1 on valid pixels (HF's pixel_mask convention)."""
    H, W = x.images.shape[-2:]
    rows = torch.arange(H)[None, :, None] < x.sizes[:, 0, None, None]
    cols = torch.arange(W)[None, None, :] < x.sizes[:, 1, None, None]
    return (rows & cols).long()


# -- measurement helpers ------------------------------------------------------------------
class HotTimer:
    """Accumulates wall time of codetr's Hungarian matcher and ms_deform_attn while enabled."""

    def __init__(self) -> None:
        self.enabled = False
        self.seconds = dict.fromkeys(HOT_PARTS, 0.0)
        self.calls = dict.fromkeys(HOT_PARTS, 0)

    def wrap(self, key: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1
        return timed

    def install(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Patch the matcher class, the name ``ms_deform_attn`` where codetr's attention module
        looks it up, and (if given) ``optimizer.step``."""
        if optimizer is not None:
            optimizer.step = self.wrap("adamw_step", optimizer.step)
        HungarianMatcher.__call__ = self.wrap("hungarian", HungarianMatcher.__call__)
        codetr_msda_site.ms_deform_attn = self.wrap("ms_deform_attn", codetr_msda_site.ms_deform_attn)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(HOT_PARTS, 0.0)
        self.calls = dict.fromkeys(HOT_PARTS, 0)


def rss_kb(key: str) -> int:
    """VmRSS / VmHWM of this process in kB (Linux), 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Samples:
    ms: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    rise_mb: list[float] = field(default_factory=list)
    hot_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HOT_PARTS})


def timed_call(step: Callable[[Inputs], None], x: Inputs, samples: Samples) -> None:
    before = rss_kb("VmRSS")
    reset_peak_rss()
    t0 = time.perf_counter()
    step(x)
    samples.ms.append((time.perf_counter() - t0) * 1e3)
    peak = rss_kb("VmHWM")
    samples.peak_mb.append(peak / 1024)
    samples.rise_mb.append(max(peak - before, 0) / 1024)


def run_phase(runners: list[Runner], phase: str, x: Inputs, warmup: int, iters: int,
              hot: HotTimer) -> dict[str, Samples]:
    """Warm up every runner, then ``iters`` interleaved repetitions (order flips each time)."""
    for _ in range(warmup):
        for r in runners:
            getattr(r, f"{phase}_step")(x)
    results = {r.name: Samples() for r in runners}
    for i in range(iters):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            hot.reset()
            hot.enabled = r.name == "codetr"
            timed_call(getattr(r, f"{phase}_step"), x, results[r.name])
            hot.enabled = False
            if r.name == "codetr":
                for k in HOT_PARTS:
                    results[r.name].hot_ms[k].append(hot.seconds[k] * 1e3)
        print(f"  {phase} rep {i + 1}/{iters}: "
              + ", ".join(f"{n} {s.ms[-1]:.0f} ms" for n, s in results.items()), file=sys.stderr)
    return results


# -- report -------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def share(part_ms: float, total_ms: float) -> str:
    return f"{part_ms:.0f} ms ({100 * part_ms / total_ms:.1f}%)" if part_ms > 0 else "-"


def table_rows(batch: int, phase: str, res: dict[str, Samples]) -> list[str]:
    base = median(res["codetr"].ms) if "codetr" in res else None
    rows = []
    for name, s in res.items():
        ms = median(s.ms)
        ratio = f"{ms / base:.2f}" if base and name != "codetr" else ("1.00" if name == "codetr" else "-")
        hot = "-"
        if name == "codetr":
            hot = " / ".join(share(median(s.hot_ms[k]), ms) for k in HOT_PARTS)
        spread = f"{min(s.ms):.0f}-{max(s.ms):.0f}"
        rows.append(f"| {batch} | {phase} | {name} | {ms:.0f} | {spread} | {ratio} | "
                    f"{max(s.peak_mb):.0f} | {median(s.rise_mb):.0f} | {hot} |")
    return rows


TABLE_HEAD = [
    "| batch | phase | model | median ms | min-max ms | ratio vs codetr | peak RSS MB | RSS rise MB "
    "| codetr: hungarian / ms_deform_attn fwd / AdamW step (share of step) |",
    "|---|---|---|---|---|---|---|---|---|",
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> str:
    return (f"{platform.platform()}; CPU {cpu_model()}, {os.cpu_count()} cores "
            f"(torch threads {torch.get_num_threads()}); Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def versions() -> str:
    try:
        import timm
        import transformers
        return f"transformers {transformers.__version__}, timm {timm.__version__}"
    except ImportError:
        return "transformers not installed"


def profile_train_step(runner: Runner, x: Inputs, top: int) -> None:
    with torch.profiler.profile() as prof:
        runner.train_step(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top), file=sys.stderr)


# -- main ---------------------------------------------------------------------------------
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
    p.add_argument("--hf-dropout", choices=["official", "default"], default="official",
                   help="HF activation/attention dropout: 0.1 as official and codetr, or transformers' 0")
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


def build_runners(only: str | None, hf_dropout: str, codetr_amps: list[str]) -> list[Runner]:
    builds = [(lambda amp=amp: codetr_runner("deformable_detr_r50_two_stage", amp)) for amp in codetr_amps]
    builds = (builds if only in (None, "codetr") else []) + (
        [lambda: build_hf(hf_dropout == "official")] if only in (None, "hf") else [])
    runners = []
    for build in builds:
        torch.manual_seed(0)
        runners.append(build())
    return runners


def param_lines(runners: list[Runner]) -> list[str]:
    return [f"- {r.name}: {r.params()[0]:,} parameters ({r.params()[1]:,} trainable)" for r in runners]


def run_all(args: argparse.Namespace, runners: list[Runner], hot: HotTimer) -> list[str]:
    rows = []
    for batch in args.batch:
        x = make_inputs(batch, *args.size, args.boxes)
        for phase in args.phases:
            iters = args.iters or (args.train_iters if phase == "train" else args.eval_iters)
            print(f"batch {batch}, {phase}: warmup {args.warmup}, iters {iters}", file=sys.stderr)
            rows += table_rows(batch, phase, run_phase(runners, phase, x, args.warmup, iters, hot))
    return rows


def report(args: argparse.Namespace, argv: list[str], runners: list[Runner], rows: list[str]) -> str:
    command = "python benchmarks/bench_deformable_detr.py " + " ".join(argv)
    lines = [f"### {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "",
             f"- command: `{command.strip()}`", f"- machine: {machine_info()}",
             f"- {versions()}, CPU allocator: {args.cpu_malloc}",
             f"- input {args.size[0]}x{args.size[1]}, {args.boxes} target boxes/image, "
             f"HF dropout: {args.hf_dropout}",
             *param_lines(runners), "", *TABLE_HEAD, *rows, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cpu_malloc == "reuse" and not configure_cpu_allocator():
        raise SystemExit("--cpu-malloc reuse needs glibc")
    runners = build_runners(args.only, args.hf_dropout, args.codetr_amp)
    hot = HotTimer()
    hot.install(next((r.optimizer for r in runners if r.name == "codetr"), None))
    text = report(args, argv, runners, run_all(args, runners, hot))
    print(text)
    if args.profile and runners[0].name == "codetr":
        profile_train_step(runners[0], make_inputs(args.batch[0], *args.size, args.boxes), args.profile)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
