"""``codetr predict`` on video files (PyAV, the ``video`` extra): a drawn MP4 of the same frame
count, size and rate, a JSON of per-frame detections equal to ``model.predict`` on the decoded
frames, unreadable videos skipped, and a one-line install hint without PyAV."""
import json
import logging
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import codetr
from codetr.api import save
from codetr.cli import main
from codetr.engine.predict import detection_records, keep_confident, predict_files

FPS = Fraction(10)
THRESHOLD = 0.05


def shape_frames(count: int, height: int, width: int) -> list[Image.Image]:
    """A light square moving right over a dark background."""
    frames = []
    for i in range(count):
        frame = Image.new("RGB", (width, height), (30, 30, 40))
        ImageDraw.Draw(frame).rectangle((4 + 5 * i, 10, 30 + 5 * i, height - 10), fill=(220, 200, 60))
        frames.append(frame)
    return frames


def write_clip(path, frames: list[Image.Image], fps: Fraction = FPS) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)   # another encoder than predict's
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())


def decode(path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = codetr.create("fcos_tiny", num_classes=2, score_threshold=0.0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    save(model, path, model_name="fcos_tiny")
    return path


def test_video_gives_a_drawn_video_and_per_frame_detections(checkpoint, tmp_path):
    clip, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_clip(clip, shape_frames(6, 64, 80))
    assert main(["predict", str(checkpoint), str(clip), "--out", str(out), "--score-threshold", str(THRESHOLD),
                 "--batch-size", "4", "--device", "cpu"]) == 0

    inputs, _ = decode(clip)
    drawn, rate = decode(out / "clip.mp4")
    assert len(drawn) == len(inputs) == 6 and rate == FPS
    assert all(d.shape == (64, 80, 3) for d in drawn)
    assert np.abs(drawn[0].astype(int) - inputs[0]).max() > 100   # boxes and labels, not codec noise

    model = codetr.load(checkpoint)
    expected = [detection_records("clip.mp4", keep_confident(det, THRESHOLD), model.classes)
                for det in model.predict(inputs, batch_size=4)]
    result = json.loads((out / "clip.json").read_text())
    assert result["video"] == "clip.mp4" and result["fps"] == 10.0
    assert [f["frame"] for f in result["frames"]] == list(range(6))
    assert all(expected) and [f["detections"] for f in result["frames"]] == json.loads(json.dumps(expected))
    assert json.loads((out / "predictions.json").read_text()) == []   # images only


def test_odd_sized_video_keeps_its_size_and_rate(checkpoint, tmp_path):
    clip = tmp_path / "odd.mkv"
    write_clip(clip, shape_frames(3, 49, 61), fps=Fraction(30000, 1001))
    predict_files(codetr.load(checkpoint), [clip], tmp_path / "out", score_threshold=0.5)
    drawn, rate = decode(tmp_path / "out" / "odd.mp4")
    assert len(drawn) == 3 and drawn[0].shape == (49, 61, 3) and rate == Fraction(30000, 1001)


def test_unreadable_videos_are_skipped_like_images(checkpoint, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (folder / "empty.webm").write_bytes(b"")
    write_clip(folder / "good.avi", shape_frames(2, 32, 48))
    Image.new("RGB", (40, 30), (90, 90, 90)).save(folder / "still.png")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="codetr.engine.predict"):
        predict_files(codetr.load(checkpoint), [folder], out, score_threshold=0.5)
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == [str(folder / "corrupt.mp4"), str(folder / "empty.webm")]
    assert all("video" in reason for reason in skipped.values())
    assert "skipped 2 of 4 files" in caplog.text and "corrupt.mp4" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.mp4", "predictions.json", "skipped.txt",
                                                     "still.png"]   # no partial output of a skipped video


def test_without_pyav_a_video_gives_the_install_command(checkpoint, tmp_path, monkeypatch, caplog):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, shape_frames(2, 32, 48))
    Image.new("RGB", (40, 30)).save(tmp_path / "still.png")
    monkeypatch.setitem(sys.modules, "av", None)   # ``import av`` raises ImportError
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "still.png"), str(clip), "--out", str(out)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and 'pip install "codetr[video]"' in errors[0] and "clip.mp4" in errors[0]
    assert "\n" not in errors[0] and not out.exists()   # refused before anything is written
