"""Plate crops: the reader stage sees each plate cut out with a margin and enlarged to a fixed size.

The same function cuts crops for training (with jitter standing in for the detector's box errors) and
for inference, so both stages always agree on the geometry.

A crop is either stretched to fill the reader's input (`fill=True`, what the presets export: two-row plates,
about 1.9:1, would otherwise use 60% of a 256x96 crop's width, one-row plates 76% of its height) or scaled
to fit it with its aspect kept and padded with grey (`fill=False`, models exported before filling).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

MARGIN = (0.08, 0.18)  # extra width and height around the plate box, as fractions of its width and height
PAD_VALUE = (114, 114, 114)

Transform = tuple[float, float, float, float]  # (scale x, scale y, x0, y0): crop = (image - (x0, y0)) * scale


def crop_box(box: Sequence[float], margin: Sequence[float] = MARGIN) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return (x1 - margin[0] * w, y1 - margin[1] * h, x2 + margin[0] * w, y2 + margin[1] * h)


def crop_plate(img: np.ndarray, box: Sequence[float], size: Sequence[int], fill: bool = True,
               margin: Sequence[float] = MARGIN) -> tuple[np.ndarray, Transform]:
    """Cut the plate at box (x1, y1, x2, y2) with a margin at size (w, h): stretched to fill it, or (fill=False)
    scaled to fit at the top-left corner and padded with grey. Returns the crop and its transform."""
    x0, y0, sx, sy = _geometry(box, size, fill, margin)
    out_w, out_h = int(size[0]), int(size[1])
    source, ox, oy = _smoothed(img, (x0, y0, x0 + out_w / sx, y0 + out_h / sy), sx, sy)
    matrix = np.float32([[sx, 0, -(x0 - ox) * sx], [0, sy, -(y0 - oy) * sy]])
    crop = cv2.warpAffine(source, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=PAD_VALUE)
    return crop, (float(sx), float(sy), float(x0), float(y0))


def _geometry(box: Sequence[float], size: Sequence[int], fill: bool, margin: Sequence[float]):
    """The crop's top-left corner in the image and its scales: (x0, y0, sx, sy)."""
    x0, y0, x1, y1 = crop_box(box, margin)
    sx, sy = int(size[0]) / max(x1 - x0, 1e-3), int(size[1]) / max(y1 - y0, 1e-3)
    if not fill:
        sx = sy = min(sx, sy)
    return x0, y0, sx, sy


def read_window(box: Sequence[float], size: Sequence[int], fill: bool = True,
                margin: Sequence[float] = MARGIN) -> tuple[int, int, int, int]:
    """The image pixels crop_plate reads for box (x1, y1, x2, y2: the smoothing window and the bilinear samples'
    neighbours included), before clipping to the image: a crop cut from any part of the image that holds them,
    or reaches the image's edge where they do not fit, is the same crop."""
    x0, y0, sx, sy = _geometry(box, size, fill, margin)
    pad = _smoothing(sx, sy)[2] + 1
    x1, y1 = x0 + int(size[0]) / sx, y0 + int(size[1]) / sy
    return int(np.floor(x0)) - pad, int(np.floor(y0)) - pad, int(np.ceil(x1)) + pad, int(np.ceil(y1)) + pad


def _smoothing(sx: float, sy: float) -> tuple[float, float, int]:
    """The Gaussian's sigmas (x, y) that antialias a shrink by (sx, sy), as skimage's rescale does, and the
    window's pad around the area (0 where there is nothing to smooth)."""
    sig_x, sig_y = max(0.0, (1 / sx - 1) / 2), max(0.0, (1 / sy - 1) / 2)
    if sig_x < 0.1 and sig_y < 0.1:
        return sig_x, sig_y, 0
    return sig_x, sig_y, int(3 * max(sig_x, sig_y)) + 2


def _smoothed(img: np.ndarray, area: Sequence[float], sx: float, sy: float) -> tuple[np.ndarray, int, int]:
    """What warpAffine should sample for a crop of `area` at scales (sx, sy): where it shrinks, the area
    smoothed first, since warpAffine samples bilinearly (its INTER_AREA is bilinear too) and a plate's thin
    strokes would alias away. Returns the source and its offset in img."""
    sig_x, sig_y, pad = _smoothing(sx, sy)
    if not pad:
        return img, 0, 0
    x0, y0 = max(0, int(np.floor(area[0])) - pad), max(0, int(np.floor(area[1])) - pad)
    x1, y1 = min(img.shape[1], int(np.ceil(area[2])) + pad), min(img.shape[0], int(np.ceil(area[3])) + pad)
    if x1 <= x0 or y1 <= y0:
        return img, 0, 0
    kx, ky = (2 * int(np.ceil(3 * s)) + 1 if s >= 0.1 else 1 for s in (sig_x, sig_y))
    return cv2.GaussianBlur(img[y0:y1, x0:x1], (kx, ky), max(sig_x, 1e-3), sigmaY=max(sig_y, 1e-3)), x0, y0


def to_crop(boxes: np.ndarray, transform: Transform) -> np.ndarray:
    """Image boxes (N, 4) to crop coordinates."""
    sx, sy, x0, y0 = transform
    return (np.asarray(boxes, np.float32).reshape(-1, 4) - np.float32([x0, y0, x0, y0])) * np.float32([sx, sy, sx, sy])


def to_image(boxes: np.ndarray, transform: Transform) -> np.ndarray:
    """Crop boxes (N, 4) back to image coordinates."""
    sx, sy, x0, y0 = transform
    return np.asarray(boxes, np.float32).reshape(-1, 4) / np.float32([sx, sy, sx, sy]) + np.float32([x0, y0, x0, y0])
