"""``codetr train`` as a user drives it: run folders, reproducibility, errors in one line, workers
that die with their launcher (issue 14's fault drill)."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codetr.cli import main
from codetr.commands import _worker_failure

SMALL = ["model_args.hidden_dim=64", "model_args.num_heads=4", "model_args.enc_layers=1", "model_args.dec_layers=1",
         "model_args.ffn_dim=32", "model_args.num_queries=10", "model_args.num_select=10", "data.num_workers=0",
         "data.train_scales=[48]", "data.max_size=64", "model_args.input_spec.min_size=48",
         "model_args.input_spec.max_size=64", "train.batch_size=2", "train.log_every=1"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    assert main(["data", "synth", str(root), "--train", "4", "--val", "2", "--size", "64", "--seed", "3"]) == 0
    return root


def train_args(dataset, out=None, *extra, procs=1):
    args = ["train", "deformable_detr_tiny", "--data", str(dataset), "--procs", str(procs)]
    return args + (["--out", str(out)] if out else []) + ["--set", *SMALL, *extra]


def train_losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def error_lines(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_rerun_into_a_run_folder_is_refused_and_default_folders_are_numbered(dataset, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, "train.max_iters=1")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(train_args(dataset, out, "train.max_iters=1")) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    [error] = error_lines(caplog)
    assert str(out) in error.message and "--resume" in error.message and "--out" in error.message

    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(train_args(dataset, None, "train.max_iters=1")) == 0
    assert (tmp_path / "runs" / "deformable_detr_tiny" / "last.ckpt").is_file()
    assert (tmp_path / "runs" / "deformable_detr_tiny-2" / "last.ckpt").is_file()


@pytest.mark.parametrize("procs", [1, 2])
def test_same_command_same_losses(dataset, tmp_path, procs):
    """The model is built after train.seed is applied: two identical commands agree from step 1."""
    for name in ("a", "b"):
        assert main(train_args(dataset, tmp_path / name, "train.max_iters=2", "train.eval_every=0", procs=procs)) == 0
    assert len(train_losses(tmp_path / "a")) == 2
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


@pytest.mark.parametrize("setting,message", [
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.epochs=-1", "train.epochs must be >= 1, got -1"),
    ("train.device=banana", "train.device must be 'auto' or a torch device"),
    ("train.device=cuda", "torch sees no CUDA GPU"),
    ("data.max_size=0", "data.max_size must be a size in pixels >= 1, got 0"),
    ("model_args.input_spec.max_size=0", "InputSpec.max_size must be an int >= 1, got 0"),
])
def test_bad_settings_fail_before_training_in_one_line(dataset, tmp_path, caplog, setting, message):
    if setting == "train.device=cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(train_args(dataset, tmp_path / "run", setting)) == 2
    [error] = error_lines(caplog)
    assert message in error.message
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_a_bad_val_image_fails_before_training(dataset, tmp_path, caplog):
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--train", "4", "--val", "2", "--size", "64"]) == 0
    bad = sorted((data / "val").iterdir())[1]
    bad.write_bytes(b"not a png")
    assert main(train_args(data, tmp_path / "run")) == 2
    [error] = error_lines(caplog)
    assert bad.name in error.message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_into_data_with_other_classes_is_refused(dataset, tmp_path, caplog):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, "train.max_iters=1")) == 0
    other = tmp_path / "other"
    assert main(["data", "synth", str(other), "--train", "4", "--val", "2", "--size", "64"]) == 0
    for split in ("train", "val"):
        path = other / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text())
        coco["categories"] = coco["categories"][:-1]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 11]
        path.write_text(json.dumps(coco))
    assert main(train_args(other, out, "train.max_iters=2") + ["--resume"]) == 2
    [error] = error_lines(caplog)
    assert "cannot resume" in error.message and "6 classes" in error.message and "5" in error.message


def test_an_error_in_a_worker_is_one_line(dataset, tmp_path, caplog, capfd):
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--train", "4", "--val", "2", "--size", "64"]) == 0
    bad = sorted((data / "train").iterdir())[0]
    bad.write_bytes(b"not a png")  # train images are read by the workers, at their first batches
    assert main(train_args(data, tmp_path / "run", procs=2)) == 2
    [error] = error_lines(caplog)
    assert error.message.startswith("training process") and bad.name in error.message
    assert "\n" not in error.message
    assert "Traceback" not in capfd.readouterr().err


def test_a_worker_killed_by_the_system_is_named():
    import torch.multiprocessing as mp

    killed = mp.ProcessExitedException("process 1 terminated with signal SIGKILL", error_index=1, error_pid=7,
                                       exit_code=-9, signal_name="SIGKILL")
    assert _worker_failure(killed, Path("/nonexistent"), 2) == \
        "training process 1 of 2 was killed by SIGKILL (the system may have run out of memory)"


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_background_launcher_and_the_folder_is_locked_meanwhile(dataset, tmp_path, caplog):
    """``codetr train --procs 2 ... &`` from a shell script, then ``kill -9`` of the launcher."""
    out = tmp_path / "run"
    command = " ".join([sys.executable, "-m", "codetr", *train_args(dataset, out, "train.epochs=10000", procs=2)])
    shell = subprocess.run(["bash", "-c", f"{command} > {tmp_path / 'log'} 2>&1 & echo $!"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
    launcher = int(shell.stdout)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # the workers train
            assert _alive(launcher) and time.monotonic() < deadline, (tmp_path / "log").read_text()[-2000:]
            time.sleep(0.2)
        workers = [pid for pid in _children(launcher) if _alive(pid)]
        assert len(workers) >= 2
        assert main(train_args(dataset, out) + ["--resume"]) == 2
        assert "in use by another run" in error_lines(caplog)[-1].message
    finally:
        os.kill(launcher, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors
    assert main(train_args(dataset, out, "train.epochs=1") + ["--resume"]) == 0  # no stale lock
