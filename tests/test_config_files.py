"""``--config FILE`` (JSON / YAML) for ``codetr train`` and ``codetr eval``: what it sets, that
``--set`` and ``--data`` override it, that a run's saved config.json repeats the run, and the
one-line errors for bad files."""
import importlib.util
import json
import logging
import sys

import pytest
import torch

import codetr
from codetr import commands
from codetr.cli import main
from codetr.config import RunConfig
from codetr.recipes import recipe


@pytest.fixture
def trained(monkeypatch):
    """The RunConfig ``codetr train`` would train, instead of training."""
    seen: list[RunConfig] = []
    monkeypatch.setattr(commands, "train_in_processes", lambda cfg, procs, resume: seen.append(cfg))
    return seen


def error_line(caplog) -> str:
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "\n" not in line
    return line


def test_json_config_sets_what_set_can_and_set_overrides_it(tmp_path, trained):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "dino_tiny", "data": {"path": "d", "train_scales": [64, 96]},
                                "train": {"epochs": 3, "lr": 1e-3, "lr_multipliers": {"backbone": 0.5}},
                                "model_args": {"num_queries": 7}}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--set", "train.epochs=5"]) == 0
    [cfg] = trained
    assert cfg.model == "dino_tiny" and cfg.data.path == "d" and cfg.data.train_scales == [64, 96]
    assert (cfg.train.epochs, cfg.train.lr) == (5, 1e-3)   # --set after --config wins
    assert cfg.train.lr_multipliers == {**recipe("dino_tiny").train.lr_multipliers, "backbone": 0.5}
    # a dict field is updated as --set model_args.num_queries=7 would, keeping the recipe's other keys
    assert cfg.model_args == {**recipe("dino_tiny").model_args, "num_queries": 7}


def test_yaml_config_and_command_line_data_and_model(tmp_path, trained):
    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text("model: dino_tiny\ndata:\n  path: from_file\ntrain:\n  epochs: 2\n  amp: none\n")
    assert main(["train", "deformable_detr_tiny", "--config", str(path), "--data", "cli_data",
                 "--out", str(tmp_path / "r")]) == 0
    [cfg] = trained
    assert cfg.model == "deformable_detr_tiny" and cfg.data.path == "cli_data" and cfg.train.epochs == 2


def test_saved_run_config_repeats_the_run(tmp_path, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "deformable_detr_tiny", "--data", "shapes", "--out", "runs/x", "--set", "train.epochs=3",
            "model_args.num_queries=9", "data.train_scales=[48,64]", "train.lr_schedule=cosine"]
    assert main(args) == 0
    first = trained.pop()
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "config.json").write_text(json.dumps(first.to_dict(), indent=2))  # as the trainer saves it
    assert main(["train", "--config", "runs/x/config.json"]) == 0
    again = trained.pop()
    assert again.out_dir == "runs/x-2"   # the saved run's folder is never reused
    assert again.to_dict() == {**first.to_dict(), "out_dir": "runs/x-2"}


@pytest.mark.parametrize("text, suffix, message", [
    ("{\"train\": {\"epochs\": 3,}}", ".json", "malformed JSON: Expecting property name enclosed in double quotes at line 1"),
    ("[1, 2]", ".json", "expected a mapping of config keys at the top, got list"),
    ("{\"train\": {\"epoch\": 3}}", ".json", "unknown config key 'train.epoch'"),
    ("{\"train\": {\"epochs\": \"many\"}}", ".json", "config key 'train.epochs' expects int, got 'many'"),
    ("train:\n  epochs: [3\n", ".yaml", "malformed YAML"),
])
def test_bad_config_file_is_one_line_naming_it(tmp_path, trained, caplog, text, suffix, message):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    assert main(["train", "dino_tiny", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    assert message in error_line(caplog) and error_line(caplog).startswith(str(path))
    assert not trained


def test_config_without_a_model(tmp_path, trained, caplog):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data": {"path": "d"}}))
    assert main(["train", "--config", str(path)]) == 2
    assert "name the model to train" in error_line(caplog)


def test_missing_config_file_and_missing_data(tmp_path, trained, caplog):
    assert main(["train", "dino_tiny", "--config", str(tmp_path / "nope.json")]) == 2
    assert "cannot read config file" in error_line(caplog) and "nope.json" in error_line(caplog)
    caplog.clear()
    assert main(["train", "dino_tiny", "--out", str(tmp_path / "r")]) == 2
    assert "no dataset: give --data DIR" in error_line(caplog)


def test_yaml_without_pyyaml_asks_for_json(tmp_path, trained, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)   # import yaml -> ImportError
    path = tmp_path / "run.yml"
    path.write_text("model: dino_tiny\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "YAML files need PyYAML (pip install pyyaml); without it, give the config as JSON" in error_line(caplog)


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory):
    """An untrained tiny model of the synthetic classes, saved, and a 2-image synthetic set."""
    root = tmp_path_factory.mktemp("eval")
    assert main(["data", "synth", str(root / "shapes"), "--train", "1", "--val", "2", "--size", "64"]) == 0
    from codetr.data.coco import CocoDetection

    classes = CocoDetection(root / "shapes" / "annotations" / "instances_val.json", root / "shapes" / "val").classes
    torch.manual_seed(0)
    model = codetr.create("deformable_detr_tiny", classes=classes, num_queries=10, num_select=10,
                          input_spec={"min_size": 64, "max_size": 80})
    codetr.api.save(model, root / "model.ckpt", model_name="deformable_detr_tiny")
    return root / "model.ckpt", root / "shapes"


def test_eval_takes_its_data_from_a_config_file(checkpoint_and_data, tmp_path, capsys):
    ckpt, shapes = checkpoint_and_data
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": "ignored", "data": {"val_ann": str(shapes / "annotations" / "instances_val.json"),
                                                              "val_images": "wrong"}}))
    plot = tmp_path / "pr.png"
    assert main(["eval", str(ckpt), "--config", str(config), "--set", f"data.val_images={shapes / 'val'}",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "APl -" in out and "AR100" in out and "class" in out and "circle" in out
    assert plot.is_file() == (importlib.util.find_spec("matplotlib") is not None)


def test_eval_refuses_to_overwrite_and_needs_data(checkpoint_and_data, tmp_path, caplog):
    ckpt, shapes = checkpoint_and_data
    results = tmp_path / "results.json"
    results.write_text("[]")
    assert main(["eval", str(ckpt), "--data", str(shapes), "--results", str(results),
                 "--plot", str(tmp_path / "p.png")]) == 2
    assert "results.json" in error_line(caplog) and "--force" in error_line(caplog)
    caplog.clear()
    assert main(["eval", str(ckpt)]) == 2
    assert "no dataset: give --data DIR" in error_line(caplog)
