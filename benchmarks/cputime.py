"""Single-thread CPU seconds per training image of a recipe variant, on /tmp/synth:

    python benchmarks/cputime.py TAG MODEL [KEY=VALUE ...]
"""
import json, sys, time
from dataclasses import replace
import torch
torch.set_num_threads(1)
from codetr.config import apply_overrides
from codetr.commands import build_run
from codetr.recipes import recipe
from codetr.data.loader import build_loader
from codetr.engine.trainer import build_optimizer

tag, name, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = apply_overrides(recipe(name), [s for s in sets if not s.startswith("train.device")])
cfg = replace(cfg, data=replace(cfg.data, path="/tmp/synth"))
model, ds, _ = build_run(cfg)
model = model.train()
opt = build_optimizer(model, cfg.train)
bs = cfg.train.batch_size if cfg.train.batch_size <= 4 else 4
it = iter(build_loader(ds, bs, shuffle=True, num_workers=0, seed=0))
def step():
    b = next(it)
    losses = model(b.images, b.sizes, b.targets)
    losses.total().backward()
    opt.step(); opt.zero_grad()
for _ in range(2): step()
t = time.perf_counter(); n = 6
for _ in range(n): step()
print(json.dumps({"tag": tag, "sec_per_image": (time.perf_counter() - t) / n / bs}))
