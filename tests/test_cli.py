"""The command line end to end on a few synthetic images (seconds, CPU)."""
import json

import pytest
import torch

import codetr
from codetr.cli import main
from tests.conftest import golden

SMALL = ["model_args.hidden_dim=64", "model_args.num_heads=4", "model_args.enc_layers=1",
         "model_args.dec_layers=2", "model_args.ffn_dim=64", "model_args.num_queries=10",
         "model_args.num_select=10"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    assert main(["data", "synth", str(root), "--train", "6", "--val", "3", "--size", "64", "--seed", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train", "deformable_detr_tiny", "--data", str(dataset), "--out", str(out), "--set",
            "train.epochs=2", "train.eval_every=1", "train.batch_size=2", "data.num_workers=0",
            "model_args.input_spec.min_size=64", "model_args.input_spec.max_size=80", "data.train_scales=[48,64]", "data.max_size=80", *SMALL]
    assert main(args) == 0
    return out


def test_data_synth_writes_coco(dataset):
    data = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 6 and len(list((dataset / "train").iterdir())) == 6
    assert data["annotations"] and data["categories"]


def test_train_writes_log_config_and_checkpoints(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(evals) == 2 and {"AP", "AP50", "AP75"} <= set(evals[0])
    assert (run_dir / "last.ckpt").is_file() and (run_dir / "best.ckpt").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "deformable_detr_tiny" and config["train"]["epochs"] == 2


def test_resume_of_finished_run_is_a_no_op(dataset, run_dir):
    before = (run_dir / "last.ckpt").read_bytes()
    args = ["train", "deformable_detr_tiny", "--data", str(dataset), "--out", str(run_dir), "--resume",
            "--set", "train.epochs=2", "data.num_workers=0", *SMALL]
    assert main(args) == 0
    assert (run_dir / "last.ckpt").read_bytes() == before


def test_eval_prints_ap(dataset, run_dir, capsys):
    assert main(["eval", str(run_dir / "last.ckpt"), "--data", str(dataset), "--results",
                 str(run_dir / "results.json")]) == 0
    assert "AP50" in capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 2, 3, 5, 7, 11}  # dataset ids, not labels


def test_predict_writes_json_and_drawings(dataset, run_dir, tmp_path):
    out = tmp_path / "preds"
    assert main(["predict", str(run_dir / "last.ckpt"), str(dataset / "val"), "--out", str(out),
                 "--score-threshold", "0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == {p.name for p in (dataset / "val").iterdir()}
    assert len(list(out.glob("*.png"))) == 3


def test_bad_inputs_exit_with_a_message(dataset, tmp_path, caplog):
    assert main(["predict", str(tmp_path / "missing.ckpt"), str(dataset / "val")]) == 2
    assert "missing.ckpt" in caplog.text
    assert main(["train", "deformable_detr_tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere" in caplog.text
    assert main(["train", "deformable_detr_tiny", "--data", str(dataset), "--set", "train.epoch=3"]) == 2
    assert "train.epochs" in caplog.text  # the suggestion


def test_convert_official_checkpoint(tmp_path):
    fx = golden("detr/deformable_detr_2stage_refine_r50_tiny.pt")
    official = tmp_path / "official.pth"
    torch.save({"model": {k: v.contiguous().clone() for k, v in fx["checkpoint"]["model"].items()}}, official)
    (tmp_path / "config.json").write_text(json.dumps(fx["config"]))
    out = tmp_path / "converted.ckpt"
    assert main(["convert", "deformable_detr", str(official), str(out), "--config", str(tmp_path / "config.json")]) == 0
    model = codetr.load(out).eval()
    with torch.no_grad():
        logits = model(fx["inputs"]["samples_tensor"], fx["inputs"]["image_sizes"])["pred_logits"]
    torch.testing.assert_close(logits, fx["eval_outputs"]["pred_logits"], atol=1e-4, rtol=0)
    assert model.classes.names[1] == "person" and model.classes.category_ids[18] == 18


def test_convert_rejects_a_checkpoint_of_another_model(tmp_path):
    torch.save({"model": {"backbone.layers.0.weight": torch.zeros(1)}}, tmp_path / "yolact.pth")
    assert main(["convert", "deformable_detr", str(tmp_path / "yolact.pth"), str(tmp_path / "o.ckpt")]) == 2
    assert not (tmp_path / "o.ckpt").exists()


def test_demo_end_to_end(tmp_path, capsys):
    """The demo's whole path in two DDP processes, shortened to a few iterations."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-images", "8", "--val-images", "4", "--procs", "2",
                 "--set", "train.max_iters=2", "train.batch_size=2", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "drawn predictions" in printed
    assert (out / "train" / "last.ckpt").is_file()
    assert len(list((out / "predictions").glob("*.png"))) == 4


def test_train_in_two_processes_then_resume(dataset, tmp_path):
    """``codetr train --procs 2``: DDP on CPU writes one run; ``--resume`` reaches the workers."""
    out = tmp_path / "ddp"
    args = ["train", "deformable_detr_tiny", "--data", str(dataset), "--out", str(out), "--procs", "2",
            "--set", "train.epochs=1", "train.batch_size=2", "data.train_scales=[48]", "data.max_size=64",
            "model_args.input_spec.min_size=48", "model_args.input_spec.max_size=64", *SMALL]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [1]  # 3 images per process: 1 full batch of 2
    finished = (out / "last.ckpt").read_bytes()
    assert main(args + ["--resume"]) == 0
    assert (out / "last.ckpt").read_bytes() == finished


def test_process_count_comes_from_the_recipe_and_is_one_on_a_gpu(monkeypatch):
    """``train.procs`` (the tiny DETR recipe's 2) unless ``--procs`` says otherwise; at most one
    process per core; one process whenever training runs on a GPU."""
    import os

    import torch.multiprocessing as mp

    from codetr import commands
    from codetr.config import apply_overrides
    from codetr.recipes import recipe

    launched = []
    monkeypatch.setattr(commands, "run", lambda cfg, resume=None: launched.append(1))
    monkeypatch.setattr(commands, "check_run", lambda cfg, resume: None)
    monkeypatch.setattr(mp, "start_processes", lambda fn, args, nprocs, start_method: launched.append(nprocs))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    cfg = recipe("dino_tiny")
    assert cfg.train.procs == 2
    commands.train_in_processes(cfg)
    commands.train_in_processes(cfg, procs=3)
    commands.train_in_processes(cfg, procs=8)
    with monkeypatch.context() as gpu:
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        commands.train_in_processes(apply_overrides(cfg, ["train.device=cuda"]))
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    commands.train_in_processes(cfg)
    assert launched == [2, 3, 4, 1, 1]
