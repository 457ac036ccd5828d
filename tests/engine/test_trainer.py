import json
import math

import pytest
import torch

from codetr.engine.checkpoint import CheckpointError, load_checkpoint
from codetr.backends import amp_dtype
from codetr.engine.trainer import (HookBase, Trainer, build_optimizer, build_scheduler, lr_factor,
                                   optimizer_steps_per_epoch, param_groups, seed_all, train)

from .fakes import TinyDetector, ToyDataset, build_loader, classes, run_config, toy_coco


class Recorder(HookBase):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def after_step(self):
        self.losses[self.trainer.global_step] = self.trainer.step_logs["loss"]


class Killed(Exception):
    pass


class KillAt(HookBase):
    def __init__(self, step):
        self.step = step

    def after_step(self):
        if self.trainer.global_step == self.step:
            raise Killed


def make_trainer(cfg, init_seed=0, global_seed=None, dropout=0.1, hooks=()):
    torch.manual_seed(init_seed)
    model = TinyDetector(classes(), dropout=dropout)
    seed_all(cfg.train.seed if global_seed is None else global_seed)
    tc = cfg.train
    train_loader = build_loader(ToyDataset(8), tc.batch_size, True, cfg.data.num_workers, seed=tc.seed, drop_last=True)
    val_loader = build_loader(ToyDataset(4, augment=False), 2, False, 0)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, optimizer_steps_per_epoch(len(train_loader), tc.accumulate))
    trainer = Trainer(model, optimizer, scheduler, train_loader, cfg, val_loader=val_loader, coco_gt=toy_coco(4))
    recorder = Recorder()
    trainer.register_hooks([recorder, *hooks])
    return trainer, recorder


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_param_groups_use_first_matching_multiplier():
    model = TinyDetector(classes())
    groups = param_groups(model, 1e-3, {"backbone": 0.1, "head": 0.5, "box_head": 7.0})
    by_mult = {g["lr_multiplier"]: g for g in groups}
    assert set(by_mult) == {0.1, 0.5}  # 'head' matches box_head before 'box_head' is tried
    assert len(by_mult[0.1]["params"]) == 2 and by_mult[0.1]["lr"] == pytest.approx(1e-4)
    assert len(by_mult[0.5]["params"]) == 4
    assert all(p is not model.frozen for g in groups for p in g["params"])  # requires_grad=False left out


def test_lr_schedule_warmup_then_drop():
    factors = [lr_factor(s, warmup=4, drop_step=6, gamma=0.1) for s in range(8)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 0.1, 0.1])
    assert lr_factor(100, warmup=0, drop_step=None, gamma=0.1) == 1.0


@pytest.mark.parametrize("schedule,midway", [("cosine", 0.505), ("linear", 0.505)])
def test_lr_schedule_decays_after_warmup_to_final(schedule, midway):
    """Warmup over 2 steps, then from 1 down to ``final`` = 0.01 at step 12 (halfway: step 7)."""
    f = [lr_factor(s, warmup=2, drop_step=None, gamma=0.1, schedule=schedule, total_steps=12, final=0.01)
         for s in range(14)]
    assert f[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert f[7] == pytest.approx(midway) and f[12] == f[13] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))
    a_fifth = 0.01 + 0.99 * ((1 + math.cos(math.pi / 5)) / 2 if schedule == "cosine" else 0.8)
    assert f[4] == pytest.approx(a_fifth)  # step 4: (4 - 2) / 10 of the decay


@pytest.mark.parametrize("num_workers,ema_decay,channels_last", [(0, 0.0, False), (2, 0.0, False), (0, 0.9, False),
                                                                  (0, 0.9, True)])
def test_resume_mid_epoch_is_exact(tmp_path, num_workers, ema_decay, channels_last):
    """12 iterations straight vs. killed at 7 (last.ckpt from step 6, mid-epoch), then resumed
    from scratch objects with other seeds: identical losses and weights (and EMA weights)."""
    cfg = run_config(tmp_path / "a", ema_decay=ema_decay, ema_warmup=3, channels_last=channels_last)
    cfg.data.num_workers = num_workers
    full, full_losses = make_trainer(cfg)
    full.train()
    assert sorted(full_losses.losses) == list(range(1, 13))
    conv = full.model.backbone.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last

    cfg_b = run_config(tmp_path / "b", ema_decay=ema_decay, ema_warmup=3, channels_last=channels_last)
    cfg_b.data.num_workers = num_workers
    killed, killed_losses = make_trainer(cfg_b, hooks=[KillAt(7)])
    with pytest.raises(Killed):
        killed.train()
    state = load_checkpoint(tmp_path / "b" / "last.ckpt", family="tiny", model_name="tiny_test")
    assert (state["epoch"], state["iter"], state["global_step"]) == (1, 2, 6)
    assert killed_losses.losses == {k: full_losses.losses[k] for k in range(1, 8)}

    resumed, resumed_losses = make_trainer(cfg_b, init_seed=123, global_seed=321)
    resumed.resume(tmp_path / "b" / "last.ckpt")
    resumed.train()
    assert resumed_losses.losses == {k: full_losses.losses[k] for k in range(7, 13)}
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(full.eval_model.state_dict().items(), resumed.eval_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.best == full.best and (tmp_path / "b" / "best.ckpt").is_file()
    saved = load_checkpoint(tmp_path / "b" / "last.ckpt")["model"]  # what codetr.load would use
    assert all(torch.equal(v, full.eval_model.state_dict()[k]) for k, v in saved.items())
    if ema_decay:
        assert not all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(), saved.values()))


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    big_cfg = run_config(tmp_path / "big", batch_size=4, accumulate=1, epochs=2, eval_every=0)
    small_cfg = run_config(tmp_path / "small", batch_size=2, accumulate=2, epochs=2, eval_every=0)
    big, _ = make_trainer(big_cfg, dropout=0)
    big.train()
    small, _ = make_trainer(small_cfg, dropout=0)  # same seeds: same samples and augmentations
    small.train()
    assert small.scheduler.last_epoch == big.scheduler.last_epoch == 4  # optimizer steps
    for a, b in zip(big.model.parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_metrics_log_and_checkpoints(tmp_path):
    trainer, _ = make_trainer(run_config(tmp_path))
    trainer.train()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train_lines = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train_lines] == [2, 4, 6, 8, 10, 12]
    assert {"epoch", "lr", "time", "eta_s", "loss", "loss_bbox", "loss_ce", "l1", "grad_norm"} <= set(train_lines[0])
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [0, 1, 2]
    assert train_lines[-1]["lr"] == pytest.approx(1e-3)  # dropped x0.1 at epoch 2
    last = load_checkpoint(tmp_path / "last.ckpt")
    assert (last["epoch"], last["iter"], last["global_step"]) == (3, 0, 12)
    assert last["run_config"]["train"]["epochs"] == 3 and last["best"]["AP"] == trainer.best["AP"]


def test_resume_refuses_another_model(tmp_path):
    trainer, _ = make_trainer(run_config(tmp_path, max_iters=1))
    trainer.train()
    other = run_config(tmp_path)
    other.model = "tiny_other"
    fresh, _ = make_trainer(other)
    with pytest.raises(CheckpointError, match="model_name 'tiny_test', expected 'tiny_other'"):
        fresh.resume(tmp_path / "last.ckpt")


class ToyCocoDataset(ToyDataset):
    def __init__(self, n, augment):
        super().__init__(n, augment)
        self.coco = toy_coco(n)


def test_train_convenience_learns_and_auto_resumes(tmp_path):
    """train() with codetr.data.loader.build_loader: the loss goes down; resume='auto' continues."""
    cfg = run_config(tmp_path, epochs=6, lr_drop=None, checkpoint_every_iters=0, log_every=4)
    torch.manual_seed(0)
    train(cfg, TinyDetector(classes()), ToyCocoDataset(8, True), ToyCocoDataset(4, False))
    losses = [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "train"]
    assert losses[-1] < 0.6 * losses[0]
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()

    cfg.train.epochs = 7
    trainer = train(cfg, TinyDetector(classes()), ToyCocoDataset(8, True), ToyCocoDataset(4, False), resume="auto")
    assert trainer.global_step == 28 and trainer.epoch == 7
    assert not math.isnan(trainer.best["AP"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_stopped_by_max_iters_resumes_exactly(tmp_path, num_workers):
    """Through train() and codetr.data.loader (persistent workers when num_workers > 0)."""
    def run(out_dir, max_iters=None, resume=None):
        cfg = run_config(out_dir, log_every=1, max_iters=max_iters, eval_every=0)
        cfg.data.num_workers = num_workers
        torch.manual_seed(0)
        train(cfg, TinyDetector(classes()), ToyCocoDataset(8, True), resume=resume)
        return [r["loss"] for r in read_jsonl(out_dir / "metrics.jsonl") if r["type"] == "train"]

    full = run(tmp_path / "a")
    assert len(full) == 12
    assert len(run(tmp_path / "b", max_iters=6)) == 6
    assert run(tmp_path / "b", resume="auto") == full


@pytest.mark.parametrize("bf16_units", [True, False])
def test_auto_amp_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, bf16_units):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert amp_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if bf16_units else None)
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert amp_dtype("fp16", torch.device("cpu")) == torch.float16 and amp_dtype("none", torch.device("cpu")) is None


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_on_cpu(tmp_path, amp):
    trainer, recorder = make_trainer(run_config(tmp_path, amp=amp, max_iters=3, eval_every=0))
    trainer.train()
    assert len(recorder.losses) == 3 and all(math.isfinite(v) for v in recorder.losses.values())
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 3
