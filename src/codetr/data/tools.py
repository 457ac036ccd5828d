"""``codetr data check`` and ``codetr data show``: what a COCO-format dataset holds and what is
wrong with it, and its ground truth as the model will see it.

``check_split`` reads an annotation json with ``codetr.data.coco``'s checks (one home), but
where ``CocoDetection`` stops at the first bad annotation it counts every problem of each kind
and keeps the first few (``EXAMPLES``); only a json it cannot read at all (malformed, a missing
top-level list or required field) raises. Sizes follow COCO AP: small < 32^2 <= medium < 96^2
<= large, by the annotation's ``area`` (the box area where it has none).
"""
from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torchvision.transforms.functional import pil_to_tensor

from ..images import ImageReadError
from ..structures import ClassInfo, Detections
from .coco import (CocoDetection, annotation_problem, check_fields, is_int, load_annotated_image, read_json,
                   repeated)

EXAMPLES = 5                         # problems named per kind
OUTSIDE_TOLERANCE = 1.0              # px a box may reach past the image edge (rounding) before it counts
SIZE_EDGES = (8, 16, 32, 64, 128, 256, 512)   # px, sqrt(area): the text histogram's bins
BAR_WIDTH = 40
NOTES = frozenset({"image without annotations"})   # reported, but not a problem (COCO has ~1% such)


@dataclass
class Findings:
    """How often each kind of problem occurred, and the first ``EXAMPLES`` of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= EXAMPLES:
            self.examples.setdefault(kind, []).append(example)

    @property
    def problems(self) -> int:
        """How many findings are problems (not ``NOTES``)."""
        return sum(n for kind, n in self.counts.items() if kind not in NOTES)


@dataclass
class SplitReport:
    """What ``check_split`` found in one annotation file. ``per_class``: name -> (images,
    annotations); ``sizes``: small / medium / large counts; ``histogram``: counts per
    ``SIZE_EDGES`` bin (one more bin than edges)."""

    name: str
    ann_file: Path
    num_images: int = 0
    num_annotations: int = 0
    per_class: dict[str, list[int]] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    histogram: list[int] = field(default_factory=lambda: [0] * (len(SIZE_EDGES) + 1))
    findings: Findings = field(default_factory=Findings)


def find_splits(source: str | Path, image_dir: str | Path | None = None) -> list[tuple[str, Path, Path]]:
    """(split, annotation json, image folder) of a dataset root (``annotations/instances_<split>.json``
    with images in ``<split>/``) or of one json (images in ``image_dir``; default ``<root>/<split>``
    for ``<root>/annotations/instances_<split>.json``, else the json's folder)."""
    source = Path(source)
    if source.is_file():
        found = [source]
    elif source.is_dir():
        found = sorted((source / "annotations").glob("instances_*.json"))
        if not found:
            raise FileNotFoundError(f"no annotations/instances_<split>.json in {str(source)!r}; name the json itself")
    else:
        raise FileNotFoundError(f"no such dataset folder or annotation file: {str(source)!r}")
    splits = []
    for ann_file in found:
        split = ann_file.stem.removeprefix("instances_")
        default = ann_file.parent.parent / split if ann_file.parent.name == "annotations" else ann_file.parent
        splits.append((split, ann_file, Path(image_dir) if image_dir else default))
    return splits


def check_split(name: str, ann_file: Path, image_dir: Path, decode_images: bool = True,
                threads: int = 4) -> SplitReport:
    """Counts and problems of one annotation file (module docstring); with ``decode_images``
    every image is read once: missing, corrupt, or of another size than its json entry."""
    data = read_json(ann_file)
    check_fields(data, ann_file, with_masks=False)
    report = SplitReport(name, ann_file, num_images=len(data["images"]), num_annotations=len(data["annotations"]))
    names = _check_categories(data["categories"], report.findings)
    images = _check_images(data["images"], report.findings)
    annotated = _check_annotations(data["annotations"], names, images, report)
    for image_id, info in images.items():
        if image_id not in annotated:
            report.findings.add("image without annotations", f"image id {image_id} ({info['file_name']})")
    if decode_images:
        _decode_all(image_dir, images, ann_file, report.findings, threads)
    return report


def _check_categories(categories: list[dict], findings: Findings) -> dict[int, str]:
    """Category name by id; repeated ids are findings (the first name is kept)."""
    names: dict[int, str] = {}
    for cat in categories:
        if cat["id"] in names:
            findings.add("duplicate category id", f"category id {cat['id']!r} ({cat['name']!r})")
        else:
            names[cat["id"]] = str(cat["name"])
    return names


def _check_images(entries: list[dict], findings: Findings) -> dict[int, dict]:
    """Image entries by id; non-integer and repeated ids are findings (the first entry is kept)."""
    images: dict[int, dict] = {}
    for info in entries:
        if not is_int(info["id"]):
            findings.add("non-integer image id", f"image id {info['id']!r} ({info['file_name']})")
        elif info["id"] in images:
            findings.add("duplicate image id", f"image id {info['id']} ({info['file_name']})")
        else:
            images[info["id"]] = info
    return images


def _check_annotations(anns: list[dict], names: dict[int, str], images: dict[int, dict],
                       report: SplitReport) -> set[int]:
    """Count classes and sizes of the well-formed annotations, add every problem to the
    report's findings; returns the ids of the images that have an annotation."""
    findings, annotated = report.findings, set()
    report.per_class = {name: [0, 0] for name in names.values()}
    images_of: dict[str, set[int]] = {name: set() for name in names.values()}
    for dup in repeated([a["id"] for a in anns if is_int(a["id"])]):
        findings.add("duplicate annotation id", f"annotation id {dup}")
    for ann in anns:
        problem = annotation_problem(ann, names, images)
        if problem is not None:
            findings.add(problem[0], f"annotation id {ann['id']!r} {problem[1]}")
            continue
        name, info, (x, y, w, h) = names[ann["category_id"]], images[ann["image_id"]], ann["bbox"]
        annotated.add(ann["image_id"])
        report.per_class[name][1] += 1
        images_of[name].add(ann["image_id"])
        where = f"annotation id {ann['id']} (image {info['file_name']}, bbox {ann['bbox']})"
        if w <= 0 or h <= 0:
            findings.add("box with w or h <= 0", where)
            continue
        if (x < -OUTSIDE_TOLERANCE or y < -OUTSIDE_TOLERANCE or x + w > info["width"] + OUTSIDE_TOLERANCE
                or y + h > info["height"] + OUTSIDE_TOLERANCE):
            findings.add("box outside the image", f"{where}, image {info['width']}x{info['height']}")
        _count_size(report, float(ann.get("area") or w * h))
    for name, ids in images_of.items():
        report.per_class[name][0] = len(ids)
    return annotated


def _count_size(report: SplitReport, area: float) -> None:
    report.sizes["small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"] += 1
    side = math.sqrt(max(area, 0.0))
    report.histogram[sum(side >= edge for edge in SIZE_EDGES)] += 1


def _decode_all(image_dir: Path, images: dict[int, dict], ann_file: Path, findings: Findings,
                threads: int) -> None:
    """Read every image once (threads: decoding releases the GIL) and add what fails."""
    def problem(info: dict) -> tuple[str, str] | None:
        try:
            load_annotated_image(image_dir, info, ann_file)
        except FileNotFoundError:
            return "missing image", str(Path(image_dir) / str(info["file_name"]))
        except ValueError as e:
            kind = "corrupt image" if isinstance(e.__cause__, ImageReadError) else "image size differs from json"
            return kind, str(e)
        return None

    with ThreadPoolExecutor(threads) as pool:
        for found in pool.map(problem, images.values()):
            if found is not None:
                findings.add(*found)


def format_report(report: SplitReport) -> str:
    """The report of one split as text: counts, classes, sizes, the histogram, findings."""
    lines = [f"{report.name}: {report.num_images} images, {report.num_annotations} annotations ({report.ann_file})",
             f"  {'class':<20} {'images':>8} {'annotations':>12}"]
    lines += [f"  {name:<20} {n_img:>8} {n_ann:>12}" for name, (n_img, n_ann) in report.per_class.items()]
    lines.append("  boxes: " + "  ".join(f"{k} {report.sizes[k]}" for k in ("small", "medium", "large")))
    lines += _histogram_lines(report.histogram)
    counts = report.findings.counts
    lines.append(f"  problems: {report.findings.problems}" if counts else "  problems: none")
    for kind in sorted(counts, key=lambda k: (k in NOTES, k)):
        shown = report.findings.examples[kind]
        more = f" (first {len(shown)})" if counts[kind] > len(shown) else ""
        lines.append(f"    {kind}{' (note)' if kind in NOTES else ''}: {counts[kind]}{more}")
        lines += [f"      {example}" for example in shown]
    return "\n".join(lines)


def _histogram_lines(histogram: list[int]) -> list[str]:
    """One text bar per ``SIZE_EDGES`` bin of box side (sqrt area), from the first bin with a
    box to the last."""
    used = [i for i, count in enumerate(histogram) if count]
    if not used:
        return []
    top, bounds = max(histogram), ["0", *map(str, SIZE_EDGES), "inf"]
    return ["  box side sqrt(area), px:"] + [
        f"    {bounds[i]:>4}-{bounds[i + 1]:<4} {histogram[i]:>8} {'#' * math.ceil(BAR_WIDTH * histogram[i] / top)}"
        for i in range(used[0], used[-1] + 1)]


def ground_truth(ann_file: Path, image_dir: Path, num: int) -> Iterator[tuple[str, torch.Tensor, Detections, ClassInfo]]:
    """(file_name, uint8 [3, H, W] image, its annotations as ``Detections`` with score 1, the
    classes) of the first ``num`` images, as training reads them (``CocoDetection``: boxes
    clamped, degenerate ones skipped; masks when every annotation has a segmentation)."""
    dataset = CocoDetection(ann_file, image_dir)
    anns = dataset.coco.dataset["annotations"]
    dataset.with_masks = bool(anns) and all("segmentation" in a for a in anns)   # the json is read once
    for index in range(min(num, len(dataset))):
        image, target = dataset[index]
        pixels = pil_to_tensor(image)   # uint8 [3, H, W]
        det = Detections(target.boxes, torch.ones(len(target.labels)), target.labels, target.masks)
        yield str(dataset.coco.imgs[target.image_id]["file_name"]), pixels, det, dataset.classes
