"""``codetr data import``: YOLO-txt and Pascal VOC datasets -> one COCO-format json.

YOLO (ultralytics layout): the images under ``SRC/images/`` (or ``SRC`` itself), searched
recursively; the labels of ``.../images/x/a.jpg`` in ``.../labels/x/a.txt`` (the last
``images`` folder of the path replaced by ``labels``; no such folder: next to the image). A
label line is ``class x_center y_center width height`` or a polygon ``class x1 y1 x2 y2 ...``,
normalised to [0, 1] of the upright image; an image without a label file has no objects. The
class names come from ``names`` of a ``data.yaml`` (PyYAML) or the lines of a ``classes.txt``,
looked for in ``SRC`` and its two parents, or given.

Pascal VOC: ``SRC/Annotations/*.xml`` (or the ids of ``ImageSets/Main/<split>.txt``) with the
images in ``SRC/JPEGImages``. Boxes are 1-based inclusive pixel indices: ``xmin - 1, ymin - 1,
xmax, ymax`` in COCO's continuous coordinates (detectron2's rule). ``difficult`` objects become
``iscrowd: 1``, ignored by COCO AP as VOC's metric ignores them (mmdet's converter does the same).
Class names: the given list, else every name found, sorted (VOC's 20 classes are alphabetical).

Category ids are 1 + the class index (COCO's ids start at 1). ``file_name`` is relative to the
image folder returned with the json. Bad input raises one line naming the file, the line (YOLO)
or the object and field (VOC).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..config import parse_yaml
from ..images import IMAGE_SUFFIXES

CLASS_FILES = ("data.yaml", "classes.txt")
EXIF_ORIENTATION, TRANSPOSED = 0x0112, (5, 6, 7, 8)   # orientations that swap width and height


def import_yolo(src: str | Path, classes_file: str | Path | None = None) -> tuple[dict, Path]:
    """COCO json dict of the YOLO dataset at ``src`` (module docstring) and its image folder."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"no such YOLO dataset folder: {str(src)!r}")
    root = src / "images" if (src / "images").is_dir() else src
    names = read_class_names(Path(classes_file) if classes_file else find_class_file(src))
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(root)!r}")
    images, annotations = [], []
    for image_id, path in enumerate(paths, start=1):
        width, height = upright_size(path)
        images.append({"id": image_id, "file_name": path.relative_to(root).as_posix(), "width": width,
                       "height": height})
        label = label_path(path)
        if label.is_file():
            for line_no, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    ann = yolo_annotation(line, len(names), (width, height), f"{label}:{line_no}")
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return coco_dict(images, annotations, names), root


def find_class_file(src: Path) -> Path:
    """The first ``CLASS_FILES`` entry in ``src`` or its two parents."""
    for folder in (src, src.parent, src.parent.parent):
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"no {' or '.join(CLASS_FILES)} in {str(src)!r} or its two parents; "
                            "name the class list with --classes")


def read_class_names(path: Path) -> list[str]:
    """Class names by index from a YOLO ``data.yaml`` (``names``: a list, or a dict index ->
    name) or from a text file with one name per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"cannot read class names {str(path)!r}: {e.strerror or e}") from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        data = parse_yaml(text, path, instead="give the class names as classes.txt, one per line")
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict) and sorted(names) == list(range(len(names))):
            names = [names[i] for i in range(len(names))]
        if not isinstance(names, list):
            raise ValueError(f"{path}: expected 'names': a list of class names, or a dict 0..N-1 -> name")
        names = [str(n) for n in names]
    if not names:
        raise ValueError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: repeated class names {sorted({n for n in names if names.count(n) > 1})}")
    return names


def label_path(image: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``images`` folder); else next to the image."""
    parts = list(image.with_suffix(".txt").parts)
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts)


def yolo_annotation(line: str, num_classes: int, size: tuple[int, int], where: str) -> dict:
    """One YOLO label line -> COCO annotation fields (bbox in pixels, and the polygon as
    ``segmentation`` for a polygon line). ``where``: ``file:line`` for errors."""
    fields = line.split()
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise ValueError(f"{where}: expected 'class x_center y_center width height' or 'class x1 y1 x2 y2 x3 y3 "
                         f"...', got {len(fields)} fields: {line.strip()!r}")
    if not fields[0].isdigit() or int(fields[0]) >= num_classes:
        raise ValueError(f"{where}: class {fields[0]!r} is not a class index 0..{num_classes - 1}")
    values = []
    for column, text in enumerate(fields[1:], start=2):
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"{where}: field {column} {text!r} is not a number") from None
        if not 0.0 <= values[-1] <= 1.0:
            raise ValueError(f"{where}: field {column} is {text}; YOLO coordinates are normalised to [0, 1]")
    w, h = size
    ann = {"category_id": int(fields[0]) + 1, "iscrowd": 0}
    if len(values) == 4:
        cx, cy, bw, bh = values
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
        return {**ann, "bbox": box, "area": box[2] * box[3]}
    xs, ys = [x * w for x in values[0::2]], [y * h for y in values[1::2]]
    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    polygon = [v for xy in zip(xs, ys) for v in xy]
    return {**ann, "bbox": box, "area": polygon_area(xs, ys), "segmentation": [polygon]}


def polygon_area(xs: list[float], ys: list[float]) -> float:
    """Shoelace formula."""
    return abs(sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))) / 2


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as a viewer shows it (EXIF orientation applied), read
    from its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(EXIF_ORIENTATION) in TRANSPOSED else (w, h)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {str(path)!r} not found") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {str(path)!r} (corrupt or unsupported): {e}") from None


def import_voc(src: str | Path, classes_file: str | Path | None = None, split: str | None = None
               ) -> tuple[dict, Path]:
    """COCO json dict of the Pascal VOC dataset at ``src`` (module docstring; ``split``: the ids
    of ``ImageSets/Main/<split>.txt``, default every xml) and its image folder."""
    src = Path(src)
    ann_dir, image_dir = src / "Annotations", src / "JPEGImages"
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"no Annotations folder in {str(src)!r} (Pascal VOC: Annotations/*.xml, JPEGImages/)")
    xml_files = voc_files(src, split) if split else sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise FileNotFoundError(f"no .xml files in {str(ann_dir)!r}")
    parsed = [parse_voc_xml(path, image_dir) for path in xml_files]
    names = read_class_names(Path(classes_file)) if classes_file else sorted({o[0] for _, objs in parsed for o in objs})
    category_of = {name: i + 1 for i, name in enumerate(names)}
    images, annotations = [], []
    for image_id, ((image, objects), path) in enumerate(zip(parsed, xml_files), start=1):
        images.append({"id": image_id, **image})
        for k, (name, difficult, box) in enumerate(objects, start=1):
            if name not in category_of:
                raise ValueError(f"{path}: object {k} has class name {name!r}, which is not in {classes_file} "
                                 f"({len(names)} names)")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_of[name],
                                "bbox": box, "area": box[2] * box[3], "iscrowd": int(difficult)})
    return coco_dict(images, annotations, names), image_dir


def voc_files(src: Path, split: str) -> list[Path]:
    """The xml files of the ids listed in ``ImageSets/Main/<split>.txt``."""
    listing = src / "ImageSets" / "Main" / f"{split}.txt"
    try:
        ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise FileNotFoundError(f"cannot read split list {str(listing)!r}: {e.strerror or e}") from None
    return [src / "Annotations" / f"{i}.xml" for i in ids]


def parse_voc_xml(path: Path, image_dir: Path) -> tuple[dict, list[tuple[str, bool, list[float]]]]:
    """(image entry without id, [(class name, difficult, bbox xywh)]) of one VOC xml. The size is
    the xml's, or read from the image when the xml has none."""
    try:
        root = ET.parse(path).getroot()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except ET.ParseError as e:
        line, column = e.position
        raise ValueError(f"{path}: malformed XML at line {line} column {column}") from None
    file_name = (root.findtext("filename") or f"{path.stem}.jpg").strip()
    if root.find("size") is not None:
        width, height = (int(_number(root, f"size/{k}", path, "")) for k in ("width", "height"))
    if root.find("size") is None or not (width and height):   # some VOC-style exports write 0 x 0
        width, height = upright_size(image_dir / file_name)
    objects = []
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f" object {k}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{path}:{where} has no <name>")
        x0, y0, x1, y1 = (_number(obj, f"bndbox/{c}", path, where) for c in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append((name, difficult, [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]))
    return {"file_name": file_name, "width": width, "height": height}, objects


def _number(node: ET.Element, tag: str, path: Path, where: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise ValueError(f"{path}:{where} lacks <{tag.replace('/', '><')}>")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}:{where} <{tag.replace('/', '><')}> is {text.strip()!r}, not a number") from None


def coco_dict(images: list[dict], annotations: list[dict], names: list[str]) -> dict:
    """A COCO detection json with category ids 1..len(names)."""
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)]}
