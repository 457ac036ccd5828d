"""What each ``codetr`` subcommand does (argument parsing lives in cli.py)."""
from __future__ import annotations

import logging
import time
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

from .engine.checkpoint import CheckpointError
from .engine.run_folder import RunFolderError

log = logging.getLogger("codetr")


class TrainingError(RuntimeError):
    """A training process that failed; the message is its error, on one line."""


# Errors caused by what the user gave (files, data, settings, folders): the command line reports
# them as one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, FloatingPointError, CheckpointError, RunFolderError, TrainingError)


def _print_metrics(metrics: dict) -> None:
    """AP, AR and the per-class table, of the boxes and (for mask models) of the masks."""
    from .engine.evaluate import format_metrics

    print(format_metrics(metrics))
    if "mask_AP" in metrics:
        print(format_metrics(metrics, prefix="mask_"))


def refuse_existing(paths: list[str | Path], force: bool) -> None:
    """Raise FileExistsError naming the first of ``paths`` that holds something (a file, or a
    folder that is not empty), unless ``force``: nothing a user wrote is overwritten unasked."""
    for path in map(Path, paths):
        if force:
            return
        if path.is_dir() and any(path.iterdir()):
            raise FileExistsError(f"folder {str(path)!r} is not empty; pass --force to write into it")
        if path.is_file():
            raise FileExistsError(f"file {str(path)!r} exists; pass --force to overwrite it")


def _require_data(data, split: str) -> None:
    """A one-line error when neither --data nor a config names the ``split`` data."""
    from .config import ConfigError

    if data.path is None and None in (getattr(data, f"{split}_ann"), getattr(data, f"{split}_images")):
        raise ConfigError(f"no dataset: give --data DIR, or data.path (or data.{split}_ann and "
                          f"data.{split}_images) in the --config file or --set")


def train(args: Namespace) -> int:
    from .config import ConfigError, apply_overrides, apply_settings, read_config_file
    from .engine.run_folder import latest_run, next_free
    from .recipes import recipe

    settings = read_config_file(args.config) if args.config else {}
    model = args.model or settings.get("model")
    if not model:
        raise ConfigError("name the model to train: codetr train MODEL, or a --config file with a 'model' key")
    # the recipe, then the file's settings (as --set would set them), then --set: later wins
    cfg = apply_overrides(apply_settings(recipe(model), {**settings, "model": model}, args.config or ""), args.set)
    out = args.out or cfg.out_dir
    if args.out is None and not du_launched():  # default folders: a new run never reuses one
        out = latest_run(out) if args.resume else next_free(out)
        if str(out) != cfg.out_dir:
            log.info("%s run folder: %s", "resuming the latest" if args.resume else "a new", out)
    cfg = replace(cfg, data=replace(cfg.data, path=args.data) if args.data else cfg.data, out_dir=str(out))
    if args.init_from:  # sugar for train.init_from
        cfg = replace(cfg, train=replace(cfg.train, init_from=args.init_from))
    _require_data(cfg.data, "train")
    train_in_processes(cfg, args.procs, resume=args.resume)
    return 0


def du_launched() -> bool:
    """Whether this process is one rank of a torchrun launch."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run(cfg, resume: str | None = None):
    """Build datasets and model from a RunConfig and train it; returns the Trainer."""
    from .engine.trainer import train as train_loop

    model, train_ds, val_ds = build_run(cfg, resume)
    log.info("training %s on %d images (%d classes) -> %s", cfg.model, len(train_ds), len(train_ds.classes),
             cfg.out_dir)
    return train_loop(cfg, model, train_ds, val_ds, resume=resume)


def build_run(cfg, resume: str | None = None, quiet: bool = False):
    """The model and the train / val datasets of a RunConfig (bad data or settings raise here).
    The model's initial weights follow ``train.seed``, its backbone's ``pretrained`` weights;
    with ``train.init_from``, a new run (``resume`` None) starts from that checkpoint's weights
    instead (``engine.finetune``; its table logged unless ``quiet``). The datasets'
    preprocessing is the model's ``InputSpec``."""
    from .backbones.pretrained import load_pretrained_backbone
    from .data.build import model_and_datasets
    from .engine.finetune import init_from
    from .engine.trainer import seed_all
    from .zoo import create

    def build(classes):
        seed_all(cfg.train.seed)
        model = create(cfg.model, classes=classes, **cfg.model_args)
        model.model_name = cfg.model
        if cfg.train.init_from:  # the checkpoint supplies the backbone too; a resumed run its own weights
            if resume is None:
                report = init_from(model, cfg.train.init_from)
                if not quiet:
                    (log.info if report.complete else log.warning)("%s", report.table())
        else:
            load_pretrained_backbone(model)  # model_args.backbone.pretrained; a resumed run loads over it
        return model

    return model_and_datasets(cfg.data, build)


def check_run(cfg, resume: str | None) -> None:
    """Everything that can be checked before training starts, so it fails in seconds with its
    message rather than in a worker or at the first evaluation: the settings, the data (every val
    image readable and of the size its json says) and the run folder."""
    from .data.build import check_images
    from .engine.run_folder import check_free, checkpoint_to_resume
    from .engine.trainer import resolve_device

    resolve_device(cfg.train.device)
    _, _, val_ds = build_run(cfg, resume, quiet=True)
    check_images(val_ds)
    check_free(cfg.out_dir)
    checkpoint_to_resume(cfg.out_dir, resume, quiet=True)


def plot(args: Namespace) -> int:
    """Draw RUN_DIR's curves.png (or --out, refused when it exists unless --force)."""
    from .engine.logging_hooks import plot_curves

    if args.out is not None:
        refuse_existing([args.out], args.force)
    print(f"wrote {plot_curves(args.run_dir, args.out)}")
    return 0


def eval(args: Namespace) -> int:  # noqa: A001 (the subcommand's name)
    from .api import load
    from .backends import amp_dtype
    from .config import RunConfig, apply_overrides, load_config
    from .data.build import val_dataset
    from .data.loader import build_loader
    from .engine.evaluate import evaluate
    from .engine.trainer import resolve_device

    cfg = load_config(args.config, args.set) if args.config else apply_overrides(RunConfig(), args.set)
    data = replace(cfg.data, path=args.data) if args.data else cfg.data
    _require_data(data, "val")
    device = resolve_device(args.device, setting="--device")
    plot = Path(args.plot) if args.plot else Path(args.checkpoint).parent / "pr_curve.png"
    refuse_existing([p for p in (args.results, plot) if p], args.force)
    model = load(args.checkpoint).to(device)
    dataset = val_dataset(data, model.input_spec)
    # matched by category id; a dataset with a subset of the model's categories is fine for
    # COCO AP (COCOeval scores the ground truth's categories and ignores other detections)
    mismatch = model.classes.mismatch(dataset.classes, subset_ok=True)
    if mismatch:
        raise ValueError(f"checkpoint {str(args.checkpoint)!r} and dataset {str(dataset.ann_file)!r} have "
                         f"different categories: {mismatch}")
    loader = build_loader(dataset, args.batch_size, shuffle=False, num_workers=0,
                          size_divisibility=model.input_spec.size_divisibility)
    metrics = evaluate(model, loader, dataset.coco, model.classes, results_path=args.results, plot_path=plot,
                       amp=amp_dtype(args.amp, device))
    _print_metrics(metrics)
    return 0


def predict(args: Namespace) -> int:
    from .api import load
    from .engine.predict import predict_files
    from .engine.trainer import resolve_device

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device, setting="--device")
    refuse_existing([args.out], args.force)
    model = load(args.checkpoint).to(device)
    path = predict_files(model, args.inputs, args.out, args.score_threshold, args.batch_size, args.amp)
    print(f"wrote {path} and the drawings in {path.parent}")
    return 0


def convert(args: Namespace) -> int:
    from .api import save
    from .convert import load_official
    from .registry import get_family

    family = get_family(args.family).name
    config = Path(args.config) if args.config else None  # JSON or mmcv .py, read by load_official
    model = load_official(family, args.input, config, ema=getattr(args, "ema", False))
    save(model, args.output, model_name=f"{family}_official")
    print(f"wrote {args.output} ({model.family}, {model.num_classes} classes)")
    return 0


def export(args: Namespace) -> int:
    from .api import load
    from .export import check_opset, export_onnx, require_packages

    require_packages()
    check_opset(args.opset)
    refuse_existing([args.output], args.force)
    model = load(args.checkpoint)
    result = export_onnx(model, args.output, args.opset, args.size, args.dynamic)
    print(f"wrote {args.output}: {model.family}, opset {args.opset}, {'dynamic' if args.dynamic else 'static'} "
          f"shapes; inputs {', '.join(result.inputs)}; outputs {', '.join(result.outputs)}; onnxruntime vs "
          f"PyTorch: max |difference| {max(result.max_diff.values()):.1e}")
    return 0


def data(args: Namespace) -> int:
    commands = {"synth": _data_synth, "check": _data_check, "show": _data_show, "import": _data_import}
    return commands[args.data_command](args)


def _data_synth(args: Namespace) -> int:
    from .data.synth import write_synthetic_coco

    paths = write_synthetic_coco(args.out, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} train and {args.val} val images to {paths['root']}")
    return 0


def _data_check(args: Namespace) -> int:
    """Print each split's report; exit code 1 when a split has problems (notes do not count)."""
    from .data.tools import check_split, find_splits, format_report

    problems = 0
    for split, ann_file, image_dir in find_splits(args.source, args.images):
        log.info("checking %s (images in %s)", ann_file, image_dir)
        report = check_split(split, ann_file, image_dir, decode_images=not args.no_decode)
        print(format_report(report))
        problems += report.findings.problems
    print(f"{problems} problems found" if problems else "no problems found")
    return 1 if problems else 0


def _data_show(args: Namespace) -> int:
    from .data.tools import find_splits, ground_truth
    from .engine.predict import draw

    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    out = Path(args.out)
    refuse_existing([out], args.force)
    drawn = 0
    for split, ann_file, image_dir in find_splits(args.source, args.images):
        for file_name, pixels, det, classes in ground_truth(ann_file, image_dir, args.num):
            parts = [p for p in Path(file_name).with_suffix(".png").parts if p not in ("..", ".", "/")]
            path = out.joinpath(split, *parts)   # file_name's folders kept, never outside ``out``
            path.parent.mkdir(parents=True, exist_ok=True)
            draw(pixels, det, classes, scores=False).save(path)
            drawn += 1
    print(f"drew the ground truth of {drawn} images in {out}")
    return 0


def _data_import(args: Namespace) -> int:
    import json

    from .data.importers import import_voc, import_yolo
    from .engine.checkpoint import atomic_open

    if args.format == "yolo" and args.split:
        raise ValueError("--split is for voc (ImageSets/Main/<split>.txt); for yolo, name the split's image folder")
    refuse_existing([args.out], args.force)
    coco, image_dir = (import_yolo(args.src, args.classes) if args.format == "yolo"
                       else import_voc(args.src, args.classes, args.split))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        json.dump(coco, f)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
          f"{len(coco['categories'])} classes; use it with --set data.train_ann={args.out} "
          f"data.train_images={image_dir} (or val_ann / val_images)")
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
    from .engine.run_folder import next_free
    from .recipes import recipe

    start = time.time()
    out = Path(args.out or next_free("runs/demo", inside="train"))
    data_dir = out / "data"
    if not (data_dir / "annotations" / "instances_val.json").is_file():
        write_synthetic_coco(data_dir, num_train=args.train_images, num_val=args.val_images, image_size=128, seed=0)
        log.info("synthetic dataset written to %s (%.0f s)", data_dir, time.time() - start)
    cfg = recipe(args.model)
    cfg = replace(cfg, data=replace(cfg.data, path=str(data_dir)), out_dir=str(out / "train"))
    cfg = apply_overrides(cfg, args.set)
    train_in_processes(cfg, args.procs, resume=None)
    model = load(Path(cfg.out_dir) / "last.ckpt")
    dataset = val_dataset(cfg.data, model.input_spec)
    loader = build_loader(dataset, 8, shuffle=False, num_workers=0,
                          size_divisibility=model.input_spec.size_divisibility)
    metrics = evaluate(model, loader, dataset.coco, model.classes)
    preds = predict_files(model, sorted((data_dir / "val").iterdir())[:8], out / "predictions", score_threshold=0.3)
    print(f"\ncodetr demo: {cfg.model} trained in {(time.time() - start) / 60:.1f} min; COCO AP on the synthetic val split:")
    _print_metrics(metrics)
    print(f"metrics: {Path(cfg.out_dir) / 'metrics.jsonl'}   checkpoint: {Path(cfg.out_dir) / 'last.ckpt'}   "
          f"drawn predictions: {preds.parent}")
    return 0


def train_in_processes(cfg, procs: int | None = None, resume: str | None = None) -> None:
    """Train ``cfg`` in ``procs`` (default ``cfg.train.procs``) single-threaded DDP processes
    (gloo) on this machine, or in this process when that is 1, when training runs on a GPU or
    when this process is a rank of a torchrun launch. On a small CPU, processes with one thread
    each use the cores better than one process with several threads (the tiny recipes: 13-25%
    more images per second on 2 cores). Workers die with this process; an error in one becomes
    a ``TrainingError`` carrying its one-line message."""
    import os
    import shutil
    import tempfile

    import torch.multiprocessing as mp

    from .engine.trainer import resolve_device

    procs = cfg.train.procs if procs is None else procs
    if procs > 1 and resolve_device(cfg.train.device).type != "cpu":
        log.info("training on %s in one process (train.procs=%d is for CPU; use torchrun for several GPUs)",
                 cfg.train.device, procs)
        procs = 1
    procs = 1 if du_launched() else min(procs, os.cpu_count() or 1)
    check_run(cfg, resume)
    if procs <= 1:
        from . import distributed as du

        run(cfg, resume=resume)
        du.cleanup(synchronize=True)
        return
    error_dir = tempfile.mkdtemp(prefix="codetr-train-")
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # "terminating process N" after a failure
    try:
        mp.start_processes(_train_worker, args=(procs, _free_port(), cfg.to_dict(), resume, error_dir, os.getpid()),
                           nprocs=procs, start_method="spawn")
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:
        raise TrainingError(_worker_failure(e, Path(error_dir), procs)) from None
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def _train_worker(rank: int, world: int, port: int, cfg_dict: dict, resume: str | None, error_dir: str,
                  launcher_pid: int) -> None:
    import os
    import sys

    import torch

    from .config import RunConfig
    from . import distributed as du

    _die_with_launcher(launcher_pid)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    finished = False
    try:
        run(RunConfig.from_dict(cfg_dict), resume=resume)
        finished = True
    except Exception as e:  # reported by the launcher in one line; a bug keeps its traceback here
        message = str(e) if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {e} (traceback above)"
        if not isinstance(e, USER_ERRORS):
            log.exception("training process %d failed", rank)
        (Path(error_dir) / f"rank{rank}.txt").write_text(f"{time.time()}\n{message}")
        sys.exit(2)
    finally:
        du.cleanup(synchronize=finished)


def _die_with_launcher(launcher_pid: int) -> None:
    """Make this worker die with the launcher, so that it cannot train on as an orphan. torch
    asks the kernel for SIGINT at the parent's death, which a process started in the background
    of a shell ignores; SIGKILL cannot be ignored. Elsewhere than Linux a thread polls the parent."""
    import ctypes
    import os
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == launcher_pid:
                time.sleep(1)
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != launcher_pid:  # the launcher died before the request took effect
        os._exit(1)


def _worker_failure(error, error_dir: Path, procs: int) -> str:
    """One line for the first failure among the workers: the earliest error a worker recorded
    (later ones are usually its peers losing their connection), else how the process ended."""
    recorded = []
    for path in error_dir.glob("rank*.txt"):
        stamp, _, message = path.read_text().partition("\n")
        recorded.append((float(stamp), int(path.stem[4:]), message))
    if recorded:
        _, rank, message = min(recorded)
        return f"training process {rank} of {procs}: {message}"
    rank, signal_name = error.error_index, getattr(error, "signal_name", None)
    if signal_name:
        hint = " (the system may have run out of memory)" if signal_name == "SIGKILL" else ""
        return f"training process {rank} of {procs} was killed by {signal_name}{hint}"
    last_line = str(error).strip().splitlines()[-1] if str(error).strip() else str(error)
    return f"training process {rank} of {procs} failed: {last_line}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

