"""A synthetic COCO-format shapes dataset, for tests and tiny training runs.

Each image: a textured background (gradient, stripes, noise, or a mix), unannotated clutter
(dots, thin lines, arcs), then 1-8 filled shapes of ``len(SHAPES)`` classes, 8 px up to half
the shorter image side, painted in order so later shapes occlude earlier ones. An object's
mask, box and area are its *visible* part; objects with less than 40% visible, or a visible
box under 2 px wide or high, are painted but not annotated. The last shape is never occluded,
so every image has at least one object.

Category ids are ``CATEGORY_IDS`` (neither from 0 nor contiguous) to exercise the label
mapping. Image ``i`` of a split is drawn from ``numpy.random.default_rng((seed, split, i))``,
so a seed gives byte-identical files, and the val split does not depend on ``num_train``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
CATEGORY_IDS = (1, 2, 3, 5, 7, 11)
MIN_VISIBLE = 0.4      # fraction of an object's area that must stay visible
MIN_BOX_SIDE = 2       # px, visible box
MIN_OBJECT_SIZE = 8    # px, shape diameter
MAX_OBJECTS = 8


def write_synthetic_coco(out_dir: str | Path, num_train: int = 200, num_val: int = 50, image_size: int = 128,
                         seed: int = 0) -> dict[str, Path]:
    """Write ``out_dir/{train,val}/*.png`` and ``out_dir/annotations/instances_{train,val}.json``.
    Image sides are drawn in [0.75, 1.0] * ``image_size``. Returns the paths under keys
    ``root``, ``train_images``, ``val_images``, ``train_json``, ``val_json``."""
    if image_size < 32:
        raise ValueError(f"write_synthetic_coco: image_size must be >= 32, got {image_size}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"write_synthetic_coco: negative split size (train {num_train}, val {num_val})")
    root = Path(out_dir)
    paths = {"root": root, "train_images": root / "train", "val_images": root / "val",
             "train_json": root / "annotations" / "instances_train.json",
             "val_json": root / "annotations" / "instances_val.json"}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        paths[f"{split}_images"].mkdir(parents=True, exist_ok=True)
        dataset = _write_split(paths[f"{split}_images"], split, count, image_size, seed, split_index)
        paths[f"{split}_json"].write_text(json.dumps(dataset), encoding="utf-8")
    return paths


def _write_split(image_dir: Path, split: str, count: int, image_size: int, seed: int, split_index: int) -> dict:
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng((seed, split_index, i))
        pixels, objects = synth_image(rng, image_size)
        h, w = pixels.shape[:2]
        image_id = i + 1
        file_name = f"{i:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for label, mask in objects:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[label],
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                "iscrowd": 0, "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            })
    return {
        "info": {"description": f"codetr synthetic shapes ({split})", "version": "1.0", "year": 2024,
                 "contributor": "codetr.data.synth", "seed": seed, "image_size": image_size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"}
                       for cid, name in zip(CATEGORY_IDS, SHAPES)],
    }


def synth_image(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image: uint8 [H, W, 3] pixels and the annotated objects as (label, visible mask
    [H, W] bool), in painting order."""
    lo = math.ceil(0.75 * image_size)
    h, w = int(rng.integers(lo, image_size + 1)), int(rng.integers(lo, image_size + 1))
    canvas = _background(rng, h, w)
    _clutter(rng, canvas)
    pixels = np.asarray(canvas, dtype=np.float32)
    owner = np.full((h, w), -1, dtype=np.int32)     # index of the shape painted last on each pixel
    shapes = []
    for k in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(SHAPES)))
        # uniform in diameter: small objects are present but not the majority (median ~ 1/4 side)
        diameter = rng.uniform(MIN_OBJECT_SIZE, min(h, w) / 2)
        r = diameter / 2
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        mask = _shape_mask(SHAPES[label], cx, cy, r, rng.uniform(0, 2 * math.pi), h, w)
        _paint(rng, pixels, mask)
        owner[mask] = k
        shapes.append((label, mask))
    objects = []
    for k, (label, mask) in enumerate(shapes):
        visible = owner == k
        area = int(mask.sum())
        if area == 0 or visible.sum() < MIN_VISIBLE * area:
            continue
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        if cols[-1] - cols[0] + 1 < MIN_BOX_SIDE or rows[-1] - rows[0] + 1 < MIN_BOX_SIDE:
            continue
        objects.append((label, visible))
    return pixels.clip(0, 255).astype(np.uint8), objects


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, h: int, w: int) -> np.ndarray:
    """[h, w] bool of one filled shape of circumradius ``r`` centred at (cx, cy), rotated."""
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        if shape == "ring":
            hole = 0.55 * r
            draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=1)
    return np.asarray(im, dtype=bool)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        radii, n = [r], 4
    elif shape == "triangle":
        radii, n = [r], 3
    elif shape == "star":
        radii, n = [r, 0.45 * r], 10
    elif shape == "cross":  # plus sign, arms of half-width a; corners in polar form
        a = 0.3 * r
        local = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a),
                 (-a, a), (-a, r)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in local]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(cx + radii[j % len(radii)] * math.cos(angle + 2 * math.pi * j / n),
             cy + radii[j % len(radii)] * math.sin(angle + 2 * math.pi * j / n)) for j in range(n)]


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Gradient, stripes or plain base plus Gaussian noise of random strength."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(theta) + yy * math.sin(theta))            # [h, w] coordinate along theta
    kind = int(rng.integers(3))
    if kind == 0:    # linear gradient c0 -> c1
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    elif kind == 1:  # stripes, period 4-16 px, soft or hard
        wave = np.sin(2 * math.pi * t / rng.uniform(4, 16))
        t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
        t *= rng.uniform(0.2, 0.6)
    else:            # nearly flat
        t = np.zeros_like(t)
    base = c0 + t[..., None] * (c1 - c0)                          # [h, w, 3]
    base += rng.normal(0, rng.uniform(2, 25), size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def _clutter(rng: np.random.Generator, canvas: Image.Image) -> None:
    """Unannotated distractors painted under the shapes: dots, thin lines and arcs."""
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for _ in range(int(rng.integers(2, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        kind = int(rng.integers(3))
        if kind == 0:
            d = float(rng.uniform(0.5, 1.5))
            draw.ellipse([x - d, y - d, x + d, y + d], fill=colour)
        elif kind == 1:
            length, theta = rng.uniform(5, 0.5 * min(w, h)), rng.uniform(0, 2 * math.pi)
            draw.line([x, y, x + length * math.cos(theta), y + length * math.sin(theta)], fill=colour, width=1)
        else:
            d = float(rng.uniform(3, 12))
            start = float(rng.uniform(0, 360))
            draw.arc([x - d, y - d, x + d, y + d], start, start + float(rng.uniform(60, 200)), fill=colour)


def _paint(rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray) -> None:
    """Fill ``mask`` of ``pixels`` [H, W, 3] float with a colour that stands out from what lies
    under it, plus a light shading and noise."""
    under = pixels[mask].mean(0) if mask.any() else np.zeros(3, np.float32)
    for _ in range(10):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if np.abs(colour - under).sum() > 120:
            break
    n = int(mask.sum())
    shade = rng.uniform(0.85, 1.15) + rng.normal(0, rng.uniform(0, 6) / 255, size=(n, 1)).astype(np.float32)
    pixels[mask] = colour * shade
