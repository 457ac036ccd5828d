"""CPU inference speed of codetr's YOLACT (``yolact_r50_550``, randomly initialised, 80 classes).

Per repetition, on ``batch`` random uint8 RGB images of ``--image-size`` (h, w):

* ``predict``: ``model.predict`` end to end (resize to the 550 square, forward, Fast NMS,
  masks assembled / cropped / upsampled to the original size);
* ``forward``: the eval forward alone on the prepared batch;
* ``postprocess``: Fast NMS + masks at the original size from the saved forward outputs.

An untrained model scores every prior about alike, so ``conf_threshold`` is 0 here: Detect
keeps its full 200 candidates per class and 100 detections per image, the official worst case.
The table gives the median over ``--iters`` repetitions (after one warm-up) and images/s.

    python benchmarks/bench_yolact.py --iters 3 --batch 1 --threads 2
    python benchmarks/bench_yolact.py --iters 20 --batch 1 --device cuda     # GPU FPS
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import codetr


def timed(fn, iters: int, device: torch.device) -> list[float]:
    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()  # warm-up
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--model", default="yolact_r50_550")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU FPS)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = codetr.create(args.model, num_classes=80, conf_threshold=0.0).eval().to(device)
    h, w = args.image_size
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for _ in range(args.batch)]
    batch, sizes, orig = model.prepare(images)
    batch, sizes = batch.to(device), sizes.to(device)
    with torch.no_grad():
        outputs = model(batch, sizes)

    def postprocess() -> None:
        with torch.no_grad():
            for result, proto, hw in zip(model.nms(outputs), outputs["proto"], orig):
                model.detections_at(result, proto, hw)

    phases = {
        "predict": lambda: model.predict(images, batch_size=args.batch),
        "forward": lambda: torch.no_grad()(model)(batch, sizes),
        "postprocess": postprocess,
    }
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{args.batch} x {h}x{w} images; {device}; torch {torch.__version__}, {args.threads} threads; "
          f"{platform.platform()}; {args.iters} repetitions")
    print("| phase | median ms | min-max ms | images/s |\n|---|---|---|---|")
    for name, fn in phases.items():
        times = timed(fn, args.iters, device)
        median = statistics.median(times)
        print(f"| {name} | {median * 1e3:.0f} | {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} | "
              f"{args.batch / median:.2f} |")


if __name__ == "__main__":
    main()
