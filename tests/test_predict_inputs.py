"""``model.predict`` inputs: documented dtypes and ranges map to the same pixels, the rest is
refused in one line; bad calls and oversized files fail clearly; ``predict_files`` skips
unreadable files and still writes predictions.json."""
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
from codetr.engine.predict import predict_files
from codetr.images import load_rgb

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
    listing = predict_module.find_images
    monkeypatch.setattr(predict_module, "find_images", lambda inputs: listing(inputs) + [folder / "gone.png"])
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
    assert "skipped 3 of 4 images" in caplog.text

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
