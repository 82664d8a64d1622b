"""Image bytes -> BGR uint8 array, for any image Pillow reads, with clear errors for bad input."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs included)


class BadImage(ValueError):
    """The bytes are not an image this reader accepts; the message says why."""


# bytes per pixel while load_image decodes an image of this mode: Pillow's own buffer, then the arrays it makes
# (16-bit grey: a uint32 copy, 8-bit grey, RGB; alpha: RGBA twice for compositing), RGB and the BGR copy
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4, "RGB": 3, "YCbCr": 3,
                    "LAB": 3, "HSV": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4, "LA": 2, "PA": 2}
_EXTRA = {"I;16": 8, "I;16B": 8, "I;16L": 8, "I": 8, "RGBA": 8, "LA": 8, "P": 8, "PA": 8}


@contextlib.contextmanager
def _reading(data: bytes):
    """Pillow's errors while opening or decoding data, as BadImage sentences."""
    if not data:
        raise BadImage("empty image: the request carried no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not an image (or a format Pillow cannot read): send JPEG, PNG, WebP, BMP or TIFF") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"image is damaged or truncated: {exc}") from exc


def image_header(data: bytes) -> tuple[int, int, str]:
    """(width, height, mode) from the image's header, without decoding it; BadImage when there is none."""
    with _reading(data):
        img = Image.open(io.BytesIO(data))
        return img.size[0], img.size[1], img.mode


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Memory load_image needs at its peak for an image of this size and mode, in bytes."""
    return width * height * (_BYTES_PER_PIXEL.get(mode, 4) + _EXTRA.get(mode, 0) + 6)


def load_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP/TIFF/... (RGBA, grey, palette and 16-bit too), honour EXIF rotation."""
    with _reading(data):
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w == 0 or h == 0:
            raise BadImage(f"image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise BadImage(f"image is {w}x{h} = {w * h:,} pixels, more than the {max_pixels:,} allowed: "
                           "send a smaller image")
        img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.clip(np.asarray(img), 0, None).astype(np.uint32)
        top = 65535 if arr.max() > 255 else 255
        grey = np.minimum(arr * 255 // top, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def read_image_file(path) -> np.ndarray:
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise BadImage(f"{path}: no such file")
    try:
        return load_image(path.read_bytes())
    except BadImage as exc:
        raise BadImage(f"{path}: {exc}") from None
