"""TensorBoard event files and curves.png written beside metrics.jsonl, and ``codetr plot``."""
import json
import logging
import math
import time

import pytest
import torch
from PIL import Image

from codetr.cli import main
from codetr.config import ConfigError, TrainConfig
from codetr.engine import logging_hooks
from codetr.engine.logging_hooks import main_terms, smooth
from codetr.engine.run_folder import rewind_metrics
from codetr.engine.trainer import HookBase, Trainer, build_optimizer, build_scheduler, optimizer_steps_per_epoch

from .fakes import TinyDetector, ToyDataset, build_loader, classes, run_config, toy_coco

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
pytest.importorskip("matplotlib")

TRAIN_KEYS = ("loss", "loss_bbox", "loss_ce", "l1", "lr", "grad_norm")
CLASS_NAMES = [c["name"] for c in toy_coco(1).dataset["categories"]]   # per-class AP is named by the gt


class Killed(Exception):
    pass


class KillAt(HookBase):
    """Raises after step ``step``, or after the first evaluation is logged (``step=None``)."""

    def __init__(self, step: int | None):
        self.step = step

    def after_step(self):
        if self.trainer.global_step == self.step:
            raise Killed

    def after_log(self, record):
        if self.step is None and record["type"] == "eval":
            raise Killed


class CurvesAtEval(HookBase):
    """The bytes of curves.png each time an evaluation is logged."""

    def __init__(self):
        self.seen: list[bytes] = []

    def after_log(self, record):
        if record["type"] == "eval":
            self.seen.append((self.trainer.out_dir / "curves.png").read_bytes())


def make_trainer(cfg, hooks=()):
    torch.manual_seed(0)
    model = TinyDetector(classes())
    tc = cfg.train
    train_loader = build_loader(ToyDataset(8), tc.batch_size, True, 0, seed=tc.seed, drop_last=True)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, optimizer_steps_per_epoch(len(train_loader), tc.accumulate))
    trainer = Trainer(model, optimizer, scheduler, train_loader, cfg,
                      val_loader=build_loader(ToyDataset(4, augment=False), 2, False, 0), coco_gt=toy_coco(4))
    trainer.register_hooks(list(hooks))
    return trainer


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def events(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(records):
    """tag -> [(step, value)] of the metrics.jsonl records, as the event files must hold them."""
    out = {}
    for r in records:
        if r["type"] == "train":
            pairs = {f"train/{k}": r[k] for k in TRAIN_KEYS}
        else:
            pairs = {f"eval/{k}": r[k] for k in ("AP", "AP50", "AP75", "AR100")}
            pairs.update({f"per_class/{m}/{row['name']}": row[m] for row in r["per_class"] for m in ("AP", "AP50")})
        for tag, value in pairs.items():
            out.setdefault(tag, []).append((r["step"], value))
    return out


def assert_events_match(folder, records):
    found = events(folder)
    for tag, pairs in expected_scalars(records).items():
        assert [s for s, _ in found[tag]] == [s for s, _ in pairs], tag   # each step once, in order
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in pairs], rel=1e-6), tag


def assert_real_png(path, min_colors=50):
    image = Image.open(path)
    assert image.format == "PNG" and image.width > 600 and image.height > 250
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) >= min_colors  # lines, text, not a blank canvas


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-epoch run (12 steps, a train record every 2, an evaluation each epoch) and the bytes
    of curves.png at each evaluation."""
    out = tmp_path_factory.mktemp("run")
    curves = CurvesAtEval()
    make_trainer(run_config(out), hooks=[curves]).train()
    return out, curves.seen


def test_event_scalars_equal_metrics_jsonl(finished_run):
    out, _ = finished_run
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(2, 13, 2))
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [0, 1, 2]
    assert_events_match(out, records)
    per_class = {tag for tag in events(out) if tag.startswith("per_class/")}
    assert per_class == {f"per_class/{m}/{name}" for m in ("AP", "AP50") for name in CLASS_NAMES}


def test_curves_png_is_drawn_at_each_evaluation_and_at_the_end(finished_run, tmp_path):
    out, at_eval = finished_run
    assert len(at_eval) == 3 and len(set(at_eval)) == 3   # redrawn with each new evaluation
    assert_real_png(out / "curves.png")
    assert not list(out.glob(".*.tmp"))
    redrawn = logging_hooks.plot_curves(out, tmp_path / "again.png")   # the same records, the same drawing
    assert redrawn.read_bytes() == (out / "curves.png").read_bytes()


@pytest.mark.parametrize("kill_at", [7, None], ids=["mid-epoch", "pending-eval"])
def test_a_resumed_run_has_each_step_once_in_the_events(tmp_path, kill_at):
    """Killed at step 7 (last.ckpt from step 6), or right after the first evaluation was logged
    (last.ckpt from step 4 with that evaluation pending, so it is done again): resumed as
    ``codetr.engine.trainer.train`` resumes, the events hold each metrics.jsonl record once."""
    cfg = run_config(tmp_path)
    with pytest.raises(Killed):
        make_trainer(cfg, hooks=[KillAt(kill_at)]).train()
    # event files are read in name order: time in seconds, then pid and a counter per process,
    # so the resumed run's file must start in a later second than the killed run's
    time.sleep(1 - time.time() % 1 + 0.05)
    resumed = make_trainer(cfg)
    resumed.resume(tmp_path / "last.ckpt")
    assert resumed.global_step == (6 if kill_at else 4)
    rewind_metrics(tmp_path, resumed.global_step, resumed.pending_eval_epoch is not None)
    resumed.train()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [0, 1, 2]
    assert_events_match(tmp_path, records)


def test_explicit_tensorboard_without_the_package_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(logging_hooks, "installed", lambda package: package != "tensorboard")
    with pytest.raises(ConfigError, match=r"^train.tensorboard=true needs the tensorboard package: "
                                          r"pip install tensorboard [^\n]*$"):
        make_trainer(run_config(tmp_path, tensorboard=True))


def test_cli_train_with_tensorboard_true_but_no_package_fails_in_one_line(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--train", "2", "--val", "1", "--size", "64"]) == 0
    monkeypatch.setattr(logging_hooks, "installed", lambda package: package != "tensorboard")
    args = ["train", "deformable_detr_tiny", "--data", str(data), "--out", str(tmp_path / "run"), "--procs", "1",
            "--set", "train.tensorboard=true", "train.max_iters=1", "data.num_workers=0"]
    assert main(args) == 2
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "train.tensorboard=true needs the tensorboard package" in error.getMessage()
    assert "\n" not in error.getMessage() and not (tmp_path / "run" / "last.ckpt").exists()


def test_without_the_packages_auto_trains_with_one_info_line_each(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logging_hooks, "installed", lambda package: False)
    caplog.set_level(logging.INFO, logger="codetr")
    make_trainer(run_config(tmp_path, epochs=1)).train()
    assert (tmp_path / "last.ckpt").is_file()
    assert not list(tmp_path.glob("events.out.tfevents.*")) and not (tmp_path / "curves.png").exists()
    notes = [r.getMessage() for r in caplog.records if "is not installed" in r.getMessage()]
    assert sorted(notes) == ["no TensorBoard event files: tensorboard is not installed (pip install tensorboard)",
                             "no curves.png: matplotlib is not installed (pip install matplotlib)"]


def test_tensorboard_false_writes_no_events_and_curves_are_drawn_at_the_end(tmp_path):
    make_trainer(run_config(tmp_path, epochs=1, eval_every=0, tensorboard=False)).train()
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    assert_real_png(tmp_path / "curves.png")   # no evaluation: drawn when training ended


@pytest.mark.parametrize("value", ["yes", "on", None])
def test_tensorboard_setting_is_checked(value):
    with pytest.raises(ConfigError, match="train.tensorboard must be true, false or 'auto'"):
        TrainConfig(tensorboard=value)


def test_codetr_plot_writes_refuses_and_forces(finished_run, tmp_path, caplog):
    run, _ = finished_run
    png = tmp_path / "curves.png"
    assert main(["plot", str(run), "--out", str(png)]) == 0
    assert_real_png(png)
    png.write_bytes(b"mine")
    assert main(["plot", str(run), "--out", str(png)]) == 2
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "exists; pass --force" in error.getMessage() and png.read_bytes() == b"mine"
    assert main(["plot", str(run), "--out", str(png), "--force"]) == 0
    assert_real_png(png)


def test_codetr_plot_redraws_a_run_folder_s_own_curves(tmp_path):
    records = [{"type": "train", "step": s, "epoch": 0, "iter": s, "lr": 1e-3, "loss": 3 / s, "loss_ce": 2 / s,
                "loss_ce_0": 9 / s} for s in range(1, 21)]
    records.append({"type": "eval", "step": 20, "epoch": 0, "AP": 0.25, "AP50": 0.5, "per_class": []})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut by a ki')
    (tmp_path / "curves.png").write_bytes(b"an older drawing")
    assert main(["plot", str(tmp_path)]) == 0
    assert_real_png(tmp_path / "curves.png")


def test_codetr_plot_of_a_folder_without_metrics_is_one_line_error(tmp_path, caplog):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage() == f"no metrics.jsonl in {str(tmp_path)!r}: not a training run folder"
    assert not (tmp_path / "c.png").exists()


def test_smoothing_is_debiased_and_skips_missing_values():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])   # no pull towards 0 at the start
    out = smooth([1.0, math.nan, 3.0], weight=0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx((0.25 + 1.5) / 0.75)


def test_main_terms_prefer_unnumbered_terms_of_largest_mean():
    train = [{"loss": 9.0, "loss_ce": 1.0, "loss_bbox": 3.0, "loss_giou": 2.0, "loss_ce_0": 5.0, "lr": 8.0}]
    assert main_terms(train, count=2) == ["loss_bbox", "loss_giou"]
    assert main_terms([{"loss": 2.0, "d0.loss_cls": 1.0, "d1.loss_cls": 3.0}]) == ["d1.loss_cls", "d0.loss_cls"]
