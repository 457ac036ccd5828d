"""Smoke check of every zoo model on CUDA: a train forward + backward in float32 and under
bf16 autocast, then ``detect``; prints one line per model (or the error).

    python benchmarks/gpu_check.py

Full-size models run at 800x1066, ``*_tiny`` at 128x160, 2 images with 3 random boxes (and
masks) each. The printed times are single cold calls, not benchmarks.
"""
import time, traceback, torch
from codetr.zoo import create, list_models
from codetr.structures import Target
dev = torch.device("cuda")
def targets(b, h, w, masks):
    out = []
    for i in range(b):
        xy = torch.rand(3, 2) * torch.tensor([w * .5, h * .5]); wh = torch.rand(3, 2) * torch.tensor([w * .4, h * .4]) + 8
        boxes = torch.cat([xy, xy + wh], 1)
        m = torch.zeros(3, h, w, dtype=torch.bool)
        for j, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()): m[j, y0:y1, x0:x1] = True
        out.append(Target(boxes=boxes, labels=torch.tensor([0, 1, 2]), masks=m if masks else None,
                          iscrowd=torch.zeros(3, dtype=torch.bool), image_id=i, orig_size=(h, w), size=(h, w)).to(dev))
    return out
for name in list_models():
    big = not name.endswith("_tiny")
    h, w = (800, 1066) if big else (128, 160)
    try:
        model = create(name, num_classes=6).to(dev)
        x = torch.randn(2, 3, h, w, device=dev); sizes = torch.tensor([[h, w], [h - 64, w - 96]], device=dev)
        tg = targets(2, h, w, "yolact" in name)
        res = {}
        for amp in (None, torch.bfloat16):
            model.train()
            torch.cuda.synchronize(); t = time.perf_counter()
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                losses = model(x, sizes, tg)
            loss = losses.total()
            loss.backward(); torch.cuda.synchronize()
            res["train_" + ("bf16" if amp else "fp32")] = f"{(time.perf_counter() - t) * 1e3:.0f}ms loss {loss.item():.3f}"
            model.zero_grad()
        model.eval()
        with torch.no_grad():
            for _ in range(2):
                torch.cuda.synchronize(); t = time.perf_counter()
                dets = model.detect(x, sizes, [(h, w), (h - 64, w - 96)]); torch.cuda.synchronize()
        res["infer_fp32"] = f"{(time.perf_counter() - t) * 1e3:.0f}ms ({len(dets[0].boxes)} dets)"
        print(name, h, w, res, flush=True)
    except Exception as e:
        print(name, "FAILED", repr(e)[:300], flush=True); traceback.print_exc()
