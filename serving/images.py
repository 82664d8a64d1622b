"""Image bytes -> BGR uint8 array, for any image Pillow reads, with clear errors for bad input."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs included)


class BadImage(ValueError):
    """The bytes are not an image this reader accepts; the message says why."""


def load_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP/TIFF/... (RGBA, grey, palette and 16-bit too), honour EXIF rotation."""
    if not data:
        raise BadImage("empty image: the request carried no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w == 0 or h == 0:
                raise BadImage(f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise BadImage(f"image is {w}x{h} = {w * h:,} pixels, more than the {max_pixels:,} allowed: "
                               "send a smaller image")
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not an image (or a format Pillow cannot read): send JPEG, PNG, WebP, BMP or TIFF") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"image is damaged or truncated: {exc}") from exc
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255, 0, 255).astype(np.uint8)
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
