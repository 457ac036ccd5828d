"""What each ``codetr`` subcommand does (argument parsing lives in cli.py)."""
from __future__ import annotations

import json
import logging
import time
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

log = logging.getLogger("codetr")


def _print_metrics(metrics: dict) -> None:
    keys = [k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "mask_AP", "mask_AP50", "mask_AP75")
            if k in metrics]
    print("  ".join(f"{k} {metrics[k]:.3f}" for k in keys))


def train(args: Namespace) -> int:
    from .config import apply_overrides
    from .zoo import recipe

    cfg = recipe(args.model)
    cfg = replace(cfg, data=replace(cfg.data, path=args.data), out_dir=args.out or cfg.out_dir)
    train_in_processes(apply_overrides(cfg, args.set), args.procs, resume=args.resume)
    return 0


def run(cfg, resume: str | None = None):
    """Build datasets and model from a RunConfig and train it; returns the Trainer."""
    from .engine.trainer import train as train_loop

    model, train_ds, val_ds = build_run(cfg)
    log.info("training %s on %d images (%d classes) -> %s", cfg.model, len(train_ds), len(train_ds.classes),
             cfg.out_dir)
    return train_loop(cfg, model, train_ds, val_ds, resume=resume)


def build_run(cfg):
    """The model and the train / val datasets of a RunConfig (bad data or settings raise here)."""
    from .data.build import train_dataset, val_dataset
    from .zoo import create

    train_ds = train_dataset(cfg.data)
    val_ds = val_dataset(cfg.data)
    if val_ds.classes.category_ids != train_ds.classes.category_ids:
        raise ValueError(f"train and val category ids differ: {train_ds.classes.category_ids} vs "
                         f"{val_ds.classes.category_ids}")
    model = create(cfg.model, classes=train_ds.classes, **cfg.model_args)
    model.model_name = cfg.model
    return model, train_ds, val_ds


def eval(args: Namespace) -> int:  # noqa: A001 (the subcommand's name)
    from .api import load
    from .config import DataConfig
    from .data.build import val_dataset
    from .data.loader import build_loader
    from .engine.evaluate import evaluate

    model = load(args.checkpoint)
    spec = model.input_spec
    scale = 255.0 if spec.scale_255 else 1.0  # DataConfig normalises [0, 1] values
    data = DataConfig(path=args.data, eval_min_size=spec.min_size, eval_max_size=spec.max_size,
                      mean=[m / scale for m in spec.mean], std=[s / scale for s in spec.std],
                      square=spec.square)
    dataset = val_dataset(data)
    loader = build_loader(dataset, args.batch_size, shuffle=False, num_workers=0)
    metrics = evaluate(model, loader, dataset.coco, model.classes, results_path=args.results)
    _print_metrics(metrics)
    return 0


def predict(args: Namespace) -> int:
    from .api import load
    from .engine.predict import predict_files

    model = load(args.checkpoint)
    path = predict_files(model, args.inputs, args.out, args.score_threshold)
    print(f"wrote {path} and drawn images in {path.parent}")
    return 0


def convert(args: Namespace) -> int:
    from .api import save
    from .convert import load_official

    config = json.loads(Path(args.config).read_text()) if args.config else None
    model = load_official(args.family, args.input, config, ema=getattr(args, "ema", False))
    save(model, args.output, model_name=f"{args.family}_official")
    print(f"wrote {args.output} ({model.family}, {model.num_classes} classes)")
    return 0


def data(args: Namespace) -> int:
    from .data.synth import write_synthetic_coco

    paths = write_synthetic_coco(args.out, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} train and {args.val} val images to {paths['root']}")
    return 0


def models(args: Namespace) -> int:
    from .zoo import list_models

    print("\n".join(list_models()))
    return 0


def demo(args: Namespace) -> int:
    """Synthetic data -> train the tiny model -> COCO AP on val -> drawn predictions."""
    from .api import load
    from .config import apply_overrides
    from .data.build import val_dataset
    from .data.loader import build_loader
    from .data.synth import write_synthetic_coco
    from .engine.evaluate import evaluate
    from .engine.predict import predict_files
    from .zoo import recipe

    start = time.time()
    out = Path(args.out)
    data_dir = out / "data"
    if not (data_dir / "annotations" / "instances_val.json").is_file():
        write_synthetic_coco(data_dir, num_train=args.train_images, num_val=args.val_images, image_size=128, seed=0)
        log.info("synthetic dataset written to %s (%.0f s)", data_dir, time.time() - start)
    cfg = recipe(args.model)
    cfg = replace(cfg, data=replace(cfg.data, path=str(data_dir)), out_dir=str(out / "train"))
    cfg = apply_overrides(cfg, args.set)
    train_in_processes(cfg, args.procs)
    model = load(Path(cfg.out_dir) / "last.ckpt")
    dataset = val_dataset(cfg.data)
    metrics = evaluate(model, build_loader(dataset, 8, shuffle=False, num_workers=0), dataset.coco, model.classes)
    preds = predict_files(model, sorted((data_dir / "val").iterdir())[:8], out / "predictions", score_threshold=0.3)
    print(f"\ncodetr demo: {cfg.model} trained in {(time.time() - start) / 60:.1f} min; COCO AP on the synthetic val split:")
    _print_metrics(metrics)
    print(f"metrics: {Path(cfg.out_dir) / 'metrics.jsonl'}   checkpoint: {Path(cfg.out_dir) / 'last.ckpt'}   "
          f"drawn predictions: {preds.parent}")
    return 0


def train_in_processes(cfg, procs: int | None = None, resume: str | None = "auto") -> None:
    """Train ``cfg`` in ``procs`` (default ``cfg.train.procs``) single-threaded DDP processes
    (gloo) on this machine, or in this process when that is 1 or training runs on a GPU. On a
    small CPU, processes with one thread each use the cores better than one process with
    several threads (the tiny recipes: 13-25% more images per second on 2 cores)."""
    import os

    import torch.multiprocessing as mp

    from .engine.trainer import resolve_device

    procs = cfg.train.procs if procs is None else procs
    if procs > 1 and resolve_device(cfg.train.device).type != "cpu":
        log.info("training on %s in one process (train.procs=%d is for CPU; use torchrun for several GPUs)",
                 cfg.train.device, procs)
        procs = 1
    procs = min(procs, os.cpu_count() or 1)
    if procs <= 1:  # this process alone, or one rank of a torchrun launch
        from .engine import distributed as du

        run(cfg, resume=resume)
        du.cleanup(synchronize=True)
        return
    build_run(cfg)  # bad data or settings fail here, with their message, not inside a worker
    mp.start_processes(_train_worker, args=(procs, _free_port(), cfg.to_dict(), resume), nprocs=procs,
                       start_method="spawn")


def _train_worker(rank: int, world: int, port: int, cfg_dict: dict, resume: str | None) -> None:
    import os

    import torch

    from .config import RunConfig
    from .engine import distributed as du

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    finished = False
    try:
        run(RunConfig.from_dict(cfg_dict), resume=resume)
        finished = True
    finally:
        du.cleanup(synchronize=finished)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

