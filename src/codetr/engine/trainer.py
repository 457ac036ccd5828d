"""The training loop: a short ``Trainer.run_step`` plus hooks.

Hook call order, on every rank (collectives inside hooks rely on it)::

    before_train()
    for each epoch:
        before_epoch()
        for each batch:
            before_step()
            run_step(batch)          -> trainer.step_logs
            after_step()
        after_epoch()                (only when the epoch ran to its end)
    after_train()                    (only when training finished: a crash or kill skips it)

and, on rank 0 only, ``after_log(record)`` after each line ``Trainer.log`` appends to
metrics.jsonl. Hooks run in registration order. ``default_hooks`` registers
``MetricsLogger`` (metrics.jsonl + tqdm), ``Checkpointer`` (last.ckpt), on rank 0 the hooks of
``logging_hooks`` (TensorBoard events, curves.png), and ``EvalHook`` (every ``eval_every``
epochs, keeps best.ckpt), so an epoch is saved before it is evaluated: an error or a kill
during the evaluation loses no training. Such a checkpoint records the evaluation as
pending (``pending_eval_epoch``), and a run resumed from it evaluates first.

Exact resume: the shuffle order and worker seeds of epoch ``e`` depend only on
``(train.seed, e)`` (``seed_loader``); a run resumed from a mid-epoch checkpoint replays the
epoch's first ``iter`` batches from the loader (so random augmentation in workers matches),
throws them away, then restores the RNG states saved in the checkpoint.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed as du
from ..backends import amp_dtype, apply_device_defaults
from ..config import ConfigError, RunConfig, TrainConfig
from ..detector import LossOutput
from ..structures import Batch, ClassInfo
from .checkpoint import (CheckpointError, atomic_open, load_checkpoint, model_state, rng_state, save_checkpoint,
                         set_rng_state)
from .ema import ModelEMA
from .evaluate import evaluate
from .run_folder import BEST, LAST, RunFolderError, RunLock, checkpoint_to_resume, remove_temp_files, rewind_metrics


class HookBase:
    """Override any of the five methods; ``self.trainer`` is set by ``register_hooks``."""

    trainer: "Trainer"

    def before_train(self) -> None: ...
    def before_epoch(self) -> None: ...
    def before_step(self) -> None: ...
    def after_step(self) -> None: ...
    def after_epoch(self) -> None: ...
    def after_train(self) -> None: ...
    def after_log(self, record: dict) -> None: ...   # rank 0: a record just appended to metrics.jsonl


class Trainer:
    """Runs ``cfg.train`` on ``model`` (a Detector: its train-mode forward returns a
    ``LossOutput``). ``hooks=None`` registers ``default_hooks``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 train_loader: Iterable[Batch], cfg: RunConfig, *, val_loader: Iterable[Batch] | None = None,
                 coco_gt: Any = None, device: torch.device | str | None = None,
                 hooks: list[HookBase] | None = None) -> None:
        self.cfg, self.tcfg = cfg, cfg.train
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        model.to(memory_format=self.memory_format)
        apply_device_defaults(self.device)   # TF32 on Ampere+ GPUs, CPU memory reuse (backends)
        self.amp_dtype = amp_dtype(cfg.train.amp, self.device)
        self.model = wrap_ddp(model, self.device, cfg.train.find_unused_parameters,
                              bf16_gradients=self.amp_dtype == torch.bfloat16)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.ema = ModelEMA(model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_loader, self.val_loader, self.coco_gt = train_loader, val_loader, coco_gt
        self.out_dir = Path(cfg.out_dir)
        self.epoch = self.iter = self.global_step = 0   # position: batch `iter` of `epoch`
        self.best: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}   # the latest evaluation's
        self.step_logs: dict[str, float] = {}
        self.at_boundary = True       # last step ended an accumulation window (optimizer stepped)
        self.pending_eval_epoch: int | None = None   # an ended epoch saved but not yet evaluated
        self._resume_rng: list | None = None
        self.hooks: list[HookBase] = []
        self.register_hooks(default_hooks(self) if hooks is None else hooks)

    # ---- loop -------------------------------------------------------------------------------
    def register_hooks(self, hooks: list[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def call_hooks(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    def train(self) -> None:
        self.model.train()
        try:
            self.call_hooks("before_train")
            while self.epoch < self.tcfg.epochs and not self.done:
                self.run_epoch()
            self.call_hooks("after_train")
        finally:
            release_workers(self.train_loader)
            release_workers(self.val_loader)

    def run_epoch(self) -> None:
        batches = self.epoch_batches()
        self.call_hooks("before_epoch")
        for batch in batches:
            self.call_hooks("before_step")
            self.step_logs = self.run_step(batch)
            self.iter += 1
            self.global_step += 1
            self.call_hooks("after_step")
            if self.done:
                break
        if self.iter == self.iters_per_epoch:
            self.pending_eval_epoch = self.epoch if self.eval_due() else None
            self.call_hooks("after_epoch")
            self.epoch, self.iter = self.epoch + 1, 0

    def run_step(self, batch: Batch) -> dict[str, float]:
        """One batch: forward (under autocast) -> ``LossOutput``, backward of the sum of its
        losses (scaled for fp16, divided by the accumulation window); the window's last batch
        steps the optimizer. Returns every loss and log as a float, and their total as ``loss``."""
        batch = batch.to(self.device)
        images = batch.images.contiguous(memory_format=self.memory_format)
        window, self.at_boundary = self.accumulation_window()
        # DDP: all-reduce gradients only on the window's last backward
        sync = contextlib.nullcontext() if self.at_boundary or not is_ddp(self.model) else self.model.no_sync()
        with sync:
            with self.autocast():
                out = self.model(images, batch.sizes, batch.targets)
            if not isinstance(out, LossOutput):
                raise TypeError(f"train-mode forward returned {type(out).__name__}, not codetr.detector.LossOutput")
            total = out.total()
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at step {self.global_step}: "
                                         f"{ {k: float(v) for k, v in {**out.losses, **out.logs}.items()} }")
            self.scaler.scale(total / window).backward()
        logs = {k: float(v.detach()) for k, v in {**out.losses, **out.logs}.items()}
        logs["loss"] = float(total.detach())
        if self.at_boundary:
            logs["grad_norm"] = self.optimizer_step()
        return logs

    def optimizer_step(self) -> float:
        """Unscale, clip (when clip_max_norm > 0), step, zero grads, step the LR schedule."""
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.tcfg.clip_max_norm if self.tcfg.clip_max_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def accumulation_window(self) -> tuple[int, bool]:
        """(batches in the current optimizer step, whether this batch is its last). Windows of
        ``accumulate`` batches start at each epoch; the last one is cut at the epoch end."""
        end_of_epoch = min(self.iters_per_epoch, self.iter + self.total_iters - self.global_step)
        start = self.iter - self.iter % self.tcfg.accumulate
        end = min(start + self.tcfg.accumulate, end_of_epoch)
        return end - start, self.iter + 1 == end

    def epoch_batches(self) -> Iterator[Batch]:
        """This epoch's batches from ``self.iter`` on, in an order fixed by (seed, epoch)."""
        seed_loader(self.train_loader, self.tcfg.seed, self.epoch)
        batches = iter(self.train_loader)
        for _ in range(self.iter):  # resumed mid-epoch: replay the batches already trained on
            next(batches)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng[du.rank() % len(self._resume_rng)])
            self._resume_rng = None
        return batches

    # ---- state ------------------------------------------------------------------------------
    @property
    def iters_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def total_iters(self) -> int:
        total = self.tcfg.epochs * self.iters_per_epoch
        return min(total, self.tcfg.max_iters) if self.tcfg.max_iters is not None else total

    @property
    def done(self) -> bool:
        return self.global_step >= self.total_iters

    def eval_due(self) -> bool:
        """Whether the epoch that just ended is evaluated: every ``eval_every`` epochs and the last."""
        every = self.tcfg.eval_every
        has_data = self.val_loader is not None and self.coco_gt is not None
        return has_data and every > 0 and ((self.epoch + 1) % every == 0 or self.epoch + 1 == self.tcfg.epochs)

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved as the checkpoint's ``model``: the EMA when kept."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        """Current base LR (first param group's LR over its multiplier)."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_multiplier", 1.0)

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics (live model and EMA) on every rank. DDP leaves buffers
        per rank during training (no broadcast before each forward); what is evaluated and
        saved is rank 0's, as with DDP's per-step broadcast. Collective under DDP."""
        du.broadcast_buffers(unwrap(self.model))
        if self.ema is not None:
            du.broadcast_buffers(self.ema.module)

    def state_dict(self) -> dict:
        """Checkpoint content. Collective under DDP (gathers every rank's RNG states)."""
        self.sync_buffers()
        epoch, it = (self.epoch + 1, 0) if self.iter >= self.iters_per_epoch else (self.epoch, self.iter)
        ema = ({"live_model": unwrap(self.model).state_dict(), "ema_updates": self.ema.updates}
               if self.ema is not None else {})
        return {**model_state(self.eval_model, self.cfg.model), **ema,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": epoch, "iter": it,
                "global_step": self.global_step, "rng": du.all_gather_object(rng_state()),
                "run_config": self.cfg.to_dict(), "best": dict(self.best),
                "pending_eval_epoch": self.pending_eval_epoch}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state.get("live_model", state["model"]))
        if self.ema is not None:  # a checkpoint without an EMA starts one from its weights
            self.ema.load_state_dict({"weights": state["model"], "updates": state.get("ema_updates", 0)})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iter, self.global_step = state["epoch"], state["iter"], state["global_step"]
        self.best = dict(state.get("best") or {})
        self.pending_eval_epoch = state.get("pending_eval_epoch")
        self._resume_rng = state["rng"]  # restored once the epoch's seen batches are replayed

    def save(self, name: str = LAST) -> Path:
        """Write a checkpoint to out_dir/name (rank 0 writes; every rank must call)."""
        state, path = self.state_dict(), self.out_dir / name
        if du.is_main():
            save_checkpoint(path, state)
        return path

    def resume(self, path: str | Path) -> None:
        model = unwrap(self.model)
        state = load_checkpoint(path, family=model.family, model_name=self.cfg.model)
        saved = ClassInfo.from_dict(state["classes"])
        problem = saved.mismatch(model.classes, mine="checkpoint", theirs="data")
        if problem:
            raise CheckpointError(f"cannot resume from {str(path)!r} ({len(saved)} classes) with data of "
                                  f"{len(model.classes)} classes: {problem}")
        self.load_state_dict(state)

    def log(self, record: dict) -> None:
        """Append one JSON line to out_dir/metrics.jsonl, then pass it to the hooks' ``after_log``
        (rank 0 only)."""
        if du.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for hook in self.hooks:
                hook.after_log(record)


# ---- hooks ----------------------------------------------------------------------------------
class MetricsLogger(HookBase):
    """Every ``log_every`` steps (and at the end): means over the window of the step logs,
    averaged across ranks, as a ``{"type": "train"}`` line in metrics.jsonl; rank 0 also
    shows a tqdm bar with loss, lr and ETA. Ranks may log different keys: each key is averaged
    over the ranks that logged it."""

    def before_train(self) -> None:
        t = self.trainer
        self.bar = tqdm(total=t.total_iters, initial=t.global_step, disable=not du.is_main(),
                        dynamic_ncols=True, desc="train")
        self.window: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        self.window.append(t.step_logs)
        self.bar.update(1)
        if t.global_step % max(t.tcfg.log_every, 1) == 0 or t.done:
            self.flush()

    def after_train(self) -> None:
        if self.window:
            self.flush()
        self.bar.close()

    def flush(self) -> None:
        t, now = self.trainer, time.perf_counter()
        keys = sorted(set().union(*du.all_gather_object({k for logs in self.window for k in logs})))
        values = torch.tensor([[logs.get(k, math.nan) for k in keys] for logs in self.window],
                              dtype=torch.float64)                                   # [steps, keys]
        means = du.nanmean_over_ranks(values.nanmean(0)).tolist()
        step_time = (now - self.start) / len(self.window)
        record = {"type": "train", "step": t.global_step, "epoch": t.epoch, "iter": t.iter,
                  "lr": t.lr, "time": step_time, "eta_s": step_time * (t.total_iters - t.global_step),
                  "timestamp": time.time(), **dict(zip(keys, means))}
        t.log(record)
        self.bar.set_postfix(loss=f"{record.get('loss', math.nan):.4f}", lr=f"{t.lr:.2e}")
        self.window, self.start = [], now


class EvalHook(HookBase):
    """COCO evaluation of the epochs that ``Trainer.eval_due``, after ``Checkpointer`` saved them
    (it marks them ``pending_eval_epoch``); logs a ``{"type": "eval"}`` line and writes best.ckpt
    when AP improves. A run resumed from a checkpoint whose evaluation was pending evaluates
    before training on."""

    def before_train(self) -> None:
        if self.trainer.pending_eval_epoch is not None:
            self.run()

    def after_epoch(self) -> None:
        if self.trainer.pending_eval_epoch is not None:
            self.run()

    def run(self) -> dict[str, float]:
        t = self.trainer
        start, epoch = time.perf_counter(), t.pending_eval_epoch
        t.sync_buffers()
        metrics = evaluate(t.eval_model, t.val_loader, t.coco_gt, unwrap(t.model).classes)
        t.last_metrics, t.pending_eval_epoch = metrics, None
        t.log({"type": "eval", "step": t.global_step, "epoch": epoch, "eval_s": time.perf_counter() - start,
               "timestamp": time.time(), **metrics})
        if metrics["AP"] is not None and metrics["AP"] > t.best.get("AP", -math.inf):  # None: no val gt
            t.best = {"AP": metrics["AP"], "epoch": epoch, "step": t.global_step}
            t.save(BEST)
        return metrics


class Checkpointer(HookBase):
    """last.ckpt every ``checkpoint_every_iters`` batches (at optimizer-step boundaries), at
    each epoch end (before its evaluation) and when training stops; a kill loses at most the
    work since the last one."""

    def before_train(self) -> None:
        self.saved_at = (self.trainer.global_step, self.trainer.pending_eval_epoch)

    def after_step(self) -> None:
        t, every = self.trainer, self.trainer.tcfg.checkpoint_every_iters
        if every > 0 and t.at_boundary and t.global_step - self.saved_at[0] >= every \
                and t.iter < t.iters_per_epoch:  # the epoch end saves anyway
            self.save()

    def after_epoch(self) -> None:
        self.save()

    def after_train(self) -> None:
        t = self.trainer
        if (t.global_step, t.pending_eval_epoch) != self.saved_at:  # new steps, or an evaluation since
            self.save()

    def save(self) -> None:
        t = self.trainer
        t.save(LAST)
        self.saved_at = (t.global_step, t.pending_eval_epoch)


def default_hooks(trainer: Trainer) -> list[HookBase]:
    from .logging_hooks import log_hooks

    hooks: list[HookBase] = [MetricsLogger(), Checkpointer(), *log_hooks(trainer.tcfg.tensorboard)]
    if trainer.val_loader is not None and trainer.coco_gt is not None:
        hooks.append(EvalHook())
    return hooks


# ---- building blocks ------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_ddp(model) else model


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DistributedDataParallel)


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False,
             bf16_gradients: bool = False) -> nn.Module:
    """DistributedDataParallel when world_size > 1, else ``model`` itself. Buffers are synced
    once at the start, not before every forward (``Trainer.sync_buffers`` does it before
    evaluating and saving); ``bf16_gradients`` all-reduces gradients in bfloat16 (half the
    bytes; meant for bfloat16 autocast, where the gradients come from bfloat16 products
    anyway). On 2 single-thread CPU processes the two save 0-6% of a tiny DETR's step
    (benchmarks/bench_ddp_cpu.py)."""
    if du.world_size() == 1 or is_ddp(model):
        return model
    ids = [device.index if device.index is not None else du.local_rank()] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters,
                                  forward_sync_buffers=False)
    if bf16_gradients:
        ddp.register_comm_hook(None, bf16_compress_hook)
    return ddp


def param_groups(model: nn.Module, lr: float, multipliers: dict[str, float]) -> list[dict]:
    """One group per multiplier; a parameter takes the multiplier of the first key that is a
    substring of its name (1.0 when none); frozen parameters are left out."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            mult = next((m for key, m in multipliers.items() if key in name), 1.0)
            groups.setdefault(mult, []).append(p)
    return [{"params": ps, "lr": lr * m, "lr_multiplier": m} for m, ps in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; the fused kernel where the weights' device has one (on CPU it steps a 13M-weight
    model ~7x faster than the default multi-tensor loop)."""
    devices = {p.device.type for p in unwrap(model).parameters()}
    return torch.optim.AdamW(param_groups(model, cfg.lr, cfg.lr_multipliers), lr=cfg.lr,
                             weight_decay=cfg.weight_decay, fused=devices <= {"cpu", "cuda"})


def lr_factor(step: int, warmup: int, drop_step: int | None, gamma: float, schedule: str = "step",
              total_steps: int = 0, final: float = 0.01) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup over ``warmup`` steps, times
    ``"step"``: ``gamma`` from ``drop_step`` on; ``"cosine"`` / ``"linear"``: a decay from 1 after
    the warmup to ``final`` at ``total_steps``."""
    if schedule == "step":
        factor = gamma if drop_step is not None and step >= drop_step else 1.0
    else:
        t = min(max(step - warmup, 0) / max(total_steps - warmup, 1), 1.0)
        factor = final + (1 - final) * (0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t)
    return factor * min(1.0, (step + 1) / warmup) if warmup > 0 else factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step LambdaLR: warmup over ``warmup_iters``, then ``cfg.lr_schedule``."""
    drop = cfg.lr_drop * steps_per_epoch if cfg.lr_drop is not None else None
    factor = functools.partial(lr_factor, warmup=cfg.warmup_iters, drop_step=drop, gamma=cfg.lr_gamma,
                               schedule=cfg.lr_schedule, total_steps=cfg.epochs * steps_per_epoch,
                               final=cfg.lr_final)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_steps_per_epoch(batches_per_epoch: int, accumulate: int) -> int:
    return -(-batches_per_epoch // accumulate)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def seed_loader(loader: Any, seed: int, epoch: int) -> None:
    """Make ``loader``'s epoch ``epoch`` (shuffle order, worker seeds) depend only on
    (seed, epoch): ``set_epoch`` on samplers that have it, re-seed its torch.Generators,
    restart persistent workers."""
    samplers = (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None))
    for sampler in samplers:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    generators = {id(g): g for g in (getattr(loader, "generator", None),
                                     getattr(getattr(loader, "sampler", None), "generator", None))
                  if isinstance(g, torch.Generator)}
    if getattr(loader, "generator", None) is None:
        warnings.warn("train loader has no torch.Generator: its shuffle order and worker seeds "
                      "follow the global RNG, so a resumed run will not repeat them exactly")
    for g in generators.values():
        g.manual_seed(epoch_seed(seed, epoch))
    # Persistent workers keep their RNG streams across epochs, so epoch e's augmentations would
    # depend on epochs 0..e-1: start this epoch's workers afresh, seeded from the generator.
    release_workers(loader)


def release_workers(loader: Any) -> None:
    """Shut down the persistent workers a DataLoader keeps between epochs (if any)."""
    old = getattr(loader, "_iterator", None)
    if old is not None and hasattr(old, "_shutdown_workers"):
        loader._iterator = None
        old._shutdown_workers()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``train.device`` (or the ``setting`` named, e.g. ``--device``) as a torch.device ("auto":
    this rank's GPU, else the CPU); a name torch does not know, or a device this machine does
    not have, raises ``ConfigError``."""
    if name == "auto":
        return du.default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting} must be 'auto' or a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                          f"got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}={name!r}, but torch sees no CUDA GPU on this machine "
                          f"(use {setting}=cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{setting}={name!r}, but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting}={name!r}, but MPS is not available on this machine")
    return device


# ---- convenience ----------------------------------------------------------------------------
def train(run_config: RunConfig, model: nn.Module, train_dataset: Any, val_dataset: Any = None,
          resume: str | Path | None = None) -> Trainer:
    """Build loaders (``codetr.data.loader.build_loader``), AdamW and the LR schedule, then train
    into ``run_config.out_dir``, which this run locks (``RunLock``) until it ends.

    ``resume``: None starts a new run and refuses a folder that holds one; ``"auto"`` continues
    from out_dir/last.ckpt (from scratch, with a warning, when there is none); a path continues
    from that checkpoint. A resumed run's metrics.jsonl is cut back to the checkpoint's step."""
    from codetr.data.loader import build_loader

    cfg, tc = run_config, run_config.train
    du.init_distributed()
    device = resolve_device(tc.device)
    with contextlib.ExitStack() as owned:
        checkpoint = _own_run_folder(owned, Path(cfg.out_dir), resume)
        seed_all(tc.seed + du.rank())
        model.to(device)
        distributed = du.world_size() > 1
        loader_args = dict(num_workers=cfg.data.num_workers, seed=tc.seed, distributed=distributed)
        train_loader = build_loader(train_dataset, tc.batch_size, shuffle=True, drop_last=True, **loader_args)
        val_loader = (build_loader(val_dataset, tc.batch_size, shuffle=False, **loader_args)
                      if val_dataset is not None else None)
        optimizer = build_optimizer(model, tc)
        scheduler = build_scheduler(optimizer, tc, optimizer_steps_per_epoch(len(train_loader), tc.accumulate))
        trainer = Trainer(model, optimizer, scheduler, train_loader, cfg, val_loader=val_loader,
                          coco_gt=getattr(val_dataset, "coco", None), device=device)
        if checkpoint is not None:
            trainer.resume(checkpoint)
        if du.is_main():
            rewind_metrics(trainer.out_dir, trainer.global_step, trainer.pending_eval_epoch is not None)
            with atomic_open(trainer.out_dir / "config.json", "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        trainer.train()
    return trainer


def _own_run_folder(owned: contextlib.ExitStack, out_dir: Path, resume: str | Path | None) -> Path | None:
    """Rank 0 locks ``out_dir`` (until ``owned`` closes), clears temporaries of an interrupted save
    and decides what to resume from; every rank gets that checkpoint path, or the error."""
    error, checkpoint = None, None
    if du.is_main():
        try:
            owned.enter_context(RunLock(out_dir))
            remove_temp_files(out_dir)
            checkpoint = checkpoint_to_resume(out_dir, resume)
        except (RunFolderError, FileNotFoundError) as e:
            error = str(e)
    error, checkpoint = du.broadcast_object((error, checkpoint))
    if error is not None:
        raise RunFolderError(error)
    return checkpoint
