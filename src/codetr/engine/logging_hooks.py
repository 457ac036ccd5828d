"""TensorBoard event files and a PNG of the training curves, both made of the records a run
appends to its ``metrics.jsonl`` (``Trainer.log``), in the run folder, on rank 0.

* ``TensorBoardLogger``: each record as scalars at its global step: ``train/<key>`` (every loss
  term, ``loss``: their total, ``lr``, ``grad_norm``, ``time``: seconds per step),
  ``eval/<metric>`` (AP, AP50, ..., AR100, ..., mask_AP, ...) and
  ``per_class/<metric>/<class name>`` (AP, AP50, mask_AP, mask_AP50). ``train.tensorboard``:
  ``"auto"`` (on when the tensorboard package is installed), true or false. A resumed run purges
  the events from its checkpoint's step on (``purge_step``) and writes again the records of that
  step that ``metrics.jsonl`` keeps, so the events hold each step once, as ``metrics.jsonl`` does.
* ``CurvePlotter``: ``<run>/curves.png`` (``plot_curves``), redrawn after each evaluation and
  when training ends; without matplotlib, one info line and no plot.
* ``plot_curves``: the loss and AP curves of any run folder (``codetr plot``).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed as du
from ..config import ConfigError
from .checkpoint import atomic_open
from .run_folder import METRICS_NAME
from .trainer import HookBase

log = logging.getLogger("codetr")

CURVES_NAME = "curves.png"
BOOKKEEPING = frozenset({"type", "step", "epoch", "iter", "timestamp", "eta_s"})   # not plotted as scalars
PER_CLASS_METRICS = ("AP", "AP50")
EVAL_CURVES = ("AP", "AP50", "mask_AP", "mask_AP50")
MAIN_TERMS = 4          # loss terms drawn beside the total
SMOOTHING = 0.6         # weight of TensorBoard's exponential moving average


class MissingPackageError(ValueError):
    """An optional package that a requested output needs (a ValueError: the command line
    reports it in one line)."""


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def tensorboard_enabled(setting: bool | str) -> bool:
    """Whether ``train.tensorboard=setting`` writes event files: ``"auto"`` when tensorboard is
    installed (else one info line on rank 0); ``True`` without it raises ``ConfigError``."""
    available = installed("tensorboard")
    if setting is True and not available:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or set train.tensorboard=false)")
    if setting == "auto" and not available and du.is_main():
        log.info("no TensorBoard event files: tensorboard is not installed (pip install tensorboard)")
    return available and setting in (True, "auto")


def log_hooks(tensorboard: bool | str) -> list[HookBase]:
    """This rank's hooks that draw on metrics.jsonl: on rank 0, ``TensorBoardLogger`` (when
    ``tensorboard_enabled``) and ``CurvePlotter``; none on the others. Every rank checks the
    setting, so that a missing package stops them all."""
    enabled = tensorboard_enabled(tensorboard)
    if not du.is_main():
        return []
    return ([TensorBoardLogger()] if enabled else []) + [CurvePlotter()]


class TensorBoardLogger(HookBase):
    """Each metrics.jsonl record as TensorBoard scalars in the run folder (module docstring).
    The event file is opened at the first record, so a run that logs nothing (a finished run
    resumed) leaves the folder as it was. Registered before ``EvalHook``: a resumed run's pending
    evaluation is logged from its ``before_train``."""

    def before_train(self) -> None:
        t = self.trainer
        self.writer: Any = None
        self.purge_step = t.global_step if t.global_step > 0 else None
        self.kept: list[dict] = []   # the records of the checkpoint's step that metrics.jsonl keeps
        if self.purge_step is not None:
            redone = t.pending_eval_epoch is not None   # that step's evaluation is done again
            self.kept = [r for r in read_records(t.out_dir / METRICS_NAME)
                         if r["step"] == t.global_step and not (redone and r["type"] == "eval")]

    def after_log(self, record: dict) -> None:
        if self.writer is None:
            self.open()
        self.write(record)

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.trainer.out_dir), purge_step=self.purge_step)
        for record in self.kept:   # purged with the steps after them: written again
            self.write(record)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()   # a killed run keeps what metrics.jsonl has

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CurvePlotter(HookBase):
    """``<run>/curves.png`` redrawn after each evaluation, and when training ends if records
    came after the last drawing."""

    def before_train(self) -> None:
        self.enabled, self.stale = installed("matplotlib"), False
        if not self.enabled:
            log.info("no %s: matplotlib is not installed (pip install matplotlib)", CURVES_NAME)

    def after_log(self, record: dict) -> None:
        self.stale = True
        if record["type"] == "eval":
            self.draw()

    def after_train(self) -> None:
        if self.stale:
            self.draw()

    def draw(self) -> None:
        if self.enabled:
            plot_curves(self.trainer.out_dir)
        self.stale = False


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one metrics.jsonl record (module docstring); values
    that are not numbers (None: a size range without ground truth) are left out."""
    out = {f"{record['type']}/{k}": v for k, v in record.items() if k not in BOOKKEEPING and is_number(v)}
    for key, rows in record.items():
        if key.endswith("per_class") and isinstance(rows, list):
            prefix = key[: -len("per_class")]    # "" or "mask_"
            out.update({f"per_class/{prefix}{m}/{row['name']}": row[m]
                        for row in rows for m in PER_CLASS_METRICS if is_number(row.get(m))})
    return out


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl that have a type and an integer step; other lines (one cut
    by a kill) are skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "type" in record and isinstance(record.get("step"), int):
            records.append(record)
    return records


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the training loss (its total, raw and smoothed, and the ``MAIN_TERMS`` largest terms,
    smoothed) against the step and the evaluations' AP / AP50 against the epoch from
    ``run_dir``'s metrics.jsonl into the PNG ``out`` (default ``<run_dir>/curves.png``),
    atomically. Returns ``out``."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_NAME} in {str(run_dir)!r}: not a training run folder")
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no training or evaluation record to plot")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPackageError("plotting needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    loss_ax, eval_ax = fig.subplots(1, 2)
    draw_losses(loss_ax, [r for r in records if r["type"] == "train"])
    draw_evaluations(eval_ax, [r for r in records if r["type"] == "eval"])
    fig.suptitle(Path(run_dir).resolve().name)
    out = Path(out) if out is not None else Path(run_dir) / CURVES_NAME
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return out


def draw_losses(ax: Any, train: list[dict]) -> None:
    ax.set(title="training loss", xlabel="step")
    if not train:
        ax.text(0.5, 0.5, "no training record yet", ha="center", transform=ax.transAxes)
        return
    steps = [r["step"] for r in train]
    total = values(train, "loss")
    ax.plot(steps, total, color="C0", alpha=0.3, linewidth=1)
    ax.plot(steps, smooth(total), color="C0", linewidth=2, label="loss (total)")
    for i, key in enumerate(main_terms(train), start=1):
        ax.plot(steps, smooth(values(train, key)), color=f"C{i}", linewidth=1.2, label=key)
    ax.legend(fontsize="small")


def draw_evaluations(ax: Any, evals: list[dict]) -> None:
    ax.set(title="evaluation", xlabel="epochs trained")
    ax.xaxis.get_major_locator().set_params(integer=True)
    keys = [k for k in EVAL_CURVES if any(is_number(r.get(k)) for r in evals)]
    if not keys:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", transform=ax.transAxes)
        return
    for key in keys:
        points = [(r["epoch"] + 1, r[key]) for r in evals if is_number(r.get(key))]
        ax.plot(*zip(*points), marker="o", clip_on=False, label=f"{key} (last {points[-1][1]:.3f})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")


def values(records: list[dict], key: str) -> list[float]:
    """``key``'s value in each record, NaN where it is missing or not a number."""
    return [float(r[key]) if is_number(r.get(key)) else math.nan for r in records]


def main_terms(train: list[dict], count: int = MAIN_TERMS) -> list[str]:
    """The ``count`` loss terms of largest mean, among those without a digit in their name when
    there are any (numbered terms are auxiliary copies: ``loss_ce_0``, mmdet's ``d0.loss_cls``)."""
    terms = sorted({k for r in train for k in r if "loss" in k and k != "loss"})
    main = [k for k in terms if not any(c.isdigit() for c in k)] or terms
    means = {k: np.nanmean(values(train, k)) for k in main}
    return sorted(main, key=lambda k: -means[k])[:count]


def smooth(series: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average; NaN entries stay NaN and are skipped."""
    out, average, seen = [], 0.0, 0
    for value in series:
        if math.isnan(value):
            out.append(math.nan)
            continue
        seen += 1
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** seen))
    return out
