"""Run folders: a new run never destroys an old one, one run at a time, a resumed run logs each
step once, a kill mid-save or mid-evaluation loses nothing."""
import json
import logging
import os
import stat

import pytest
import torch

from codetr.engine import trainer as trainer_module
from codetr.engine.checkpoint import CheckpointError, atomic_open, load_checkpoint, save_checkpoint
from codetr.engine.run_folder import (RunFolderError, RunLock, check_free, latest_run, next_free, remove_temp_files,
                                      rewind_metrics)
from codetr.engine.trainer import HookBase, train

from .fakes import TinyDetector, ToyDataset, classes, run_config, toy_coco


class ToyCocoDataset(ToyDataset):
    def __init__(self, n, augment):
        super().__init__(n, augment)
        self.coco = toy_coco(n)


class Killed(Exception):
    pass


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(cfg, resume=None, kill_at=None, monkeypatch=None):
    """``train()`` on the toy data; ``kill_at``: raise ``Killed`` after that step, as a kill would
    stop it (nothing after the step runs)."""
    if kill_at is not None:
        class KillAt(HookBase):
            def after_step(self):
                if self.trainer.global_step == kill_at:
                    raise Killed

        defaults = trainer_module.default_hooks
        monkeypatch.setattr(trainer_module, "default_hooks", lambda t: [*defaults(t)[:1], KillAt(), *defaults(t)[1:]])
    torch.manual_seed(0)
    try:
        return train(cfg, TinyDetector(classes()), ToyCocoDataset(8, True), ToyCocoDataset(4, False), resume=resume)
    finally:
        if kill_at is not None:
            monkeypatch.undo()


def test_a_new_run_refuses_a_folder_that_holds_one(tmp_path):
    cfg = run_config(tmp_path, max_iters=2)
    run(cfg)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RunFolderError, match=r"already holds a run .*--resume.*--out"):
        run(cfg)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_default_folders_are_numbered_and_resume_takes_the_latest(tmp_path):
    base = tmp_path / "runs" / "tiny"
    assert next_free(base) == base
    run(run_config(base, max_iters=1))
    assert next_free(base) == tmp_path / "runs" / "tiny-2"
    run(run_config(next_free(base), max_iters=1))
    assert next_free(base) == tmp_path / "runs" / "tiny-3"
    assert latest_run(base) == tmp_path / "runs" / "tiny-2"
    os.utime(base / "last.ckpt", (4e9, 4e9))  # written later
    assert latest_run(base) == base


def test_lock_excludes_a_second_run_and_dies_with_its_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            with RunLock(tmp_path):
                pass
        with pytest.raises(RunFolderError, match="in use"):
            check_free(tmp_path)
        with pytest.raises(RunFolderError, match="in use"):
            run(run_config(tmp_path, max_iters=1), resume="auto")
    with RunLock(tmp_path):  # released: the file stays, the lock does not
        pass
    assert (tmp_path / ".lock").is_file()


def test_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="cannot write to run folder .*file/run"):
        with RunLock(tmp_path / "file" / "run"):
            pass


def test_full_disk_during_a_save_names_the_checkpoint(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*last.ckpt.*No space left"):
        save_checkpoint(tmp_path / "last.ckpt", {"family": "x"})
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "out.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644


def test_rewind_metrics_keeps_each_step_once(tmp_path):
    lines = [{"type": "train", "step": 2}, {"type": "train", "step": 4}, {"type": "eval", "step": 4},
             {"type": "train", "step": 6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"type": "tr')
    assert rewind_metrics(tmp_path, 4, eval_pending=True) == 3  # eval at 4 is redone, 6 and the cut line go
    assert read_jsonl(tmp_path / "metrics.jsonl") == lines[:2]


def test_resume_after_a_kill_logs_each_step_once_and_equals_an_unbroken_run(tmp_path, monkeypatch):
    full = run(run_config(tmp_path / "full", log_every=1, checkpoint_every_iters=3))
    killed_dir = tmp_path / "killed"
    with pytest.raises(Killed):  # last.ckpt at step 3, metrics logged up to step 5
        run(run_config(killed_dir, log_every=1, checkpoint_every_iters=3), kill_at=5, monkeypatch=monkeypatch)
    assert max(r["step"] for r in read_jsonl(killed_dir / "metrics.jsonl")) == 5
    (killed_dir / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")  # a kill during a save
    resumed = run(run_config(killed_dir, log_every=1, checkpoint_every_iters=3), resume="auto")
    assert not list(killed_dir.glob(".*.tmp"))
    records = read_jsonl(killed_dir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["type"] == "train"]
    assert train_steps == list(range(1, 13))
    expected = [r for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if r["type"] == "train"]
    assert [r["loss"] for r in records if r["type"] == "train"] == [r["loss"] for r in expected]
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [0, 1, 2]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_an_error_in_evaluation_loses_no_training(tmp_path, monkeypatch):
    """The epoch is saved before it is evaluated; the resumed run evaluates it first."""
    full = run(run_config(tmp_path / "full", checkpoint_every_iters=0))

    def broken(*args, **kwargs):
        raise ValueError("cannot read image 'val/3.png'")

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "evaluate", broken)
        with pytest.raises(ValueError, match="val/3.png"):
            run(run_config(tmp_path / "b", checkpoint_every_iters=0))
    state = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert (state["epoch"], state["global_step"], state["pending_eval_epoch"]) == (1, 4, 0)
    resumed = run(run_config(tmp_path / "b", checkpoint_every_iters=0), resume="auto")
    evals = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r["type"] == "eval"]
    assert [(r["epoch"], r["step"]) for r in evals] == [(0, 4), (1, 8), (2, 12)]
    assert resumed.best == full.best
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["pending_eval_epoch"] is None


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    run(run_config(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}
    run(run_config(tmp_path), resume="auto")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_resume_without_a_checkpoint_warns_and_a_missing_path_is_an_error(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="codetr"):
        run(run_config(tmp_path / "a", max_iters=1), resume="auto")
    assert "nothing to resume" in caplog.text and "last.ckpt" in caplog.text
    with pytest.raises(RunFolderError, match="not found: .*nope.ckpt"):
        run(run_config(tmp_path / "b", max_iters=1), resume=tmp_path / "nope.ckpt")
    with pytest.raises(RunFolderError, match="is a folder"):
        run(run_config(tmp_path / "c", max_iters=1), resume=tmp_path)


def test_temp_files_are_removed_only_by_name(tmp_path):
    (tmp_path / ".best.ckpt.x1.tmp").write_text("")
    (tmp_path / "notes.tmp").write_text("")
    assert [p.name for p in remove_temp_files(tmp_path)] == [".best.ckpt.x1.tmp"]
    assert (tmp_path / "notes.tmp").exists()
