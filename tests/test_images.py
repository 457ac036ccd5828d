"""Images load as a viewer shows them, in data, eval and predict alike: EXIF orientation
applied, 16-bit scaled to 8 bits, alpha composited over white, COCO sizes checked upright."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

import codetr
from codetr.data.coco import CocoDetection
from codetr.data.transforms import eval_transforms
from codetr.detector import InputSpec
from codetr.images import ALPHA_BACKGROUND, ImageReadError, load_image, load_rgb

RED, BLUE = (255, 0, 0), (0, 0, 255)
ORIENTATION = 0x0112


def write_rotated(path, orientation=6):
    """A 3x2 (w x h) blue image with a red top-left pixel as stored, tagged with ``orientation``
    (6: a viewer turns it 90 degrees clockwise, to 2x3 with the red pixel top-right)."""
    im = Image.new("RGB", (3, 2), BLUE)
    im.putpixel((0, 0), RED)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    im.save(path, exif=exif)
    return path


def write_png16(path, values, color_type):
    """A 16-bit PNG (Pillow cannot write 16-bit RGB): ``values`` [H, W, C] uint16, color_type
    0 gray, 2 RGB, 6 RGBA."""
    h, w = values.shape[:2]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_exif_orientation_is_applied_to_png(tmp_path):
    image = load_image(write_rotated(tmp_path / "r.png"))
    assert image.mode == "RGB" and image.size == (2, 3)
    assert image.getpixel((1, 0)) == RED and image.getpixel((0, 0)) == BLUE


def test_exif_orientation_is_applied_to_jpeg(tmp_path):
    im = Image.new("RGB", (32, 16), BLUE)
    im.paste(RED, (0, 0, 16, 8))     # stored: red top-left quadrant
    exif = Image.Exif()
    exif[ORIENTATION] = 8            # a viewer turns it 90 degrees counter-clockwise
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb = load_rgb(tmp_path / "r.jpg")
    assert rgb.shape == (3, 32, 16)
    bottom_left = rgb[:, 16:, :8].float().mean((1, 2))
    assert bottom_left[0] > 200 and bottom_left[2] < 60


def test_sixteen_bit_gray_png_is_scaled_not_white(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 30000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I;16")
    rgb = load_rgb(tmp_path / "g.png")
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 1, 4)
    assert rgb[0, 0].tolist() == [0, 100, 255, 117] and (rgb == rgb[:1]).all()


def test_sixteen_bit_rgb_png_is_scaled(tmp_path):
    values = np.zeros((2, 3, 3), dtype=np.uint16)
    values[..., 0], values[..., 1], values[..., 2] = 1000, 30000, 65535
    rgb = load_rgb(write_png16(tmp_path / "c.png", values, color_type=2))
    expected = torch.tensor([1000, 30000, 65535]) / 257
    assert ((rgb[:, 0, 0].float() - expected).abs() <= 1).all()


def test_alpha_is_composited_over_the_background(tmp_path):
    im = Image.new("RGBA", (3, 1), (0, 0, 0, 0))        # transparent black
    im.putpixel((1, 0), (255, 0, 0, 255))                # opaque red
    im.putpixel((2, 0), (0, 0, 255, 128))                # half-transparent blue
    im.save(tmp_path / "a.png")
    pixels = load_rgb(tmp_path / "a.png")[:, 0].T.tolist()
    assert ALPHA_BACKGROUND == (255, 255, 255)
    assert pixels[0] == [255, 255, 255] and pixels[1] == [255, 0, 0]
    assert abs(pixels[2][0] - 127) <= 1 and pixels[2][2] == 255


def test_sixteen_bit_rgba_png_is_scaled_and_composited(tmp_path):
    values = np.zeros((1, 2, 4), dtype=np.uint16)
    values[0, 0] = (30000, 30000, 30000, 65535)
    values[0, 1] = (0, 0, 0, 0)
    rgb = load_rgb(write_png16(tmp_path / "ca.png", values, color_type=6))
    assert ((rgb[:, 0, 0].float() - 30000 / 257).abs() <= 1).all() and rgb[:, 0, 1].tolist() == [255] * 3


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png")


def write_coco(root, width, height):
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "r.png", "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 0, 1, 1]}],
        "categories": [{"id": 1, "name": "red"}]}))
    return root / "annotations.json"


def test_coco_dataset_loads_upright_images_and_checks_the_upright_size(tmp_path):
    write_rotated(tmp_path / "r.png")
    dataset = CocoDetection(write_coco(tmp_path, width=2, height=3), tmp_path)
    image, target = dataset[0]
    assert image.size == (2, 3) and image.getpixel((1, 0)) == RED and target.size == (3, 2)
    assert torch.equal(pil_to_tensor(image), load_rgb(tmp_path / "r.png"))   # data == predict
    stored_frame = CocoDetection(write_coco(tmp_path, width=3, height=2), tmp_path)
    with pytest.raises(ValueError, match=r"r.png.*2x3.*upright.*3x2.*swapped"):
        stored_frame[0]


def test_eval_transforms_see_the_upright_image(tmp_path):
    write_rotated(tmp_path / "r.png")
    dataset = CocoDetection(write_coco(tmp_path, 2, 3), tmp_path, eval_transforms(InputSpec(mean=(0, 0, 0), std=(1, 1, 1), min_size=6, max_size=100)))
    x, target = dataset[0]
    assert x.shape == (3, 9, 6) and target.size == (9, 6)
    assert x[0, 0, -1] > 0.9 and x[2, 0, -1] < 0.1   # red moved to the top-right


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return codetr.create("fcos_tiny", num_classes=1).eval()


def test_predict_sees_the_upright_image(model, tmp_path):
    path = write_rotated(tmp_path / "r.png")
    images, sizes, orig = model.prepare([path])
    assert orig == [(3, 2)] and sizes[0, 0] > sizes[0, 1]
    assert len(model.predict(path)) == 1


def test_predict_files_draws_on_the_upright_image(model, tmp_path):
    from codetr.engine.predict import predict_files

    write_rotated(tmp_path / "r.png")
    predict_files(model, [tmp_path / "r.png"], tmp_path / "out", score_threshold=1.1)
    drawn = Image.open(tmp_path / "out" / "r.png")
    assert drawn.size == (2, 3) and drawn.convert("RGB").getpixel((1, 0)) == RED
