"""Images as a viewer shows them: the one place where files, PIL images, arrays and tensors
become 8-bit RGB pixels, for training, evaluation and prediction alike.

Rules (``load_image`` for files, ``to_rgb8`` for PIL images, ``load_rgb`` for everything):

* EXIF orientation: files are turned upright (``PIL.ImageOps.exif_transpose``) before anything
  else, so sizes, boxes and drawings are in the frame a viewer shows. PIL images passed in
  memory are taken as they are (their ``size`` is the frame).
* 16-bit values: grayscale 16-bit images (PIL modes ``I;16*`` and ``I``, clipped to 0..65535)
  and uint16 arrays are scaled to 8 bits by ``round(v / 257)`` (0..65535 -> 0..255). Pillow
  itself decodes 16-bit RGB(A) PNGs to their high byte (``v // 256``, within 1 of ``v / 257``).
* Alpha (RGBA, LA, palette or colour-key transparency, HxWx4 arrays): composited over the
  opaque ``ALPHA_BACKGROUND`` (white), as an image viewer on a white page shows it.
* Array / tensor values (``array_to_uint8``): uint8 0..255, uint16 0..65535 (scaled as above),
  float in [0, 1]; anything else (other integer types, floats outside [0, 1], NaN, inf) is
  refused with a ValueError naming the dtype and the observed range.

Also here: ``resized_hw``, DETR's resize rule, shared by ``Detector.prepare`` and the data
transforms.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

ImageLike = str | Path | Image.Image | np.ndarray | Tensor

ALPHA_BACKGROUND = (255, 255, 255)   # RGB under transparent pixels
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})   # files taken as images
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(ValueError):
    """A file that exists but cannot be decoded (corrupt, unsupported, or over PIL's
    decompression-bomb limit ``Image.MAX_IMAGE_PIXELS``)."""


def load_image(path: str | Path) -> Image.Image:
    """Image file -> upright 8-bit RGB PIL image (module rules). Raises FileNotFoundError when
    ``path`` is not a file and ``ImageReadError`` (a ValueError) naming it when it cannot be
    decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} not found")
    try:
        with Image.open(path) as im:
            return to_rgb8(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"image {str(path)!r} is too large to decode safely: {_one_line(e)}") from e
    except FileNotFoundError as e:  # removed between the check and the read
        raise FileNotFoundError(f"image file {str(path)!r} not found") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(f"cannot read image {str(path)!r} (corrupt or unsupported): {_one_line(e)}") from e


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB (16-bit gray scaled, alpha over ``ALPHA_BACKGROUND``, other
    modes by PIL's ``convert("RGB")``)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)           # [H, W]
        image = Image.fromarray(array_to_uint8(values.astype(np.uint16)))      # mode L
    if image.has_transparency_data:
        background = Image.new("RGBA", image.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def array_to_uint8(values: np.ndarray) -> np.ndarray:
    """Pixel values -> uint8 of the same shape: uint8 as is, uint16 ``round(v / 257)``, float
    in [0, 1] ``round(255 v)``. Other dtypes and out-of-range floats raise ValueError."""
    kind, bits = values.dtype.kind, 8 * values.dtype.itemsize
    if kind == "u" and bits == 8:
        return values
    if kind == "u" and bits == 16:
        return np.rint(values / 257.0).astype(np.uint8)
    if kind == "f":
        if not np.isfinite(values).all():
            raise ValueError(f"float{bits} image has NaN or inf values; expected floats in [0, 1]")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"float{bits} image values span [{lo:g}, {hi:g}]; expected floats in [0, 1] "
                             "(pass uint8 for 0..255 values)")
        return np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    span = f" span [{values.min()}, {values.max()}]" if kind in "biu" else ""
    raise ValueError(f"unsupported image dtype {values.dtype}{span}; expected uint8 (0..255), uint16 "
                     "(0..65535) or float in [0, 1]")


def array_to_rgb(array: np.ndarray) -> Tensor:
    """HxW or HxWx1 (gray), HxWx3 (RGB) or HxWx4 (RGBA) array -> uint8 [3, H, W] (module rules)."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image array, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image array has no pixels (shape {array.shape})")
    values = np.ascontiguousarray(array_to_uint8(array))
    if values.ndim == 2 or values.shape[2] == 1:
        values = np.repeat(values.reshape(values.shape[:2] + (1,)), 3, axis=2)  # [H, W] -> [H, W, 3]
    elif values.shape[2] == 4:
        values = np.asarray(to_rgb8(Image.fromarray(values)))                 # RGBA [H, W, 4] -> [H, W, 3]
    return torch.from_numpy(np.array(values, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def load_rgb(image: ImageLike) -> Tensor:
    """A path, PIL image, array (``array_to_rgb``) or tensor ([3, H, W], [1, H, W] or [H, W];
    dtypes as arrays) -> uint8 [3, H, W] RGB."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(to_rgb8(image), dtype=np.uint8, copy=True)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    if isinstance(image, Tensor):
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[0] in (1, 3))):
            raise ValueError(f"expected a [3, H, W], [1, H, W] or [H, W] image tensor, got shape {tuple(image.shape)}")
        x = image.detach().cpu()
        x = x.float() if x.dtype == torch.bfloat16 else x                       # numpy has no bfloat16
        return array_to_rgb(x.numpy() if x.ndim == 2 else x.permute(1, 2, 0).numpy())
    raise TypeError(f"unsupported image type {type(image).__name__}; expected a path, PIL image, "
                    "numpy array or tensor")


def resized_hw(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) -> the resized (h, w) of DETR's resize rule: scale the shorter side to
    ``min_size``; if the longer side would then exceed ``max_size``, the shorter side becomes
    ``max_size * short / long`` rounded to the nearest integer (halves to even) instead. The
    longer side follows the aspect ratio, rounded down. So the longer side can overshoot
    ``max_size`` by up to half the aspect ratio (long / short), as official.

    Extreme aspect ratios (e.g. 340:1), where the shorter side comes out at 1 px (or under),
    get a 1 px shorter side and the longer side capped at ``max_size``: aspect not kept.

    Computed exactly on integers. Equal to the official float arithmetic while sides and sizes
    stay under 2**26: a float quotient is then never within its rounding error of a rounding
    boundary without being exactly on it, and on it both give the same sizes."""
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize an image of {h}x{w} (h x w) pixels")
    short, long = sorted((h, w))
    new_short = min_size
    if long * min_size > max_size * short:                                # longer side over the cap
        new_short = max(1, round(Fraction(max_size * short, long)))
    new_long = new_short * long // short
    if new_short == 1:
        new_long = min(new_long, max_size)
    return (new_long, new_short) if h > w else (new_short, new_long)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
