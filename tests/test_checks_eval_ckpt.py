"""Issue 14 (reliability): ``codetr eval`` compares the checkpoint's categories with the
dataset's (item 8), hand-edited checkpoints fail in one line (14d), a folder is not "not found"
(16), and impossible model sizes are refused when the model is created (14b, 14c)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import codetr
from codetr.cli import main
from codetr.data.synth import write_synthetic_coco
from codetr.engine.checkpoint import CheckpointError
from codetr.structures import ClassInfo

SMALL = dict(hidden_dim=64, num_heads=4, enc_layers=1, dec_layers=1, ffn_dim=64, num_queries=10, num_select=10,
             dn_number=4)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A 2-image synthetic val split (category ids 1, 2, 3, 5, 7, 11)."""
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic_coco(root, num_train=0, num_val=2, image_size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def ckpt(shapes, tmp_path_factory) -> Path:
    """A tiny untrained DINO saved with the dataset's categories."""
    data = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    classes = ClassInfo([c["id"] for c in data["categories"]], [c["name"] for c in data["categories"]])
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    codetr.api.save(codetr.create("dino_tiny", classes=classes, **SMALL), path)
    return path


def edited_dataset(shapes: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``shapes`` whose val json went through ``edit(data)``."""
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    ann = root / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    return root


def cli_error(caplog, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 with exactly one one-line error; return it."""
    with caplog.at_level(logging.ERROR, logger="codetr"):
        assert main(argv) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in error and "Traceback" not in error
    return error


# -- item 8: eval compares categories by id --------------------------------------------------------
def _add_category(data: dict) -> None:
    data["categories"].append({"id": 99, "name": "blob"})


def _rename_category(data: dict) -> None:
    data["categories"][0]["name"] = "disk"  # id 1 is 'circle' in the checkpoint


def _renumber_category(data: dict) -> None:  # 11 'ring' -> 12 'ring'
    for entry in data["categories"] + data["annotations"]:
        key = "id" if "name" in entry else "category_id"
        if entry[key] == 11:
            entry[key] = 12


@pytest.mark.parametrize("edit, expected", [
    (_add_category, "ids only in the dataset: 99 'blob'"),
    (_rename_category, "same id, different name (checkpoint vs dataset): 1 'circle' vs 'disk'"),
    (_renumber_category, "ids only in the dataset: 12 'ring'"),
])
def test_eval_refuses_a_dataset_with_other_categories(shapes, ckpt, tmp_path, caplog, edit, expected):
    root = edited_dataset(shapes, tmp_path, edit)
    error = cli_error(caplog, ["eval", str(ckpt), "--data", str(root)])
    assert expected in error and str(ckpt) in error and "instances_val.json" in error


def test_eval_accepts_a_subset_of_the_checkpoint_categories(shapes, ckpt, tmp_path, capsys):
    def drop_ring(data: dict) -> None:
        data["categories"] = [c for c in data["categories"] if c["id"] != 11]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 11]

    root = edited_dataset(shapes, tmp_path, drop_ring)
    assert main(["eval", str(ckpt), "--data", str(root)]) == 0
    assert "AP50" in capsys.readouterr().out


def test_class_mismatch_exact_and_subset():
    model = ClassInfo([1, 2, 3], ["a", "b", "c"])
    assert model.mismatch(ClassInfo([1, 2, 3], ["a", "b", "c"])) is None
    assert model.mismatch(ClassInfo([3, 1], ["c", "a"]), subset_ok=True) is None
    assert model.mismatch(ClassInfo([1, 3], ["a", "c"])) == "ids only in the checkpoint: 2 'b'"
    assert model.mismatch(ClassInfo([1, 2, 4], ["a", "B", "d"]), "run", "data") == (
        "ids only in the run: 3 'c'; ids only in the data: 4 'd'; same id, different name (run vs data): "
        "2 'b' vs 'B'")
    assert "another label order" in model.mismatch(ClassInfo([3, 2, 1], ["c", "b", "a"]))
    many = ClassInfo(list(range(10, 30)))  # long lists are cut after 8 ids
    assert model.mismatch(many, subset_ok=True) == (
        "ids only in the dataset: 10 '10', 11 '11', 12 '12', 13 '13', 14 '14', 15 '15', 16 '16', 17 '17', "
        "... (20 in all)")


# -- item 16: a folder is not a missing file --------------------------------------------------------
def test_folder_as_checkpoint_is_named_a_folder(shapes, ckpt, caplog):
    error = cli_error(caplog, ["eval", str(ckpt.parent), "--data", str(shapes)])
    assert "is a folder, not a checkpoint file (it holds model.ckpt: pass one of them)" in error
    assert "not found" not in error


# -- item 14d: hand-edited checkpoints --------------------------------------------------------------
def _set(path: tuple, value):
    def edit(state: dict) -> None:
        *parents, last = path
        target = state
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


def _delete(key: str):
    return lambda state: state.pop(key)


def _wrong_shape(state: dict) -> None:
    key = "class_embed.0.weight"
    state["model"][key] = torch.zeros(7, 64)


EDITS = [
    (_delete("model_config"), r"missing key\(s\) \['model_config'\]"),
    (_delete("model"), r"missing key\(s\) \['model'\]"),
    (_delete("input_spec"), r"missing key\(s\) \['input_spec'\]"),
    (_set(("family",), ["dino"]), r"unknown model family \['dino'\]"),
    (_set(("input_spec",), "RGB"), r"bad 'input_spec': InputSpec: expected a dict, got str"),
    (_set(("input_spec", "resize"), 3), r"bad 'input_spec': unknown config key 'resize'"),
    (_set(("input_spec", "min_size"), "128"), r"bad 'input_spec': config key 'min_size' expects int"),
    (_set(("input_spec", "mean"), [0.5, 0.5]), r"bad 'input_spec': mean and std need 3 values"),
    (_set(("input_spec", "max_size"), 0), r"bad 'input_spec': InputSpec.max_size must be an int >= 1, got 0"),
    (_set(("classes",), [1, 2, 3]), r"bad 'classes': classes must be a dict with 'category_ids' and 'names'"),
    (_set(("classes", "names"), ["a"]), r"bad 'classes': classes: 6 category_ids but 1 names"),
    (_set(("classes", "category_ids"), ["1", 2, 3, 5, 7, 11]), r"bad 'classes': classes.category_ids must be ints"),
    (_set(("classes", "category_ids"), [1, 1, 3, 5, 7, 11]), r"bad 'classes': classes.category_ids repeat \[1\]"),
    (_set(("classes",), {"category_ids": [1], "names": ["a"]}),
     r"'classes' has 1 categories but model_config.num_classes is 6"),
    (_set(("model_config", "hidden_dim"), "64"), r"bad 'model_config': config key 'hidden_dim' expects int"),
    (_set(("model_config", "num_queries"), 0), r"bad 'model_config': DINOConfig.num_queries must be an int >= 1"),
    (_set(("model_config", "queries"), 10), r"bad 'model_config': unknown config key 'queries'"),
    (_set(("model_config",), None), r"bad 'model_config': DINOConfig: expected a dict"),
    (_set(("model",), [1, 2]), r"'model' must be a state dict of tensors, got list"),
    (_wrong_shape, r"1 weight\(s\) do not fit the dino model built from its model_config: "
                   r"class_embed.0.weight: \[7, 64\] in the checkpoint, \[6, 64\] in the model"),
    (_set(("model_config", "hidden_dim"), 32), r"weight\(s\) do not fit the dino model .*\(and \d+ more\)"),
]


@pytest.mark.parametrize("edit, message", EDITS)
def test_hand_edited_checkpoint_fails_in_one_line(ckpt, tmp_path, edit, message):
    state = torch.load(ckpt, weights_only=True)
    edit(state)
    path = tmp_path / "edited.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message) as info:
        codetr.api.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_hand_edited_checkpoint_through_the_cli(shapes, ckpt, tmp_path, caplog):
    state = torch.load(ckpt, weights_only=True)
    _wrong_shape(state)
    torch.save(state, tmp_path / "edited.ckpt")
    error = cli_error(caplog, ["eval", str(tmp_path / "edited.ckpt"), "--data", str(shapes)])
    assert "class_embed.0.weight: [7, 64] in the checkpoint, [6, 64] in the model" in error


def test_unedited_checkpoint_loads_with_the_same_config(ckpt):
    model = codetr.api.load(ckpt)
    assert model.config.num_queries == 10 and model.classes.category_ids == [1, 2, 3, 5, 7, 11]


# -- items 14b, 14c: sizes that cannot work are refused at create --------------------------------
@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_create_refuses_num_classes_below_one(num_classes):
    with pytest.raises(ValueError, match=rf"create\('dino_tiny'\): num_classes must be an int >= 1, "
                                         rf"got {num_classes!r}"):
        codetr.create("dino_tiny", num_classes=num_classes)


@pytest.mark.parametrize("name, field, value", [
    ("dino_tiny", "num_queries", 0), ("dino_tiny", "dn_number", -1), ("dino_tiny", "hidden_dim", 0),
    ("deformable_detr_tiny", "dec_layers", 0), ("deformable_detr_tiny", "num_select", 0),
    ("defcn_tiny", "fpn_channels", 0),
    ("defcn_tiny", "topk_candidates", -1), ("yolact_tiny", "num_prototypes", 0), ("yolact_tiny", "max_size", -1),
    ("yolact_tiny", "masks_to_train", 0),
])
def test_create_refuses_counts_that_crash_or_misbehave(name, field, value):
    config = type(codetr.create(name, num_classes=3).config).__name__
    with pytest.raises(ValueError, match=rf"^{config}\.{field} must be an int >= \d, got {value!r}$"):
        codetr.create(name, num_classes=3, **{field: value})


@pytest.mark.parametrize("name, field, value", [
    ("deformable_detr_tiny", "res2_channels", 0), ("dino_tiny", "stem_channels", 0),
    ("defcn_tiny", "width_per_group", 0), ("yolact_tiny", "dcn_interval", 0),
])
def test_create_refuses_backbone_counts(name, field, value):
    with pytest.raises(ValueError, match=rf"^BackboneConfig\.{field} must be an int >= 1, got {value!r}$"):
        codetr.create(name, num_classes=3, backbone={field: value})


def test_create_type_checks_overrides():
    with pytest.raises(ValueError, match=r"config key 'num_queries' expects int, got 2.5"):
        codetr.create("dino_tiny", num_classes=3, num_queries=2.5)
    with pytest.raises(ValueError, match=r"config key 'backbone.depth' expects int, got '18'"):
        codetr.create("dino_tiny", num_classes=3, backbone={"depth": "18"})


def test_optional_counts_may_stay_unset():
    model = codetr.create("dino_tiny", num_classes=3, backbone={"res2_channels": None}, enc_layers=0)
    assert model.config.enc_layers == 0 and model.config.backbone.res2_channels is None
    assert codetr.create("defcn_tiny", num_classes=3, aux_topk=None, num_convs=0).config.aux_topk is None
