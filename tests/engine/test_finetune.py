"""Fine-tuning (issue 19): ``init_from`` loads a checkpoint of other classes into a model, the
class layers each family declares re-initialised with the rows of the classes both name carried;
``codetr train --init-from`` end to end from a converted official checkpoint."""
import json
import logging

import pytest
import torch

from codetr.api import save
from codetr.cli import main
from codetr.commands import build_run
from codetr.config import apply_overrides
from codetr.convert import load_official
from codetr.engine.checkpoint import CheckpointError
from codetr.engine.finetune import init_from
from codetr.recipes import recipe
from codetr.structures import ClassInfo
from codetr.zoo import create, list_models
from tests.conftest import golden

COCO_LIKE = ClassInfo([1, 3, 18], ["person", "car", "dog"])
# model label -> checkpoint label of the classes both name (case-insensitive); "cat" and "" have none
MINE = ClassInfo([7, 8, 9, 10], ["Dog", "cat", "PERSON", ""])
MATCHES = {0: 2, 2: 0}


def perturbed(name: str, classes: ClassInfo):
    """A zoo model whose every weight differs from a fresh one's (constant inits included)."""
    torch.manual_seed(1)
    model = create(name, classes=classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def saved(model, tmp_path) -> str:
    path = tmp_path / f"{model.family}.ckpt"
    save(model, path)
    return str(path)


@pytest.mark.parametrize("name", list_models())
def test_the_declared_class_layers_are_exactly_the_weights_that_change_with_the_classes(name):
    """Built for 3 and for 5 classes (on the meta device: no memory), a model's weights whose
    shape changes are its declared class layers, each as long along its dim as declared."""
    with torch.device("meta"):
        three, five = create(name, num_classes=3), create(name, num_classes=5)
    a, b = three.state_dict(), five.state_dict()
    assert set(a) == set(b)
    assert {k for k in a if a[k].shape != b[k].shape} == set(three.class_layers())
    for model, weights in ((three, a), (five, b)):
        for key, layout in model.class_layers().items():
            assert weights[key].shape[layout.dim] == layout.size, key


def rows_per_family(name: str, model) -> dict[str, dict[int, int | None]]:
    """For the class layers of ``model`` (built with MINE) from a COCO_LIKE checkpoint: model row
    -> checkpoint row, None where the fresh init stays. Written out per family, independently of
    the declarations."""
    k, kc = len(MINE), len(COCO_LIKE)
    per_class = {m: MATCHES.get(m) for m in range(k)}
    if name == "deformable_detr_tiny":  # + the two-stage encoder head: class-agnostic row 0 only
        layers = model.config.dec_layers
        rows = {f"class_embed.{i}": per_class for i in range(layers)}
        rows[f"class_embed.{layers}"] = {0: 0, 1: None, 2: None, 3: None}
        return rows
    if name == "dino_tiny":  # label embeddings: one per class, then one never drawn (carried)
        rows = {f"class_embed.{i}": per_class for i in range(model.config.dec_layers)}
        return {**rows, "enc_class_embed": per_class, "label_enc": {**per_class, k: kc}}
    if name == "faster_rcnn_tiny":  # softmax: background last; 4 deltas per class
        deltas = {4 * m + j: None if d is None else 4 * d + j for m, d in per_class.items() for j in range(4)}
        return {"roi_head.bbox_head.fc_cls": {**per_class, k: kc}, "roi_head.bbox_head.fc_reg": deltas}
    if name == "yolact_tiny":  # per prior: background first, then the classes
        priors = model.head.num_priors
        conf = {}
        for a in range(priors):
            conf[a * (k + 1)] = a * (kc + 1)
            conf.update({a * (k + 1) + 1 + m: None if d is None else a * (kc + 1) + 1 + d
                         for m, d in per_class.items()})
        return {"head.conf_layer": conf, "semantic_seg_conv": per_class}
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["deformable_detr_tiny", "dino_tiny", "faster_rcnn_tiny", "yolact_tiny"])
def test_rows_of_the_classes_named_alike_are_carried_the_others_keep_the_fresh_init(name, tmp_path):
    source = perturbed(name, COCO_LIKE)
    torch.manual_seed(2)
    model = create(name, classes=MINE)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, saved(source, tmp_path))

    theirs, got, expected = source.state_dict(), model.state_dict(), rows_per_family(name, model)
    class_keys = {f"{module}.{p}" for module in expected for p in ("weight", "bias") if f"{module}.{p}" in got}
    assert sorted(report.reinitialised) == sorted(class_keys)
    assert report.complete and set(report.loaded) == set(got) - class_keys
    for key in report.loaded:
        assert torch.equal(got[key], theirs[key]), key
    for key in class_keys:
        mapping = expected[key.rsplit(".", 1)[0]]
        assert sorted(mapping) == list(range(got[key].shape[0])), key
        for row, source_row in mapping.items():
            want = fresh[key][row] if source_row is None else theirs[key][source_row]
            assert torch.equal(got[key][row], want), (key, row)
    assert report.carried == [("dog", 18, "Dog", 7), ("person", 1, "PERSON", 9)]
    assert "carried rows: dog -> Dog (id 18 -> 7), person -> PERSON (id 1 -> 9)" in report.table()


def test_the_same_classes_load_everything(tmp_path):
    """The same names (case aside) in the same order: every tensor loaded, nothing re-initialised."""
    source = perturbed("dino_tiny", COCO_LIKE)
    model = create("dino_tiny", classes=ClassInfo([5, 6, 7], ["Person", "CAR", "dog"]))
    report = init_from(model, saved(source, tmp_path))
    assert report.reinitialised == [] and report.carried == [] and report.complete
    assert len(report.loaded) == len(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert "re-initialised (class layers): none (the same classes)" in report.table()


def test_weights_that_do_not_fit_are_skipped_and_listed(tmp_path):
    """Another FFN width, one encoder layer more and one decoder layer less than the checkpoint:
    the FFN weights are skipped with both shapes, the extra layers' names listed on each side."""
    source = perturbed("deformable_detr_tiny", COCO_LIKE)
    c = source.config
    model = create("deformable_detr_tiny", classes=COCO_LIKE, ffn_dim=c.ffn_dim // 2,
                   enc_layers=c.enc_layers + 1, dec_layers=c.dec_layers - 1)
    report = init_from(model, saved(source, tmp_path))
    assert not report.complete
    skipped = {name: (theirs, mine) for name, theirs, mine in report.skipped}
    assert skipped["transformer.encoder.layers.0.linear1.weight"] == ([c.ffn_dim, c.hidden_dim],
                                                                      [c.ffn_dim // 2, c.hidden_dim])
    assert f"transformer.encoder.layers.{c.enc_layers}.linear1.bias" in report.missing
    assert f"transformer.decoder.{c.dec_layers - 1}.norm1.weight" in report.unexpected
    assert "transformer.encoder.layers.0.norm1.weight" in report.loaded
    table = report.table()
    assert f"transformer.encoder.layers.0.linear1.weight [{c.ffn_dim}, {c.hidden_dim}] -> " \
           f"[{c.ffn_dim // 2}, {c.hidden_dim}]" in table


def test_a_checkpoint_of_another_family_is_refused_in_one_line(tmp_path):
    path = saved(create("yolact_tiny", num_classes=3), tmp_path)
    with pytest.raises(CheckpointError) as error:
        init_from(create("dino_tiny", num_classes=3), path)
    message = str(error.value)
    assert "\n" not in message and path in message and "'yolact'" in message and "'dino'" in message


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    assert main(["data", "synth", str(root), "--train", "4", "--val", "2", "--size", "64", "--seed", "3"]) == 0
    return root


TINY = ["model_args.hidden_dim=64", "model_args.num_heads=4", "model_args.enc_layers=1", "model_args.dec_layers=1",
        "model_args.ffn_dim=32", "model_args.num_queries=10", "data.num_workers=0", "train.max_iters=1"]


@pytest.mark.parametrize("kind", ["missing", "folder", "not a checkpoint"])
def test_a_bad_init_from_fails_before_training_in_one_line(kind, shapes, tmp_path, caplog):
    path = {"missing": tmp_path / "nope.ckpt", "folder": tmp_path, "not a checkpoint": tmp_path / "notes.ckpt"}[kind]
    if kind == "not a checkpoint":
        path.write_text("not a checkpoint")
    out = tmp_path / "run"
    args = ["train", "deformable_detr_tiny", "--data", str(shapes), "--out", str(out), "--init-from", str(path),
            "--set", *TINY]
    assert main(args) == 2
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(path) in error.getMessage() and "\n" not in error.getMessage()
    assert not out.exists()


def test_init_from_applies_to_new_runs_only(shapes, tmp_path):
    """A resumed run takes its weights from its own checkpoint: train.init_from is not read."""
    cfg = apply_overrides(recipe("deformable_detr_tiny"), [*TINY, f"data.path={shapes}",
                                                          f"train.init_from={tmp_path / 'gone.ckpt'}"])
    build_run(cfg, resume="auto")
    with pytest.raises(FileNotFoundError, match="gone.ckpt"):
        build_run(cfg)


# -- end to end: a converted official checkpoint seeds a run on other classes --------------------

FIXTURE = "detr/deformable_detr_2stage_refine_r50_tiny.pt"


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    """The golden Deformable DETR (91 COCO slots, R50, 2 + 2 layers, 30 queries) through
    ``load_official``, saved as a codetr checkpoint (what ``codetr convert`` writes)."""
    fx = golden(FIXTURE)
    model = load_official("deformable_detr", fx["checkpoint"], fx["config"])
    path = tmp_path_factory.mktemp("official") / "ddetr_coco.ckpt"
    save(model, path)
    return path, model.config


def test_a_converted_official_checkpoint_seeds_a_run_on_other_classes(official_ckpt, tmp_path, caplog):
    """``codetr train --init-from`` on synthetic shapes (none a COCO class): every weight but the
    class heads loads, the class heads are re-initialised, the loss falls over 24 steps (one epoch:
    one checkpoint write) of 32 px images, the backbone frozen to keep it fast, and the run's
    config records train.init_from."""
    caplog.set_level(logging.INFO, logger="codetr")
    path, c = official_ckpt
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--train", "48", "--val", "2", "--size", "64", "--seed", "4"]) == 0
    out = tmp_path / "run"
    args = ["train", "deformable_detr_r50_two_stage", "--data", str(data), "--out", str(out), "--init-from", str(path),
            "--procs", "1", "--set", f"model_args.enc_layers={c.enc_layers}", f"model_args.dec_layers={c.dec_layers}",
            f"model_args.ffn_dim={c.ffn_dim}", f"model_args.num_queries={c.num_queries}", "model_args.dropout=0.0",
            "model_args.backbone.frozen_stages=4",
            "model_args.input_spec.min_size=32", "model_args.input_spec.max_size=32", "data.train_scales=[32]",
            "data.max_size=32", "data.crop=false", "data.num_workers=0", "train.batch_size=2", "train.max_iters=24",
            "train.log_every=1", "train.eval_every=0", "train.lr=5e-4"]
    assert main(args) == 0
    # one table: the early check (check_run) loads the checkpoint quietly
    [table] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init from")]
    layers = [f"class_embed.{i}.{p}" for i in range(c.dec_layers + 1) for p in ("weight", "bias")]
    assert f"re-initialised (class layers): {', '.join(layers)}\n" in table
    assert "carried rows: none (no class name in common)" in table
    for kind in ("skipped (shape mismatch)", "not in the model (ignored)", "not in the checkpoint (fresh init)"):
        assert f"{kind}: none" in table
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.85 * first, losses
    assert json.loads((out / "config.json").read_text())["train"]["init_from"] == str(path)
