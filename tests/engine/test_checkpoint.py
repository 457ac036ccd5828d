import random

import numpy as np
import pytest
import torch

import codetr.engine.checkpoint as ckpt
from codetr.engine.checkpoint import (CheckpointError, atomic_open, load_checkpoint, model_state, rng_state,
                                      save_checkpoint, set_rng_state)

from .fakes import TinyDetector, classes


def tiny_state():
    return {**model_state(TinyDetector(classes()), "tiny_test"), "epoch": 3, "rng": rng_state()}


def test_save_load_round_trip_weights_only(tmp_path):
    state = tiny_state()
    save_checkpoint(tmp_path / "a.ckpt", state)
    loaded = load_checkpoint(tmp_path / "a.ckpt", family="tiny", model_name="tiny_test")
    assert loaded["codetr_version"] and loaded["family"] == "tiny" and loaded["epoch"] == 3
    assert loaded["classes"] == classes().to_dict() and loaded["model_config"] == {"dropout": 0.1}
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)


def test_crash_during_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {**tiny_state(), "epoch": 1})
    before = path.read_bytes()

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**tiny_state(), "epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_atomic_open_text(tmp_path):
    with atomic_open(tmp_path / "sub" / "x.json", "w") as f:
        f.write("{}")
    assert (tmp_path / "sub" / "x.json").read_text() == "{}"


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint(missing)

    corrupt = tmp_path / "corrupt.ckpt"
    save_checkpoint(corrupt, tiny_state())
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated
    with pytest.raises(CheckpointError, match="corrupt.ckpt"):
        load_checkpoint(corrupt)

    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign.pth.*not a codetr checkpoint.*codetr_version"):
        load_checkpoint(foreign)

    other = tmp_path / "other.ckpt"
    save_checkpoint(other, tiny_state())
    with pytest.raises(CheckpointError, match=r"other.ckpt.*family 'tiny', expected 'dino'"):
        load_checkpoint(other, family="dino")
    with pytest.raises(CheckpointError, match=r"model_name 'tiny_test', expected 'dino_r50'"):
        load_checkpoint(other, family="tiny", model_name="dino_r50")


def test_save_requires_family(tmp_path):
    with pytest.raises(ValueError, match="family"):
        save_checkpoint(tmp_path / "x.ckpt", {"model": {}})


def test_rng_state_restores_every_generator(tmp_path):
    save_checkpoint(tmp_path / "r.ckpt", {"family": "x", "rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.ckpt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
