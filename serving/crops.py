"""Plate crops: the reader stage sees each plate cut out with a margin and enlarged to a fixed size.

The same function cuts crops for training (with jitter standing in for the detector's box errors) and
for inference, so both stages always agree on the geometry.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

MARGIN = (0.08, 0.18)  # extra width and height around the plate box, as fractions of its width and height
PAD_VALUE = (114, 114, 114)


def crop_box(box: Sequence[float], margin: Sequence[float] = MARGIN) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return (x1 - margin[0] * w, y1 - margin[1] * h, x2 + margin[0] * w, y2 + margin[1] * h)


def crop_plate(img: np.ndarray, box: Sequence[float], size: Sequence[int],
               margin: Sequence[float] = MARGIN) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Cut the plate at box (x1, y1, x2, y2) with a margin, scaled to fit size (w, h) at the top-left corner
    and padded with grey. Returns the crop and (scale, x0, y0): crop = (image - (x0, y0)) * scale."""
    x0, y0, x1, y1 = crop_box(box, margin)
    out_w, out_h = int(size[0]), int(size[1])
    scale = min(out_w / max(x1 - x0, 1e-3), out_h / max(y1 - y0, 1e-3))
    matrix = np.float32([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
    interp = cv2.INTER_AREA if scale < 0.8 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(img, matrix, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=PAD_VALUE)
    return crop, (float(scale), float(x0), float(y0))


def to_crop(boxes: np.ndarray, transform: tuple[float, float, float]) -> np.ndarray:
    """Image boxes (N, 4) to crop coordinates."""
    scale, x0, y0 = transform
    return (np.asarray(boxes, np.float32).reshape(-1, 4) - np.float32([x0, y0, x0, y0])) * scale


def to_image(boxes: np.ndarray, transform: tuple[float, float, float]) -> np.ndarray:
    """Crop boxes (N, 4) back to image coordinates."""
    scale, x0, y0 = transform
    return np.asarray(boxes, np.float32).reshape(-1, 4) / scale + np.float32([x0, y0, x0, y0])
