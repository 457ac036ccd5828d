"""GPU benchmark (issue 18): codetr's DINO-R50 4-scale against Hugging Face's Deformable DETR in
one process, and multi-scale deformable attention (MSDA) alone.

Models (random weights, nothing downloaded):

* codetr  ``codetr.create("dino_r50_4scale", num_classes=91)``: 900 queries, 6 + 6 layers, d=256,
  FFN 2048, MSDA by codetr's dispatch (the Triton kernels on CUDA);
* HF      ``DeformableDetrForObjectDetection``, two-stage + box refine at the same sizes (900
  queries and proposals, FFN 2048, R50 via timm; ``bench_dino.hf_model``). transformers ships
  no DINO; this is its closest model.

Rows, on random images of ``--size`` (800 x 1333), all pixels valid; each the median of
``--iters`` timed calls after ``--warmup`` calls, wall clock between ``torch.cuda.synchronize()``:

* eval, batch ``--eval-batch`` (1), float32: images / s;
* eval, batch ``--bf16-batch`` (8), bfloat16 autocast: images / s;
* train step, batch ``--train-batch`` (2), bfloat16 autocast: forward + loss (``--boxes`` random
  boxes per image) + backward + AdamW (fused on CUDA, the same for both models): ms;
* each with its peak memory, ``torch.cuda.max_memory_allocated`` reset before the phase (only
  the model measured is on the GPU; the inputs count).

``--compile`` adds codetr's eval rows through ``codetr.backends.compile_inference`` (fullgraph,
static shapes; the warm-up calls compile). TF32 follows codetr's default for both models
(``configure_tf32``: on for Ampere+ GPUs, ``CODETR_TF32=0`` turns it off).

MSDA alone at the encoder shape of an 800 x 1333 image (levels 100x167, 50x84, 25x42, 13x21:
22,223 tokens, each a query), batch 2, 8 heads x 32 channels, 4 levels x 4 points, float32,
forward and forward + backward: codetr's Triton kernels (``codetr.ops.msda_triton``), the
grid_sample reference and, with ``--official-ops DIR`` (a checkout of
fundamentalvision/Deformable-DETR), the official CUDA kernel, compiled here from
``DIR/models/ops/src`` with ``torch.utils.cpp_extension.load`` (never copied into codetr).

``--smoke``: tiny sizes and one call of everything (any device; the CPU skips the CUDA-only
kernels), to check that the script runs.

    python benchmarks/bench_gpu.py --official-ops ~/Deformable-DETR --compile --out benchmarks/RESULTS.md
    python benchmarks/bench_gpu.py --smoke --device cpu
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_deformable_detr as common  # noqa: E402  (sets the HF offline variables first)
import torch  # noqa: E402
from bench_deformable_detr import NUM_CLASSES, hf_labels, make_inputs  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import codetr  # noqa: E402
from codetr.backends import compile_inference, configure_tf32  # noqa: E402
from codetr.ops.msda import ms_deform_attn_grid_sample, ms_deform_attn_triton  # noqa: E402
from codetr.structures import Target, padding_mask  # noqa: E402

ENCODER_SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
# smoke: 256 px, the smallest size with HF's 900 two-stage proposals (it needs >= 900 tokens)
SMOKE = dict(size=[256, 256], eval_batch=1, bf16_batch=2, train_batch=1, iters=1, warmup=1,
             msda_shapes=[(8, 10), (4, 5), (2, 3), (1, 2)], msda_batch=1, heads=2, channels=4, points=2)
FULL = dict(msda_shapes=ENCODER_SHAPES, msda_batch=2, heads=8, channels=32, points=4)
OFFICIAL_IM2COL_STEP = 64  # the official MSDeformAttn's default


# -- inputs -------------------------------------------------------------------------------
@dataclass
class DeviceInputs:
    """One batch on the device, in both models' formats."""

    images: Tensor               # [B, 3, H, W]
    sizes: Tensor                # [B, 2] valid (h, w)
    targets: list[Target]        # codetr: absolute xyxy
    pixel_mask: Tensor           # HF: [B, H, W] 1 on valid pixels
    labels: list[dict[str, Tensor]]  # HF: class_labels, normalized cxcywh boxes


def device_inputs(batch: int, size: list[int], boxes: int, device: torch.device) -> DeviceInputs:
    x = make_inputs(batch, size[0], size[1], boxes)
    mask = (~padding_mask(x.sizes, size[0], size[1])).long()
    labels = [{k: v.to(device) for k, v in d.items()} for d in hf_labels(x)]
    return DeviceInputs(x.images.to(device), x.sizes.to(device), [t.to(device) for t in x.targets],
                        mask.to(device), labels)


# -- models -------------------------------------------------------------------------------
@dataclass
class Model:
    """A model with its eval forward and its training loss on ``DeviceInputs``."""

    name: str
    module: nn.Module
    forward: Callable[[DeviceInputs], object]
    loss: Callable[[DeviceInputs], Tensor] | None   # None: eval rows only


def codetr_model(compile_backend: str | None) -> Model:
    model = codetr.create("dino_r50_4scale", num_classes=NUM_CLASSES)
    if compile_backend is not None:
        compile_inference(model, backend=compile_backend, fullgraph=True, dynamic=False)
        return Model("codetr compiled", model, lambda x: model(x.images, x.sizes), None)
    return Model("codetr", model, lambda x: model(x.images, x.sizes),
                 lambda x: model(x.images, x.sizes, x.targets).total())


def hf_model() -> Model:
    from bench_dino import hf_model as build
    model = build()
    return Model("HF", model, lambda x: model(pixel_values=x.images, pixel_mask=x.pixel_mask),
                 lambda x: model(pixel_values=x.images, pixel_mask=x.pixel_mask, labels=x.labels).loss)


def model_builders(args: argparse.Namespace) -> tuple[list[Callable[[], Model]], list[str]]:
    """What to measure, and notes on what is left out."""
    builders, notes = [lambda: codetr_model(None)], []
    if args.compile:
        builders.append(lambda: codetr_model(args.compile_backend))
    if all(importlib.util.find_spec(name) for name in ("timm", "transformers")):
        builders.append(hf_model)
    else:
        notes.append("HF left out: transformers / timm are not installed")
    return builders, notes


# -- measurement --------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> tuple[float, int | None]:
    """(median seconds of ``iters`` calls after ``warmup`` calls, peak bytes allocated (CUDA))."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@dataclass
class Phase:
    label: str
    batch: int
    bf16: bool
    train: bool


def phases(args: argparse.Namespace) -> list[Phase]:
    return [Phase(f"eval, batch {args.eval_batch}, fp32", args.eval_batch, False, False),
            Phase(f"eval, batch {args.bf16_batch}, bf16 autocast", args.bf16_batch, True, False),
            Phase(f"train step, batch {args.train_batch}, bf16 autocast", args.train_batch, True, True)]


def run_model(model: Model, args: argparse.Namespace, device: torch.device,
              inputs: dict[int, DeviceInputs]) -> dict[str, tuple[float, int | None]]:
    """Phase label -> (median seconds, peak bytes) of ``model``, alone on the device."""
    module = model.module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")
    results = {}
    for phase in phases(args):
        if phase.train and model.loss is None:
            continue
        x = inputs[phase.batch]
        results[phase.label] = measure(lambda: step(model, opt, x, phase, device), args.warmup, args.iters, device)
    module.cpu()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def step(model: Model, opt: torch.optim.Optimizer, x: DeviceInputs, phase: Phase, device: torch.device) -> None:
    model.module.train(phase.train)
    if not phase.train:
        with torch.no_grad(), autocast(device, phase.bf16):
            model.forward(x)
        return
    with autocast(device, phase.bf16):
        loss = model.loss(x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def model_table(args: argparse.Namespace, results: dict[str, dict[str, tuple[float, int | None]]]) -> list[str]:
    """One row per phase: each model's speed and peak memory, then HF's time over codetr's."""
    names = list(results)
    head = "| phase | " + " | ".join(f"{n} | {n} peak MiB" for n in names) + " | HF / codetr time |"
    lines = [head, "|" + " --- |" * (2 + 2 * len(names))]
    for phase in phases(args):
        cells = []
        for name in names:
            seconds, peak = results[name].get(phase.label, (None, None))
            cells += [speed(phase, seconds), "-" if peak is None else f"{peak / 2**20:,.0f}"]
        ours, theirs = (results.get(n, {}).get(phase.label, (None,))[0] for n in ("codetr", "HF"))
        cells.append(f"{theirs / ours:.2f}" if ours and theirs else "-")
        lines.append(f"| {phase.label} | " + " | ".join(cells) + " |")
    return lines


def speed(phase: Phase, seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if phase.train:
        return f"{1000 * seconds:.1f} ms/step"
    return f"{phase.batch / seconds:.2f} img/s ({1000 * seconds:.1f} ms)"


# -- MSDA alone ---------------------------------------------------------------------------
def msda_inputs(shapes: list[tuple[int, int]], batch: int, heads: int, channels: int, points: int,
                device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """value [B, S, M, D]; locations [B, S, M, L, P, 2]: each token's centre plus N(0, 2 px)
    offsets on every level, as in a trained encoder; softmaxed weights [B, S, M, L, P]."""
    g = torch.Generator(device).manual_seed(0)
    tokens, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(batch, tokens, heads, channels, generator=g, device=device)
    centres = torch.cat([torch.stack(torch.meshgrid((torch.arange(w, device=device) + 0.5) / w,
                                                    (torch.arange(h, device=device) + 0.5) / h, indexing="xy"), -1)
                         .view(h * w, 2) for h, w in shapes])                                   # [S, 2]
    wh = torch.tensor([(w, h) for h, w in shapes], dtype=torch.float32, device=device)          # [L, 2]
    offsets = torch.randn(batch, tokens, heads, L, points, 2, generator=g, device=device) * 2 / wh[:, None]
    loc = centres[None, :, None, None, None] + offsets
    weights = torch.rand(batch, tokens, heads, L * points, generator=g, device=device).softmax(-1)
    return value, loc, weights.view(batch, tokens, heads, L, points)


class OfficialMSDA(torch.autograd.Function):
    """The official extension's forward / backward as an autograd function."""

    @staticmethod
    def forward(ctx, ext, value: Tensor, shapes: Tensor, starts: Tensor, loc: Tensor, attn: Tensor) -> Tensor:
        ctx.ext = ext
        ctx.save_for_backward(value, shapes, starts, loc, attn)
        return ext.ms_deform_attn_forward(value, shapes, starts, loc, attn, OFFICIAL_IM2COL_STEP)

    @staticmethod
    def backward(ctx, grad: Tensor):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        d_value, d_loc, d_attn = ctx.ext.ms_deform_attn_backward(value, shapes, starts, loc, attn,
                                                                 grad.contiguous(), OFFICIAL_IM2COL_STEP)
        return None, d_value, None, None, d_loc, d_attn


def load_official(checkout: Path):
    """The official MSDA extension, built from a Deformable-DETR checkout as its setup.py does."""
    from torch.utils.cpp_extension import load
    src = checkout / "models" / "ops" / "src"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist: --official-ops wants a Deformable-DETR checkout")
    sources = [str(p) for pattern in ("*.cpp", "cpu/*.cpp", "cuda/*.cu") for p in sorted(src.glob(pattern))]
    nvcc = ["-DWITH_CUDA", "-DCUDA_HAS_FP16=1", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__"]
    return load("official_ms_deform_attn", sources, extra_include_paths=[str(src)], extra_cflags=["-DWITH_CUDA"],
                extra_cuda_cflags=nvcc)


def msda_backends(shapes: list[tuple[int, int]], device: torch.device,
                  official: Path | None) -> tuple[dict[str, Callable[..., Tensor]], list[str]]:
    """Name -> fn(value, loc, attn) -> [B, Q, M*D], and notes on what is left out."""
    backends = {"grid_sample reference": lambda v, l, a: ms_deform_attn_grid_sample(v, shapes, l, a)}
    notes = []
    if device.type != "cuda":
        return backends, notes + ["MSDA: Triton and official kernels need CUDA"]
    table = torch.tensor(shapes, dtype=torch.int32, device=device)
    backends["codetr Triton"] = lambda v, l, a: ms_deform_attn_triton(v, table, l, a)
    if official is not None:
        try:
            ext = load_official(official)
        except Exception as e:  # a failed build is reported, the rest still runs
            return backends, notes + [f"official kernel not built: {type(e).__name__}: {str(e).splitlines()[0]}"]
        shapes64 = table.long()
        starts = torch.cat([shapes64.new_zeros(1), (shapes64[:, 0] * shapes64[:, 1]).cumsum(0)[:-1]])
        backends["official CUDA"] = lambda v, l, a: OfficialMSDA.apply(ext, v, shapes64, starts, l, a)
    return backends, notes


def msda_table(args: argparse.Namespace, device: torch.device) -> tuple[list[str], list[str]]:
    shapes = [tuple(s) for s in args.msda_shapes]
    inputs = tuple(t.requires_grad_() for t in msda_inputs(shapes, args.msda_batch, args.heads, args.channels,
                                                           args.points, device))
    grad_out = torch.randn(args.msda_batch, inputs[0].shape[1], args.heads * args.channels, device=device)
    backends, notes = msda_backends(shapes, device, args.official_ops)
    reference = ms_deform_attn_grid_sample(inputs[0], shapes, *inputs[1:]).detach()
    lines = ["| MSDA, float32 | forward ms | forward + backward ms | max abs diff to the reference |",
             "| --- | --- | --- | --- |"]
    for name, fn in backends.items():
        with torch.no_grad():
            diff = (fn(*inputs) - reference).abs().max().item()
        forward, _ = measure(lambda: fn(*inputs), args.warmup, args.iters, device)
        both, _ = measure(lambda: torch.autograd.grad(fn(*inputs), inputs, grad_out), args.warmup, args.iters, device)
        lines.append(f"| {name} | {1000 * forward:.3f} | {1000 * both:.3f} | {diff:.1e} |")
    return lines, notes


# -- report -------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else common.cpu_model()


def report(args: argparse.Namespace, argv: list[str], device: torch.device, model_lines: list[str],
           msda_lines: list[str], notes: list[str]) -> str:
    shapes = " ".join(f"{h}x{w}" for h, w in args.msda_shapes)
    lines = [f"### GPU benchmark {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
             + (" (smoke: tiny sizes, not a measurement)" if args.smoke else ""), "",
             f"- command: `{' '.join(['python benchmarks/bench_gpu.py', *argv])}`",
             f"- device: {device_name(device)}; torch {torch.__version__}; {common.versions()}",
             f"- float32 precision: matmul {torch.backends.cuda.matmul.fp32_precision}, "
             f"convolution {torch.backends.cudnn.conv.fp32_precision} (tf32 = TF32 on)",
             f"- images {args.size[0]}x{args.size[1]}, {args.boxes} boxes per image; median of {args.iters} "
             f"after {args.warmup} warm-up calls",
             f"- MSDA: batch {args.msda_batch}, levels {shapes}, {args.heads} heads x {args.channels}, "
             f"{args.points} points", *[f"- {n}" for n in notes], "", *model_lines, "", *msda_lines, ""]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    p.add_argument("--eval-batch", type=int, default=1)
    p.add_argument("--bf16-batch", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--boxes", type=int, default=5, help="random target boxes per image (train)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add codetr's compiled eval rows")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--official-ops", type=Path, default=None, metavar="DIR",
                   help="a fundamentalvision/Deformable-DETR checkout: also time its CUDA MSDA kernel")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one call each: checks that the script runs")
    p.add_argument("--out", default=None, help="append the report (markdown) to this file")
    args = p.parse_args(argv)
    for key, value in {**FULL, **(SMOKE if args.smoke else {})}.items():
        setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    configure_tf32(device=device)
    builders, notes = model_builders(args)
    inputs = {b: device_inputs(b, args.size, args.boxes, device) for b in {p.batch for p in phases(args)}}
    results = {}
    for build in builders:
        torch.manual_seed(0)
        model = build()
        results[model.name] = run_model(model, args, device, inputs)
        del model
    msda_lines, msda_notes = msda_table(args, device)
    text = report(args, argv, device, model_table(args, results), msda_lines, notes + msda_notes)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
