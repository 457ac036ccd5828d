"""``codetr export``: every tiny zoo model's ONNX graph in onnxruntime against the same graph in
PyTorch, the post-processing of its outputs against the model's, and the command's refusals."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import codetr
from codetr import export
from codetr.cli import main
from codetr.detector import InputSpec
from codetr.export import ExportGraph, OnnxDetector, max_abs_diff, postprocess

onnx = pytest.importorskip("onnx", reason="pip install \"codetr[export]\"")
pytest.importorskip("onnxruntime", reason="pip install \"codetr[export]\"")

# thresholds low enough that random weights give detections to compare
OVERRIDES = {"fcos_tiny": {"score_threshold": 0.005}, "defcn_tiny": {"score_threshold": 0.005},
             "atss_tiny": {"score_threshold": 0.005}}
# the input sizes each graph is run at: two shapes for the DETRs (the graph follows the maps' sizes)
SIZES = {"deformable_detr_tiny": [(64, 96), (96, 64)], "dino_tiny": [(64, 96), (96, 64)],
         "co_dino_tiny": [(64, 96), (96, 64)], "yolact_tiny": [(128, 128)]}
TOLERANCE = 1e-4
TINY = ["deformable_detr_tiny", "dino_tiny", "co_dino_tiny", "fcos_tiny", "defcn_tiny", "atss_tiny", "faster_rcnn_tiny",
        "yolact_tiny"]


def test_every_tiny_zoo_model_is_exported_here():
    assert sorted(m for m in codetr.list_models() if m.endswith("_tiny")) == sorted(TINY)


@pytest.fixture(scope="module", params=TINY)
def exported(request, tmp_path_factory):
    """(name, model, ONNX path): the model on random weights, saved and exported by the command."""
    name = request.param
    torch.manual_seed(0)
    model = codetr.create(name, num_classes=3, **OVERRIDES.get(name, {})).eval()
    with torch.no_grad():  # no zero-initialised head: distinct boxes and scores, no ties to order
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    folder = tmp_path_factory.mktemp(name)
    codetr.save(model, folder / "model.ckpt")
    assert main(["export", str(folder / "model.ckpt"), str(folder / "model.onnx")]) == 0
    return name, model, folder / "model.onnx"


def batch(name: str, hw: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking images and valid sizes; the second image padded (bottom / right), as
    ``Detector.prepare`` pads a batch. Faster R-CNN's graph takes one image, YOLACT unpadded squares."""
    h, w = hw
    sizes = {"faster_rcnn_tiny": [[h, w]], "yolact_tiny": [[h, w]] * 2}.get(name, [[h, w], [h - 16, w - 32]])
    return torch.randn(len(sizes), 3, h, w, generator=generator), torch.tensor(sizes)


def test_onnxruntime_reproduces_the_graph_in_pytorch(exported):
    name, model, path = exported
    runner, graph = OnnxDetector(path), ExportGraph(model)
    generator = torch.Generator().manual_seed(1)
    for hw in SIZES.get(name, [(64, 96)]):
        errors = {k: largest for k, (largest, _) in export.compare(runner, graph, *batch(name, hw, generator)).items()}
        assert max(errors.values()) < TOLERANCE, (hw, errors)


def assert_same_detections(got, expected, score_atol: float, box_atol: float) -> None:
    """As many detections, each of ``got`` matching one of ``expected`` (label, score, box and
    most mask pixels): the order of near-equal scores may differ (last-bit differences)."""
    assert len(got) == len(expected) > 0
    assert max_abs_diff(got.scores.sort().values, expected.scores.sort().values) < score_atol
    for i in range(len(got)):
        match = ((expected.labels == got.labels[i]) & ((expected.scores - got.scores[i]).abs() < score_atol)
                 & ((expected.boxes - got.boxes[i]).abs().amax(1) < box_atol)).nonzero()
        assert len(match) > 0, f"detection {i} of {len(got)} has no counterpart"
        if expected.masks is not None:
            assert (got.masks[i] != expected.masks[match[0, 0]]).float().mean() < 1e-3


def test_postprocess_of_the_outputs_gives_the_models_detections(exported):
    name, model, _ = exported
    graph = ExportGraph(model)
    images, sizes = batch(name, SIZES.get(name, [(64, 96)])[0], torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = dict(zip(graph.output_names, graph(images, sizes)))
        expected = model.postprocess(model(images, sizes), sizes)
    for got, exp in zip(postprocess(model, outputs, sizes), expected, strict=True):
        assert_same_detections(got, exp, score_atol=1e-6, box_atol=1e-4)


def test_predict_in_onnxruntime_matches_model_predict(exported):
    """Raw images through the metadata's InputSpec, the graph in onnxruntime and ``postprocess``
    give ``model.predict``'s detections in original pixels."""
    name, model, path = exported
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), rng.integers(0, 256, (80, 56, 3), dtype=np.uint8)]
    runner = OnnxDetector(path)
    assert runner.model.input_spec == model.input_spec and runner.model.classes.to_dict() == model.classes.to_dict()
    size = 1 if name == "faster_rcnn_tiny" else 2  # a batch pads its images alike (its graph takes one)
    for got, expected in zip(runner.predict(images, size), model.predict(images, size), strict=True):
        assert_same_detections(got, expected, score_atol=TOLERANCE, box_atol=1e-2)  # boxes: original pixels


def test_metadata_names_the_model_and_its_preprocessing(exported):
    name, model, path = exported
    meta = json.loads({p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}["codetr"])
    assert meta["family"] == model.family and InputSpec.from_dict(meta["input_spec"]) == model.input_spec
    assert meta["outputs"] == ExportGraph(model).output_names
    uses_sizes = name not in ("fcos_tiny", "defcn_tiny", "yolact_tiny")  # their graphs never read the sizes
    assert meta["inputs"] == (["images", "sizes"] if uses_sizes else ["images"])


@pytest.fixture(scope="module")
def fcos_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fcos") / "fcos.ckpt"
    codetr.save(codetr.create("fcos_tiny", num_classes=3), path)
    return path


def test_static_export_at_a_chosen_size_and_opset(fcos_checkpoint, tmp_path, capsys):
    out = tmp_path / "fcos.onnx"
    assert main(["export", str(fcos_checkpoint), str(out), "--static", "--size", "64", "96", "--opset", "20"]) == 0
    assert "opset 20, static shapes" in capsys.readouterr().out
    runner = OnnxDetector(out)
    assert [i.shape for i in runner.session.get_inputs()] == [[1, 3, 64, 96]]
    assert onnx.load(out).opset_import[0].version == 20
    model = codetr.load(fcos_checkpoint).eval()
    images, sizes = batch("faster_rcnn_tiny", (64, 96), torch.Generator().manual_seed(3))  # one image
    with torch.no_grad():
        expected = ExportGraph(model)(images, sizes)
    assert max(max_abs_diff(runner(images, sizes)[k], v) for k, v in zip(runner.meta["outputs"], expected)) < TOLERANCE


def test_bad_input_is_refused_in_one_line(fcos_checkpoint, tmp_path, caplog, monkeypatch):
    out = tmp_path / "out.onnx"
    assert main(["export", str(tmp_path / "missing.ckpt"), str(out)]) == 2
    assert "missing.ckpt" in caplog.text and not out.exists()
    for opset in ("15", "21"):
        caplog.clear()
        assert main(["export", str(fcos_checkpoint), str(out), "--opset", opset]) == 2
        assert f"--opset {opset} is not supported" in caplog.text and not out.exists()
    out.write_text("mine")
    caplog.clear()
    assert main(["export", str(fcos_checkpoint), str(out)]) == 2
    assert "exists; pass --force" in caplog.text and out.read_text() == "mine"
    monkeypatch.setattr(export, "MAX_EXPORT_ERROR", -1.0)  # as if the graph had frozen a size: checked, not written
    caplog.clear()
    assert main(["export", str(fcos_checkpoint), str(tmp_path / "wrong.onnx")]) == 2
    assert "differs from PyTorch" in caplog.text and "nothing written" in caplog.text
    monkeypatch.setattr(export, "EXPORT_PACKAGES", ("onnx", "onnxruntime", "codetr_no_such_package"))
    caplog.clear()
    assert main(["export", str(fcos_checkpoint), str(tmp_path / "other.onnx")]) == 2
    assert 'needs codetr_no_such_package: pip install "codetr[export]"' in caplog.text
    assert all(len(r.getMessage().splitlines()) == 1 for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no partial or temporary file


def test_models_and_sizes_the_graph_cannot_take_are_refused(tmp_path):
    yolact = codetr.create("yolact_tiny", num_classes=3)
    with pytest.raises(ValueError, match="YOLACT's graph takes its 128 x 128 input"):
        export.export_onnx(yolact, tmp_path / "y.onnx", size=(96, 128))
    co_detr = codetr.create("co_dino_tiny", num_classes=3)
    co_detr.config = replace(co_detr.config, eval_module="one-stage")  # tested through its ATSS head
    with pytest.raises(ValueError, match="eval_module='detr'"):
        export.export_onnx(co_detr, tmp_path / "c.onnx")
    not_ours = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), not_ours)
    with pytest.raises(ValueError, match="not written by codetr export"):
        OnnxDetector(not_ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]
