"""``codetr data check | show | import`` on tiny hand-made datasets (seconds, CPU)."""
import json
import logging

import pytest
from PIL import Image

from codetr.cli import main
from codetr.data.coco import CocoDetection


def error_line(caplog) -> str:
    """The one ERROR line the command line logged."""
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "\n" not in line
    return line


def write_image(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


@pytest.fixture
def broken(tmp_path):
    """A dataset root whose val split has one problem of each kind."""
    root = tmp_path / "broken"
    for name in ("a.png", "b.png", "c.png", "e.png"):
        write_image(root / "val" / name)
    (root / "val" / "c.png").write_bytes(b"not an image")
    images = [{"id": i, "file_name": f, "width": 40, "height": 30}
              for i, f in enumerate(["a.png", "b.png", "c.png", "d.png", "e.png"], start=1)]
    images.append({"id": 5, "file_name": "e.png", "width": 40, "height": 30})        # duplicate image id
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 4]},          # w <= 0
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [30, 20, 20, 20]},      # outside
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [1, 1, 3, 3]},          # unknown category
            {"id": 4, "image_id": 3, "category_id": 2, "bbox": [1, 1, 30, 25]},        # duplicate ann id
            {"id": 6, "image_id": 4, "category_id": 2, "bbox": [1, 1, 3, 3]}]          # d.png is missing
    write_json(root / "annotations" / "instances_val.json",
               {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]})
    return root


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    assert main(["data", "synth", str(root), "--train", "3", "--val", "2", "--size", "64"]) == 0
    return root


def test_check_of_a_clean_dataset(shapes, capsys):
    assert main(["data", "check", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out and "no problems found" in out
    assert "boxes: small" in out and "box side sqrt(area), px:" in out and "circle" in out


def test_check_counts_and_names_each_problem(broken, capsys):
    assert main(["data", "check", str(broken)]) == 1
    out = capsys.readouterr().out
    expected = {"box with w or h <= 0: 1": "annotation id 2", "box outside the image: 1": "annotation id 3",
                "unknown category id: 1": "category_id 9", "duplicate annotation id: 1": "annotation id 4",
                "duplicate image id: 1": "image id 5", "missing image: 1": "d.png", "corrupt image: 1": "c.png",
                "image without annotations (note): 1": "e.png"}
    for heading, example in expected.items():
        assert heading in out, heading
        assert example in out.split(heading)[1].splitlines()[1], heading
    assert "8 problems found" not in out and "7 problems found" in out   # the note does not count
    assert "cat                         2            2" in out   # images, annotations of class 'cat'


def test_check_of_one_json_without_decoding(broken, capsys):
    assert main(["data", "check", str(broken / "annotations" / "instances_val.json"), "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert "val: 6 images" in out and "missing image" not in out


@pytest.mark.parametrize("make, message", [
    (lambda root: root, "no such dataset folder or annotation file"),
    (lambda root: (root.mkdir(), root)[1], "no annotations/instances_<split>.json"),
    (lambda root: (write_json(root / "annotations" / "instances_val.json", {"images": []}), root)[1],
     "'annotations' is missing"),
    (lambda root: ((root.parent / "x.json").write_text("{oops"), root.parent / "x.json")[1], "malformed json"),
])
def test_check_of_bad_input_is_one_line(tmp_path, caplog, make, message):
    assert main(["data", "check", str(make(tmp_path / "ds"))]) == 2
    assert message in error_line(caplog)


def test_show_draws_ground_truth_and_refuses_a_used_folder(shapes, tmp_path, caplog):
    out = tmp_path / "drawn"
    assert main(["data", "show", str(shapes), "--out", str(out), "--num", "1"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["train/000000.png", "val/000000.png"]
    original = Image.open(shapes / "val" / "000000.png").convert("RGB")
    drawn = Image.open(out / "val" / "000000.png").convert("RGB")
    assert drawn.size == original.size and drawn.tobytes() != original.tobytes()
    assert main(["data", "show", str(shapes), "--out", str(out)]) == 2
    assert "--force" in error_line(caplog) and str(out) in error_line(caplog)
    assert main(["data", "show", str(shapes), "--out", str(out), "--num", "2", "--force"]) == 0
    assert len(list(out.rglob("*.png"))) == 4


# ---- import yolo -----------------------------------------------------------------------------
def yolo_dataset(root, labels: dict[str, str], names_file="data.yaml"):
    for stem in ("a", "b", "c"):
        write_image(root / "images" / "train" / f"{stem}.jpg", size=(100, 50))
    for stem, text in labels.items():
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    if names_file == "data.yaml":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: person\n  1: car\n")
    else:
        (root / "classes.txt").write_text("person\ncar\n")
    return root


@pytest.mark.parametrize("names_file", ["data.yaml", "classes.txt"])
def test_import_yolo_boxes_and_polygons(tmp_path, capsys, names_file):
    src = yolo_dataset(tmp_path / "yolo", {"a": "0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.1 0.2\n",
                                           "b": "1 0.1 0.1 0.3 0.1 0.3 0.5\n", "c": ""}, names_file)
    out = tmp_path / "train.json"
    assert main(["data", "import", "yolo", str(src / "images" / "train"), str(out)]) == 0
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("a.jpg", 100, 50), ("b.jpg", 100, 50), ("c.jpg", 100, 50)]
    first, _, polygon = coco["annotations"]
    assert first["bbox"] == pytest.approx([40, 15, 20, 20]) and first["category_id"] == 1
    assert polygon["bbox"] == pytest.approx([10, 5, 20, 20]) and polygon["area"] == pytest.approx(200)
    assert polygon["segmentation"] == [pytest.approx([10, 5, 30, 5, 30, 25])]
    assert "data.train_images=" in capsys.readouterr().out
    dataset = CocoDetection(out, src / "images" / "train")   # loads as training will
    assert len(dataset) == 3 and len(dataset[0][1].boxes) == 2
    assert main(["data", "check", str(out), "--images", str(src / "images" / "train")]) == 0


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "a.txt:2: expected 'class x_center y_center width height'"),
    ("0 0.5 abc 0.2 0.2", "a.txt:2: field 3 'abc' is not a number"),
    ("7 0.5 0.5 0.2 0.2", "a.txt:2: class '7' is not a class index 0..1"),
    ("0 0.5 0.5 1.5 0.2", "a.txt:2: field 4 is 1.5; YOLO coordinates are normalised to [0, 1]"),
])
def test_import_yolo_bad_line_names_file_and_line(tmp_path, caplog, line, message):
    src = yolo_dataset(tmp_path / "yolo", {"a": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    assert main(["data", "import", "yolo", str(src), str(tmp_path / "o.json")]) == 2
    assert message in error_line(caplog)
    assert not (tmp_path / "o.json").exists()


def test_import_yolo_without_class_names_or_images(tmp_path, caplog):
    src = yolo_dataset(tmp_path / "yolo", {})
    (src / "data.yaml").unlink()
    assert main(["data", "import", "yolo", str(src), str(tmp_path / "o.json")]) == 2
    assert "no data.yaml or classes.txt" in error_line(caplog)
    caplog.clear()
    (tmp_path / "empty").mkdir()
    assert main(["data", "import", "yolo", str(tmp_path / "empty"), str(tmp_path / "o.json"),
                 "--classes", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in error_line(caplog)


def test_import_refuses_an_existing_output(tmp_path, caplog):
    src = yolo_dataset(tmp_path / "yolo", {"a": "0 0.5 0.5 0.2 0.2\n"})
    out = tmp_path / "mine.json"
    out.write_text("my notes")
    assert main(["data", "import", "yolo", str(src), str(out)]) == 2
    assert "mine.json" in error_line(caplog) and "--force" in error_line(caplog)
    assert out.read_text() == "my notes"
    assert main(["data", "import", "yolo", str(src), str(out), "--force"]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == 1


# ---- import voc ------------------------------------------------------------------------------
def voc_xml(objects: str, filename="a.jpg", size="<size><width>100</width><height>50</height></size>") -> str:
    return f"<annotation><filename>{filename}</filename>{size}{objects}</annotation>"


def voc_object(name, box=(11, 6, 30, 25), difficult=0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def voc_dataset(root, xmls: dict[str, str]):
    (root / "Annotations").mkdir(parents=True)
    for stem, text in xmls.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        write_image(root / "JPEGImages" / f"{stem}.jpg", size=(100, 50))
    return root


def test_import_voc(tmp_path):
    src = voc_dataset(tmp_path / "voc", {
        "a": voc_xml(voc_object("dog") + voc_object("cat", (1, 1, 10, 10), difficult=1)),
        "b": voc_xml(voc_object("dog"), filename="b.jpg", size="")})   # no <size>: read from the image
    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    out = tmp_path / "voc.json"
    assert main(["data", "import", "voc", str(src), str(out)]) == 0
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    dog, cat, _ = coco["annotations"]
    assert dog["bbox"] == [10, 5, 20, 20] and dog["category_id"] == 2 and dog["iscrowd"] == 0
    assert cat["iscrowd"] == 1   # difficult: ignored by COCO AP
    assert coco["images"][1] == {"id": 2, "file_name": "b.jpg", "width": 100, "height": 50}
    assert main(["data", "import", "voc", str(src), str(tmp_path / "val.json"), "--split", "val"]) == 0
    assert [i["file_name"] for i in json.loads((tmp_path / "val.json").read_text())["images"]] == ["b.jpg"]
    assert main(["data", "check", str(out), "--images", str(src / "JPEGImages")]) == 0


@pytest.mark.parametrize("xml, extra, message", [
    (voc_xml(voc_object("cat")), ["--classes", "CLASSES"], "a.xml: object 1 has class name 'cat', which is not in"),
    (voc_xml(voc_object("dog").replace("<ymax>25</ymax>", "")), [], "a.xml: object 1 lacks <bndbox><ymax>"),
    (voc_xml(voc_object("dog", (1, "x1", 5, 5))), [], "a.xml: object 1 <bndbox><ymin> is 'x1', not a number"),
    ("<annotation><object>", [], "a.xml: malformed XML at line 1"),
])
def test_import_voc_bad_input_names_file_and_field(tmp_path, caplog, xml, extra, message):
    src = voc_dataset(tmp_path / "voc", {"a": xml})
    (tmp_path / "classes.txt").write_text("dog\nbird\n")
    extra = [str(tmp_path / "classes.txt") if e == "CLASSES" else e for e in extra]
    assert main(["data", "import", "voc", str(src), str(tmp_path / "o.json"), *extra]) == 2
    assert message in error_line(caplog)
