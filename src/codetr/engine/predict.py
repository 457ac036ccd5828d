"""``codetr predict``: detections of image and video files as COCO-style JSON plus drawings.

Images are read as a viewer shows them (``codetr.images.load_image``: EXIF orientation applied,
16-bit scaled, alpha over white); boxes and drawings are in that upright frame. Videos (PyAV,
``codetr.engine.video``) give a drawn MP4 and a JSON of per-frame detections. Unreadable files
are skipped, not fatal (``predict_files``).
"""
from __future__ import annotations

import colorsys
import glob
import json
import logging
import os
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_segmentation_masks
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..backends import apply_device_defaults
from ..detector import Detector
from ..images import IMAGE_SUFFIXES, ImageReadError, load_rgb
from ..structures import ClassInfo, Detections
from .checkpoint import atomic_open
from .evaluate import encode_masks
from .video import VIDEO_SUFFIXES, VideoReadError, read_video, require_av, write_video

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.json"
SKIPPED_FILE = "skipped.txt"
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
GOLDEN_RATIO = (5 ** 0.5 - 1) / 2
T = TypeVar("T")


def find_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named directly, the image and video files (sorted) in the folders named, and those
    that glob patterns match (``**`` for any folder depth; quote patterns from the shell), each
    file once."""
    found: list[Path] = []
    for item in map(str, inputs):
        if Path(item).is_file():
            found.append(Path(item))
        elif Path(item).is_dir():
            found += media_in(Path(item))
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            found += [p for m in map(Path, matches) for p in (media_in(m) if m.is_dir() else [m])
                      if p.suffix.lower() in MEDIA_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
        else:
            raise FileNotFoundError(f"no such file or folder: {item!r}")
    if not found:
        raise FileNotFoundError(f"no images or videos ({', '.join(sorted(MEDIA_SUFFIXES))}) in "
                                f"{', '.join(map(str, inputs))}")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values())


def media_in(folder: Path) -> list[Path]:
    """The image and video files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())


def output_names(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the deepest folder that holds them all (just the file name for the
    files of one folder): the ``file_name`` of its records and, less its suffix, of its
    drawings. Raises ValueError when two files would be drawn to the same output."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    names = [Path(os.path.relpath(p, root)).as_posix() for p in absolute]
    taken: dict[str, Path] = {PREDICTIONS_FILE: Path(PREDICTIONS_FILE), SKIPPED_FILE: Path(SKIPPED_FILE)}
    for path, name in zip(paths, names):
        for output in output_files(path, name):
            if output in taken:
                raise ValueError(f"{str(path)!r} and {str(taken[output])!r} would both write {output!r} "
                                 f"in the output folder; predict them in separate runs")
            taken[output] = path
    return names


def output_files(path: Path, name: str) -> list[str]:
    """What predicting ``path`` writes in the output folder: a drawn .png for an image, a drawn
    .mp4 and a .json of detections for a video."""
    stem = str(Path(name).with_suffix(""))
    return [f"{stem}.mp4", f"{stem}.json"] if is_video(path) else [f"{stem}.png"]


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def class_color(label: int) -> tuple[int, int, int]:
    """The drawing colour of class index ``label``: fixed, and far from its neighbours' (hues a
    golden-ratio turn apart, so they never repeat)."""
    rgb = colorsys.hsv_to_rgb((label * GOLDEN_RATIO) % 1.0, 0.85, 0.95)
    return tuple(round(255 * c) for c in rgb)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw(image: torch.Tensor, det: Detections, classes: ClassInfo, scores: bool = True) -> Image.Image:
    """uint8 [3, H, W] image with each detection drawn in its class's colour (``class_color``):
    mask tinted, box outlined, and a '<name> <score>' label ('<name>' without ``scores``: ground
    truth) on a filled background above the box (inside it at the image's top edge). Lines and
    text scale with the image: 2 px and 14 px on a 640 px image, never under 1 px and 10 px."""
    colors = [class_color(int(label)) for label in det.labels]
    if det.masks is not None and len(det):
        image = draw_segmentation_masks(image, det.masks.bool(), alpha=0.4, colors=colors)
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    scale = max(picture.size) / 640
    width, font = max(1, round(2 * scale)), label_font(max(10, round(14 * scale)))
    pen = ImageDraw.Draw(picture)
    for box, label, score, color in zip(det.boxes.tolist(), det.labels.tolist(), det.scores.tolist(), colors):
        pen.rectangle(box, outline=color, width=width)
        text = f"{classes.names[label]} {score:.2f}" if scores else classes.names[label]
        draw_label(pen, (box[0], box[1]), text, color, font)
    return picture


def draw_label(pen: ImageDraw.ImageDraw, corner: tuple[float, float], text: str, color: tuple[int, int, int],
               font: ImageFont.FreeTypeFont) -> None:
    """``text`` in ``text_color(color)`` on a ``color`` band one line high that sits on the box's
    top-left ``corner``, or hangs from it when there is no room above."""
    pad = max(1, round(font.size / 6))
    ascent, descent = font.getmetrics()
    width, height = pen.textlength(text, font=font) + 2 * pad, ascent + descent + 2 * pad
    x, y = round(corner[0]), round(corner[1])
    top = y - height if y >= height else y
    pen.rectangle((x, top, x + width - 1, top + height - 1), fill=color)
    pen.text((x + pad, top + pad), text, fill=text_color(color), font=font, anchor="la")


def keep_confident(det: Detections, score_threshold: float) -> Detections:
    keep = det.scores >= score_threshold
    masks = det.masks[keep] if det.masks is not None else None
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep], masks)


def detection_records(file_name: str, det: Detections, classes: ClassInfo) -> list[dict]:
    """One image's detections -> predictions.json records (bbox xywh in original pixels, and
    ``segmentation`` as compressed COCO RLE when ``det.masks`` is set)."""
    records = [{"file_name": file_name, "category_id": classes.category_ids[int(l)],
                "category": classes.names[int(l)], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
               for (x0, y0, x1, y1), l, s in zip(det.boxes.tolist(), det.labels, det.scores.tolist())]
    if det.masks is not None and len(det):
        for record, rle in zip(records, encode_masks(det.masks.cpu())):
            record["segmentation"] = rle
    return records


def load_readable(paths: Sequence[Path], skipped: list[tuple[Path, str]]) -> list[tuple[Path, torch.Tensor]]:
    """(path, uint8 [3, H, W] upright RGB) of each file that reads; the others (gone since
    listing, corrupt, over the decompression-bomb limit) are appended to ``skipped`` with the
    reason and logged as a warning."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_rgb(path)))
        except (FileNotFoundError, ImageReadError) as e:
            logger.warning("skipping an unreadable image: %s", e)
            skipped.append((path, str(e)))
    return loaded


def predict_files(model: Detector, inputs: Iterable[str | Path], out_dir: str | Path,
                  score_threshold: float = 0.3, batch_size: int = 4, amp: str = "none") -> Path:
    """Run ``model`` (on its device) on image and video files, folders of them and glob
    patterns (``find_inputs``), ``batch_size`` images or frames at a time. Writes, named by
    ``output_names`` (the file name for the files of one folder):

    * ``out_dir/predictions.json``: a list with one ``detection_records`` record per detection
      in the images (file_name, category_id, category name, bbox xywh in original upright
      pixels, score, segmentation for mask models), and ``out_dir/<image stem>.png`` drawn;
    * per video, ``out_dir/<stem>.mp4`` drawn (same frame rate and size) and ``<stem>.json``
      (``predict_video``). Videos need PyAV: without it, a ValueError before anything is read.

    Files that cannot be read are skipped: a warning each, a summary line, and
    ``out_dir/skipped.txt`` with one tab-separated "path, reason" line each (removed when none is
    skipped, so it never describes an earlier run). The others are predicted as usual. A
    progress bar counts images and frames on a terminal. ``amp``: as ``Detector.predict``'s.
    Returns the predictions.json path."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    paths = find_inputs(list(inputs))
    names = dict(zip(paths, output_names(paths)))
    images = [p for p in paths if not is_video(p)]
    videos = [p for p in paths if is_video(p)]
    if videos:
        require_av(videos[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    apply_device_defaults(next(model.parameters()).device)   # TF32 on Ampere+ GPUs, CPU memory reuse
    skipped: list[tuple[Path, str]] = []
    with logging_redirect_tqdm():
        records = predict_images(model, images, names, out_dir, score_threshold, batch_size, skipped, amp)
        for video in videos:
            try:
                predict_video(model, video, names[video], out_dir, score_threshold, batch_size, amp)
            except VideoReadError as e:
                logger.warning("skipping an unreadable video: %s", e)
                skipped.append((video, str(e)))
    write_skipped(out_dir / SKIPPED_FILE, skipped, len(paths))
    json_path = out_dir / PREDICTIONS_FILE
    with atomic_open(json_path, "w") as f:
        json.dump(records, f)
    return json_path


def progress(total: int | None, desc: str, unit: str) -> tqdm:
    """A progress bar on stderr, shown only when that is a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False, dynamic_ncols=True)


def predict_images(model: Detector, paths: Sequence[Path], names: dict[Path, str], out_dir: Path,
                   score_threshold: float, batch_size: int, skipped: list[tuple[Path, str]],
                   amp: str = "none") -> list[dict]:
    """The predictions.json records of ``paths``, whose drawings are written to ``out_dir``
    (``output_files``); unreadable files are added to ``skipped``."""
    records: list[dict] = []
    with progress(len(paths), "images", "image") as bar:
        for chunk in batched(paths, batch_size):
            loaded = load_readable(chunk, skipped)
            dets = model.predict([rgb for _, rgb in loaded], batch_size=batch_size, amp=amp)
            for (path, rgb), det in zip(loaded, dets):
                det = keep_confident(det, score_threshold)
                records += detection_records(names[path], det, model.classes)
                drawn, = (out_dir / f for f in output_files(path, names[path]))
                drawn.parent.mkdir(parents=True, exist_ok=True)
                draw(rgb, det, model.classes).save(drawn)
            bar.update(len(chunk))
    return records


def predict_video(model: Detector, path: Path, name: str, out_dir: Path, score_threshold: float,
                  batch_size: int, amp: str = "none") -> None:
    """Write the ``output_files`` of a video: ``out_dir/<name less suffix>.mp4``, the frames
    drawn at the video's frame rate and size, and ``.json``: {"video": name, "fps", "frames":
    [{"frame": i, "detections": [records as predictions.json's, file_name the video's name]}]}.
    Raises VideoReadError (leaving neither file) when the video cannot be read to its end."""
    drawn, detections = (out_dir / f for f in output_files(path, name))
    drawn.parent.mkdir(parents=True, exist_ok=True)
    frames: list[dict] = []
    with read_video(path) as video, write_video(drawn, video.fps, video.width, video.height) as write, \
            progress(video.num_frames, name, "frame") as bar:
        for batch in batched(video.frames, batch_size):
            for rgb, det in zip(batch, model.predict(batch, batch_size=batch_size, amp=amp)):
                det = keep_confident(det, score_threshold)
                frames.append({"frame": len(frames), "detections": detection_records(name, det, model.classes)})
                write(draw(rgb, det, model.classes))
            bar.update(len(batch))
    with atomic_open(detections, "w") as f:
        json.dump({"video": name, "fps": float(video.fps), "frames": frames}, f)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` consecutive items (the last one shorter)."""
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


def write_skipped(path: Path, skipped: list[tuple[Path, str]], total: int) -> None:
    """``path`` listing the skipped files (tab-separated "path, reason" lines) plus a summary warning;
    with nothing skipped, a stale ``path`` is removed."""
    if not skipped:
        path.unlink(missing_ok=True)
        return
    logger.warning("skipped %d of %d files that could not be read: %s (listed in %s)", len(skipped), total,
                   ", ".join(p.name for p, _ in skipped), path)
    with atomic_open(path, "w") as f:
        f.writelines(f"{p}\t{reason}\n" for p, reason in skipped)
