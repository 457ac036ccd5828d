"""``model.predict`` inputs: documented dtypes and ranges map to the same pixels, the rest is
refused in one line; bad calls and oversized files fail clearly; ``predict_files`` skips
unreadable files and still writes predictions.json, finds files in folders and glob patterns;
``codetr predict`` / ``eval`` --device, --batch-size, --force; the drawings' class colours and
labels."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import codetr
from codetr.api import save
from codetr.cli import main
from codetr.engine import predict as predict_module
from codetr.engine.predict import class_color, draw, find_inputs, predict_files, text_color
from codetr.images import load_rgb
from codetr.structures import ClassInfo, Detections

# 50 x 50 px > 2 x BOMB_LIMIT: DecompressionBombError; PIL's default font (drawings) stays under it
BOMB_LIMIT = 600
PIXELS = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)   # [H, W, 3]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return codetr.create("fcos_tiny", num_classes=2, score_threshold=0.0).eval()   # every image has detections


@pytest.mark.parametrize("image", [
    PIXELS.astype(np.float32) / 255,
    PIXELS.astype(np.float64) / 255,
    (PIXELS.astype(np.uint16) * 257 + 100 * (PIXELS < 128)).astype(np.uint16),   # (257 v + 100) / 257 rounds to v
    torch.from_numpy(PIXELS).permute(2, 0, 1).float() / 255,
    torch.from_numpy(PIXELS).permute(2, 0, 1).double() / 255,
    Image.fromarray(PIXELS),
], ids=["float32", "float64", "uint16", "float-tensor", "double-tensor", "pil"])
def test_documented_dtypes_give_the_uint8_pixels(model, image):
    assert torch.equal(load_rgb(image), torch.from_numpy(PIXELS).permute(2, 0, 1))
    assert torch.equal(model.prepare([image])[0], model.prepare([PIXELS])[0])


def test_uint16_values_are_scaled_by_1_over_257():
    values = np.array([[0, 128, 129, 30000, 65535]], dtype=np.uint16)
    assert load_rgb(values)[0, 0].tolist() == [0, 0, 1, 117, 255]


def test_gray_and_rgba_arrays():
    gray = PIXELS[..., 0]
    assert torch.equal(load_rgb(gray), torch.from_numpy(gray)[None].expand(3, -1, -1))
    rgba = np.concatenate([PIXELS, np.full((6, 8, 1), 255, np.uint8)], axis=2)
    assert torch.equal(load_rgb(rgba), load_rgb(PIXELS))
    rgba[..., 3] = 0
    assert (load_rgb(rgba) == 255).all()   # transparent: the white background


@pytest.mark.parametrize("image, message", [
    (np.linspace(0, 200, 48, dtype=np.float32).reshape(4, 4, 3), r"float32 .*\[0, 200\].*\[0, 1\]"),
    (torch.full((3, 4, 4), 255.0), r"float32 .*\[255, 255\]"),
    (np.full((4, 4, 3), -0.5), r"float64 .*\[-0.5, -0.5\]"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (torch.tensor([[0.5, float("inf")]]), "inf"),
    (np.full((4, 4, 3), 7, np.int64), r"int64.*\[7, 7\]"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
    (np.zeros((0, 0, 3), np.uint8), "no pixels"),
    (torch.zeros(3, 0, 5), "no pixels"),
], ids=["float-0-255", "float-tensor-255", "negative", "nan", "inf", "int64", "two-channels", "0x0", "0x5-tensor"])
def test_refused_inputs_raise_one_line(model, image, message):
    with pytest.raises(ValueError, match=message) as info:
        model.predict(image)
    assert "\n" not in str(info.value)


def test_bad_calls_raise_one_line(model):
    with pytest.raises(TypeError, match="NoneType"):
        model.predict(None)
    with pytest.raises(TypeError, match="int"):
        model.predict(3)
    with pytest.raises(ValueError, match="batch_size.*0"):
        model.predict([PIXELS], batch_size=0)
    assert model.predict([]) == []


def test_generators_are_accepted(model):
    from_list = model.predict([PIXELS, PIXELS[:4]])
    from_generator = model.predict(x for x in (PIXELS, PIXELS[:4]))
    assert len(from_generator) == 2
    assert all(torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
               for a, b in zip(from_list, from_generator))


def test_decompression_bomb_names_the_file(model, tmp_path, monkeypatch):
    Image.new("RGB", (50, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    with pytest.raises(ValueError, match=r"big\.png.*too large") as info:
        model.predict(tmp_path / "big.png")
    assert "\n" not in str(info.value)


def write_folder(folder):
    folder.mkdir()
    Image.fromarray(PIXELS).save(folder / "good.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("RGB", (50, 50)).save(folder / "big.png")
    return folder


def test_predict_files_skips_unreadable_images(model, tmp_path, monkeypatch, caplog):
    folder = write_folder(tmp_path / "in")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    listing = predict_module.find_inputs
    monkeypatch.setattr(predict_module, "find_inputs", lambda inputs: listing(inputs) + [folder / "gone.png"])
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="codetr.engine.predict"):
        path = predict_files(model, [folder], out, score_threshold=0.0, batch_size=2)
    records = json.loads(path.read_text())
    assert isinstance(records, list) and records and {r["file_name"] for r in records} == {"good.png"}
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png"]
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["big.png", "corrupt.jpg", "gone.png"]
    assert all(len(line.split("\t")) == 2 for line in skipped)
    for name in ("big.png", "corrupt.jpg", "gone.png"):
        assert any(name in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert "skipped 3 of 4 files" in caplog.text

    monkeypatch.undo()   # a clean rerun leaves no stale list
    predict_files(model, [folder / "good.png"], out)
    assert not (out / "skipped.txt").exists()


def test_cli_predict_skips_unreadable_images(model, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "in")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    save(model, tmp_path / "m.ckpt", model_name="fcos_tiny")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "m.ckpt"), str(folder), "--out", str(out)]) == 0
    assert isinstance(json.loads((out / "predictions.json").read_text()), list)
    assert len((out / "skipped.txt").read_text().splitlines()) == 2


@pytest.fixture
def checkpoint(model, tmp_path):
    save(model, tmp_path / "m.ckpt", model_name="fcos_tiny")
    return tmp_path / "m.ckpt"


def write_tree(root):
    """root/{a,b}/val/x.jpg, root/b/val/y.png, root/b/train/z.jpg and a text file."""
    for rel in ("a/val/x.jpg", "b/val/x.jpg", "b/val/y.png", "b/train/z.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(PIXELS).save(root / rel)
    (root / "a" / "val" / "notes.txt").write_text("not an image")
    return root


def test_glob_patterns_and_folders_find_the_media_files(tmp_path):
    root = write_tree(tmp_path / "data")
    relative = lambda paths: [p.relative_to(root).as_posix() for p in paths]
    assert relative(find_inputs([f"{root}/*/val/*.jpg"])) == ["a/val/x.jpg", "b/val/x.jpg"]
    assert relative(find_inputs([f"{root}/**/*.jpg"])) == ["a/val/x.jpg", "b/train/z.jpg", "b/val/x.jpg"]
    assert relative(find_inputs([f"{root}/b/*"])) == ["b/train/z.jpg", "b/val/x.jpg", "b/val/y.png"]
    assert relative(find_inputs([root / "b" / "val", root / "b" / "val" / "y.png", f"{root}/b/*/y.*"])) == [
        "b/val/x.jpg", "b/val/y.png"]   # each file once
    with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.gif"):
        find_inputs([f"{root}/*/*.gif"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_inputs([root / "nowhere"])


def test_files_of_several_folders_keep_their_folders(model, tmp_path):
    root = write_tree(tmp_path / "data")
    path = predict_files(model, [f"{root}/*/val/*.jpg"], tmp_path / "out", score_threshold=0.0)
    assert {r["file_name"] for r in json.loads(path.read_text())} == {"a/val/x.jpg", "b/val/x.jpg"}
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a/val/x.png", "b/val/x.png"]


def test_two_files_drawn_to_one_name_are_refused(model, tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "x.jpg")
    Image.fromarray(PIXELS).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"x\.png.*x\.jpg.*'x\.png'") as info:
        predict_files(model, [tmp_path], tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_cli_device_batch_size_and_force(model, checkpoint, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(PIXELS, i, axis=1)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(out), "--device", "cpu",
                 "--batch-size", "2", "--score-threshold", "0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    expected = [r for i, det in enumerate(model.predict(sorted(folder.iterdir()), batch_size=2))
                for r in predict_module.detection_records(f"{i}.png", det, model.classes)]
    assert records and records == json.loads(json.dumps(expected))

    before = (out / "predictions.json").read_bytes()
    assert main(["predict", str(checkpoint), str(folder / "0.png"), "--out", str(out)]) == 2
    assert error_lines(caplog) == [f"folder {str(out)!r} is not empty; pass --force to write into it"]
    assert (out / "predictions.json").read_bytes() == before   # refused: nothing overwritten
    assert main(["predict", str(checkpoint), str(folder / "0.png"), "--out", str(out), "--force",
                 "--score-threshold", "0"]) == 0
    assert {r["file_name"] for r in json.loads((out / "predictions.json").read_text())} == {"0.png"}

    caplog.clear()
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "o2"), "--batch-size", "0"]) == 2
    assert error_lines(caplog) == ["--batch-size must be >= 1, got 0"]


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("device, message", [
    ("cuda", "--device='cuda', but torch sees no CUDA GPU on this machine (use --device=cpu or auto)"),
    ("gpu", "--device must be 'auto' or a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'gpu'"),
])
def test_cli_unavailable_device_is_one_line(checkpoint, tmp_path, monkeypatch, caplog, command, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    where = [str(tmp_path / "in.png"), "--out", str(tmp_path / "out")] if command == "predict" else [
        "--data", str(tmp_path)]
    assert main([command, str(checkpoint), *where, "--device", device]) == 2
    assert error_lines(caplog) == [message]
    assert not (tmp_path / "out").exists()


def test_class_colours_are_fixed_and_distinct():
    colors = [class_color(label) for label in range(80)]
    assert colors == [class_color(label) for label in range(80)]
    assert len(set(colors)) == 80
    distance = lambda a, b: float(np.linalg.norm(np.subtract(a, b)))
    assert min(distance(colors[i], colors[i + 1]) for i in range(79)) > 150   # neighbours far apart
    assert min(distance(a, b) for i, a in enumerate(colors[:10]) for b in colors[i + 1:10]) > 50


GRAY = (120, 120, 120)


def drawn(height: int, width: int, boxes: list[list[float]], labels: list[int]) -> np.ndarray:
    image = torch.tensor(GRAY, dtype=torch.uint8)[:, None, None].expand(3, height, width).contiguous()
    det = Detections(torch.tensor(boxes), torch.full((len(boxes),), 0.5), torch.tensor(labels))
    classes = ClassInfo([1, 2, 3, 4, 5, 6], ["a", "b", "c", "d", "e", "f"])
    return np.asarray(draw(image, det, classes))


def test_boxes_and_labels_are_drawn_in_the_class_colour():
    pixels = drawn(160, 200, [[40, 60, 150, 140], [20, 0, 90, 50]], [1, 4])
    color = class_color(1)
    assert (pixels[100, 40] == color).all() and (pixels[100, 150] == color).all()   # box sides
    assert (pixels[100, 41:149] == GRAY).all()   # not filled
    # the label sits on the box: a filled band of the class colour with text of the contrast colour
    assert (pixels[59, 40:55] == color).all()
    label = pixels[44:59, 40:60]
    assert (label == color).all(axis=-1).mean() > 0.5
    text = np.abs(label.astype(int) - text_color(color)).sum(axis=-1) < 60
    assert text.sum() >= 10
    # no room above the second box (it touches the top): its label hangs inside it
    assert (pixels[3, 22:30] == class_color(4)).all() and (pixels[25, 22:30] == GRAY).all()


def test_line_width_grows_with_the_image():
    def width(size: int) -> int:
        pixels = drawn(size, size, [[size / 4, size / 4, 3 * size / 4, 3 * size / 4]], [2])
        row = pixels[size * 2 // 3, size // 4:size // 2]   # below the label
        return int((row == class_color(2)).all(axis=-1).sum())
    assert width(64) == 1 and width(640) < width(1600)


def test_amp_runs_the_network_in_bf16_and_postprocesses_float32(model, monkeypatch):
    """``predict(amp="bf16")``: the convolutions see bfloat16, the post-processing float32 outputs
    close to the float32 pass's; the default stays float32."""
    seen, outputs = [], []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    postprocess = model.postprocess
    monkeypatch.setattr(model, "postprocess", lambda out, sizes: outputs.append(out) or postprocess(out, sizes))
    try:
        [full] = model.predict(PIXELS)
        [mixed] = model.predict(PIXELS, amp="bf16")
    finally:
        handle.remove()
    assert seen == [torch.float32, torch.bfloat16]
    from tests.test_contract import flat

    pairs = list(zip(flat(outputs[0]), flat(outputs[1])))
    assert pairs and all(b.dtype == a.dtype != torch.bfloat16 for a, b in pairs)
    # bfloat16 keeps 8 bits of mantissa: within 5% of each output's range on this random network
    assert all((a - b).abs().max() <= 0.05 * a.abs().max() for a, b in pairs if a.is_floating_point())
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert mixed.boxes.dtype == full.boxes.dtype == torch.float32


def test_cli_amp(model, checkpoint, tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "a.png")
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--amp", "bf16", "--score-threshold", "0"]) == 0
    records = json.loads((tmp_path / "o" / "predictions.json").read_text())
    expected = predict_module.detection_records("a.png", model.predict(PIXELS, amp="bf16")[0], model.classes)
    assert records and records == json.loads(json.dumps(expected))
    with pytest.raises(SystemExit):   # argparse: a choice outside none / bf16 / fp16 / auto
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--amp", "half"])
