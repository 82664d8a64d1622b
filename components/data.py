"""Data step: synthetic Korean-style licence plates drawn on photos, written as a COCO data set.

Each image holds zero to three plates. A plate is rendered flat (its own colours, frame, bolts and
glyphs, one glyph at a time so every character box is tight), then warped into the photo with mild
perspective and rotation; the boxes follow the same warp. Photometric damage (lighting, blur, noise,
JPEG) is applied to the whole image afterwards.

Layouts (the original project's plate types):
  r_board  two rows: "NN X" over "NNNN"      (Korean 335x170 mm plate)
  l_board  one row:  "NN X  NNNN"            (Korean 520x110 mm plate)

Annotations: every plate (r_board/l_board, with its text in "text"), its two text regions (sub_text =
region digits + class letter, main_text = serial) and every character. Output layout:

  OUT/images/000123.jpg
  OUT/{train,val,test}.json      COCO, categories in serving.labels.CLASSES order
  OUT/dataset.json               seed, counts, fingerprint

Generation is deterministic for a seed whatever the number of worker processes: image i draws from
its own random stream seeded by (seed, i).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from serving.labels import CLASSES, DIGITS, LETTERS, category_id

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val", "test")

# Plate colours: (background, text). The original project's grey, light grey, yellow and blue, then more.
PLATE_COLOURS = [
    ((128, 128, 128), (20, 20, 20)),      # grey
    ((200, 200, 200), (10, 10, 10)),      # light grey
    ((40, 200, 230), (15, 15, 15)),       # yellow (BGR)
    ((160, 80, 20), (245, 245, 245)),     # blue, white text
    ((245, 245, 245), (15, 15, 15)),      # white
    ((60, 120, 40), (240, 240, 240)),     # green, white text (older plates)
    ((30, 140, 240), (10, 10, 10)),       # orange
    ((235, 235, 225), (120, 50, 20)),     # off-white, dark blue text
]
HERSHEY_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
                 cv2.FONT_HERSHEY_TRIPLEX)
# Real plate proportions (width / height) of the whole plate.
ASPECT = {"r_board": 335 / 170, "l_board": 520 / 110}
DISTRACTOR_CHARS = "FGHJKLMNPRSTUVWXYZ#%&+-"


@dataclass(frozen=True)
class DataSpec:
    """What to generate. Sizes are pixels of the image's long side and of the plate's width."""

    n_images: int = 2000
    seed: int = 0
    min_size: int = 640
    max_size: int = 1280
    plate_width_min: int = 80
    plate_width_max: int = 400
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    backgrounds: str | None = None
    empty_fraction: float = 0.06  # images with no plate at all

    @classmethod
    def from_config(cls, data, **changes) -> "DataSpec":
        """From the `data` section of the run configuration; `changes` (not None) win."""
        spec = cls(n_images=data.n_images, seed=data.seed, min_size=data.min_size, max_size=data.max_size,
                   plate_width_min=data.plate_width_min, plate_width_max=data.plate_width_max,
                   split=(data.split_train, data.split_val, data.split_test), backgrounds=data.backgrounds)
        return dataclasses.replace(spec, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> None:
        problems = []
        if self.n_images < 1:
            problems.append(f"n_images must be at least 1, got {self.n_images}")
        if not 64 <= self.min_size <= self.max_size:
            problems.append(f"need 64 <= min_size <= max_size, got {self.min_size}..{self.max_size}")
        if not 24 <= self.plate_width_min <= self.plate_width_max:
            problems.append(f"need 24 <= plate_width_min <= plate_width_max, got "
                            f"{self.plate_width_min}..{self.plate_width_max}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            problems.append(f"split must be three fractions summing to 1, got {self.split}")
        if self.backgrounds and not Path(self.backgrounds).is_dir():
            problems.append(f"backgrounds folder not found: {self.backgrounds}")
        if problems:
            raise ValueError("bad data settings: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- fonts

def font_files() -> list[str]:
    """TrueType fonts shipped with matplotlib (a dependency), so every machine draws the same plates."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    ttf = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"
    names = ("DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans.ttf",
             "DejaVuSansMono.ttf")
    return [str(ttf / n) for n in names if (ttf / n).exists()]


def font_choices() -> list[tuple[str, object]]:
    return [("hershey", f) for f in HERSHEY_FONTS] + [("ttf", f) for f in font_files()]


@lru_cache(maxsize=512)
def glyph_mask(kind: str, font: object, char: str, weight: int) -> np.ndarray:
    """The ink of one character, cropped tight, about 96 px high (uint8, 255 = ink)."""
    size = 96
    canvas = np.zeros((size * 2, size * 2), np.uint8)
    if kind == "hershey":
        scale = cv2.getFontScaleFromHeight(font, size, weight)
        cv2.putText(canvas, char, (size // 3, int(size * 1.5)), font, scale, 255, weight, cv2.LINE_AA)
    else:
        img = Image.fromarray(canvas)
        pil_font = ImageFont.truetype(str(font), int(size * 1.3))
        ImageDraw.Draw(img).text((size // 3, size // 6), char, fill=255, font=pil_font,
                                 stroke_width=max(0, weight - 2), stroke_fill=255)
        canvas = np.asarray(img)
    ys, xs = np.nonzero(canvas > 40)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()


# ---------------------------------------------------------------------------------------------- plates

@dataclass
class FlatPlate:
    """A plate drawn flat: its picture and boxes (x1, y1, x2, y2) in the picture's own pixels."""

    kind: str
    text: str
    image: np.ndarray  # BGR
    chars: list[tuple[str, tuple[float, float, float, float]]]
    regions: dict[str, tuple[float, float, float, float]]


def random_plate_text(rng: np.random.Generator) -> str:
    digits = rng.choice(list(DIGITS), size=6)
    return "".join(digits[:2]) + str(rng.choice(list(LETTERS))) + "".join(digits[2:])


def _union(boxes: Sequence[tuple[float, float, float, float]], pad: float) -> tuple[float, ...]:
    arr = np.asarray(boxes, dtype=np.float64)
    return (arr[:, 0].min() - pad, arr[:, 1].min() - pad, arr[:, 2].max() + pad, arr[:, 3].max() + pad)


def render_plate(rng: np.random.Generator, kind: str, text: str, width: int) -> FlatPlate:
    """Draw one plate `width` pixels wide. `text` is like "38D4831"."""
    height = max(12, int(round(width / ASPECT[kind] * rng.uniform(0.92, 1.08))))
    bg, fg = PLATE_COLOURS[rng.integers(len(PLATE_COLOURS))]
    bg = np.clip(np.array(bg) + rng.integers(-18, 19, 3), 0, 255)
    fg = np.clip(np.array(fg) + rng.integers(-15, 16, 3), 0, 255)
    plate = np.empty((height, width, 3), np.float32)
    plate[:] = bg
    # a soft vertical shading, like a stamped metal plate
    plate *= np.linspace(rng.uniform(0.85, 1.05), rng.uniform(0.9, 1.1), height)[:, None, None]
    frame = max(1, int(round(height * rng.uniform(0.02, 0.05))))
    if rng.random() < 0.85:
        cv2.rectangle(plate, (0, 0), (width - 1, height - 1), tuple(float(c) for c in fg * 0.8), frame)
    if rng.random() < 0.6:  # bolts
        r = max(1, height // 22)
        bolt_y = int(height * (0.15 if kind == "r_board" else 0.5))
        for bx in (int(width * 0.07), int(width * 0.93)) if kind == "l_board" else (int(width * 0.2), int(width * 0.8)):
            cv2.circle(plate, (bx, bolt_y), r, tuple(float(c) * 0.6 for c in bg), -1, cv2.LINE_AA)

    kind_font, font = font_choices()[rng.integers(len(font_choices()))]
    weight = int(rng.integers(2, 5)) if kind_font == "hershey" else int(rng.integers(1, 4))
    condense = rng.uniform(0.75, 1.05)
    margin_x = width * rng.uniform(0.05, 0.09)
    if kind == "l_board":
        rows = [(text, height * 0.5, height * rng.uniform(0.58, 0.72), margin_x, width - margin_x, 3)]
    else:
        top_h = height * rng.uniform(0.26, 0.32)
        bottom_h = height * rng.uniform(0.44, 0.52)
        rows = [(text[:3], height * 0.25, top_h, width * 0.22, width * 0.78, None),
                (text[3:], height * 0.66, bottom_h, margin_x, width - margin_x, None)]
    ink = np.zeros((height, width), np.float32)
    chars: list[tuple[str, tuple[float, float, float, float]]] = []
    for row_text, cy, ch, x_start, x_end, gap_after in rows:
        masks = [glyph_mask(kind_font, font, c, weight) for c in row_text]
        widths = [max(1, int(round(m.shape[1] * ch / m.shape[0] * condense))) for m in masks]
        gap_unit = ch * rng.uniform(0.12, 0.25)
        gaps = [gap_unit * (2.5 if gap_after is not None and i == gap_after - 1 else 1.0)
                for i in range(len(row_text) - 1)]
        total = sum(widths) + sum(gaps)
        span = x_end - x_start
        if total > span:  # squeeze to fit the plate
            factor = span / total
            widths = [max(1, int(w * factor)) for w in widths]
            gaps = [g * factor for g in gaps]
            total = sum(widths) + sum(gaps)
        x = x_start + (span - total) / 2 + rng.uniform(-0.2, 0.2) * (span - total)
        glyph_h = max(4, int(round(ch)))
        y0 = int(round(cy - glyph_h / 2))
        for i, (c, m, w) in enumerate(zip(row_text, masks, widths)):
            x0 = int(round(x))
            glyph = cv2.resize(m, (w, glyph_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            ys, xs = np.nonzero(glyph > 0.25)
            x1c, y1c = max(0, x0), max(0, y0)
            x2c, y2c = min(width, x0 + w), min(height, y0 + glyph_h)
            ink[y1c:y2c, x1c:x2c] = np.maximum(ink[y1c:y2c, x1c:x2c],
                                               glyph[y1c - y0:y2c - y0, x1c - x0:x2c - x0])
            box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            chars.append((c, tuple(float(v) for v in box)))
            x += w + (gaps[i] if i < len(gaps) else 0)
    plate = plate * (1 - ink[..., None]) + fg.astype(np.float32) * ink[..., None]
    pad = height * 0.03
    regions = {"sub_text": _union([b for _, b in chars[:3]], pad),
               "main_text": _union([b for _, b in chars[3:]], pad)}
    return FlatPlate(kind, text, np.clip(plate, 0, 255).astype(np.uint8), chars, regions)


# ---------------------------------------------------------------------------------------------- scenes

def procedural_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A cheap street-ish scene: smooth colour field, texture, blocks, lines and stray marks."""
    small = (max(2, w // 16), max(2, h // 16))
    field = rng.uniform(20, 235, (2, 2, 3)).astype(np.float32)
    img = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
    noise = cv2.resize(rng.normal(0, rng.uniform(5, 30), (small[1], small[0], 3)).astype(np.float32),
                       (w, h), interpolation=cv2.INTER_CUBIC)
    img += noise
    for _ in range(int(rng.integers(3, 14))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x1, y1 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x2, y2 = x1 + int(rng.integers(w // 20, w // 2)), y1 + int(rng.integers(h // 20, h // 2))
        shape = rng.random()
        if shape < 0.5:
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, -1 if rng.random() < 0.7 else int(rng.integers(1, 6)))
        elif shape < 0.75:
            box = (((x1 + x2) / 2, (y1 + y2) / 2), (abs(x2 - x1), abs(y2 - y1)), float(rng.uniform(0, 180)))
            cv2.ellipse(img, box, colour, -1)
        else:
            cv2.line(img, (x1, y1), (x2, y2), colour, int(rng.integers(1, 8)), cv2.LINE_AA)
    img = np.clip(img, 0, 255).astype(np.uint8)  # OpenCV 5 draws text on 8-bit images only
    for _ in range(int(rng.integers(0, 4))):  # text that is not a plate
        s = "".join(rng.choice(list(DISTRACTOR_CHARS), size=int(rng.integers(2, 7))))
        scale = rng.uniform(0.4, 2.0)
        cv2.putText(img, s, (int(rng.integers(0, w)), int(rng.integers(10, h))), HERSHEY_FONTS[rng.integers(4)],
                    scale, tuple(int(c) for c in rng.uniform(0, 255, 3)), int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


@lru_cache(maxsize=1)
def _background_files(folder: str) -> tuple[str, ...]:
    files = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in backgrounds folder {folder}")
    return tuple(files)


def photo_background(rng: np.random.Generator, folder: str, w: int, h: int) -> np.ndarray:
    files = _background_files(folder)
    path = files[rng.integers(len(files))]
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read background image {path}: remove it or convert it to JPEG/PNG")
    scale = max(w / img.shape[1], h / img.shape[0]) * rng.uniform(1.0, 1.4)
    img = cv2.resize(img, (max(w, int(img.shape[1] * scale)), max(h, int(img.shape[0] * scale))))
    x, y = int(rng.integers(0, img.shape[1] - w + 1)), int(rng.integers(0, img.shape[0] - h + 1))
    out = img[y:y + h, x:x + w]
    return cv2.flip(out, 1) if rng.random() < 0.5 else out.copy()


def _warp(rng: np.random.Generator, pw: int, ph: int, cx: float, cy: float) -> np.ndarray:
    """Homography from flat plate pixels to the image: rotation, mild perspective, centred at (cx, cy)."""
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    angle = math.radians(rng.normal(0, 3.0))
    jitter = rng.uniform(-0.06, 0.06, (4, 2)) * np.float32([pw * 0.5, ph])
    corners = src - np.float32([pw / 2, ph / 2]) + jitter.astype(np.float32)
    rot = np.float32([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = corners @ rot.T + np.float32([cx, cy])
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def _map_box(hom: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    pts = cv2.perspectiveTransform(np.float32([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]]), hom)[0]
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def _paste(img: np.ndarray, plate: np.ndarray, hom: np.ndarray) -> None:
    """Warp the plate into img in place, touching only the plate's bounding rectangle."""
    h, w = plate.shape[:2]
    x1, y1, x2, y2 = _map_box(hom, (0, 0, w, h))
    x1, y1 = max(0, int(math.floor(x1)) - 1), max(0, int(math.floor(y1)) - 1)
    x2, y2 = min(img.shape[1], int(math.ceil(x2)) + 1), min(img.shape[0], int(math.ceil(y2)) + 1)
    shift = np.array([[1, 0, -x1], [0, 1, -y1], [0, 0, 1]], np.float64) @ hom
    size = (x2 - x1, y2 - y1)
    warped = cv2.warpPerspective(plate, shift, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.full((h, w), 255, np.uint8), shift, size, flags=cv2.INTER_LINEAR)
    a = alpha.astype(np.float32)[..., None] / 255
    roi = img[y1:y2, x1:x2]
    roi[:] = (warped * a + roi * (1 - a)).astype(np.uint8)


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    # lighting: a smooth gain field plus global contrast/brightness (OpenCV's per-pixel arithmetic and normal
    # noise: a third of the time numpy's took, which was most of the data step)
    gain = cv2.resize(rng.uniform(0.6, 1.3, (2, 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    gain *= np.float32(rng.uniform(0.8, 1.15))
    out = cv2.multiply(img.astype(np.float32), cv2.merge([gain, gain, gain]))
    offset = float(rng.uniform(-25, 25))
    if rng.random() < 0.5:
        sigma = float(rng.uniform(2, 9))
        cv2.setRNGSeed(int(rng.integers(2 ** 31)))  # the noise is drawn from the image's own seed, as the rest
        noise = np.empty_like(out)
        cv2.randn(noise, offset, sigma)
        out += noise
    else:
        out += np.float32(offset)
    out = np.clip(out, 0, 255, out=out).astype(np.uint8)
    blur = rng.random()
    if blur < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.3))
    elif blur < 0.4:  # motion blur
        k = int(rng.integers(3, 7))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1)
        out = cv2.filter2D(out, -1, cv2.warpAffine(kernel, rot, (k, k)))
    return out


def _place(rng: np.random.Generator, taken: list[tuple[float, ...]], w: int, h: int, pw: int, ph: int):
    """A plate centre whose rotated footprint stays inside the image and off the other plates."""
    reach_x, reach_y = pw * 0.62 + 0.15 * ph, ph * 0.75 + 0.1 * pw
    if reach_x * 2 >= w or reach_y * 2 >= h:
        return None
    for _ in range(30):
        cx, cy = rng.uniform(reach_x, w - reach_x), rng.uniform(reach_y, h - reach_y)
        box = (cx - reach_x, cy - reach_y, cx + reach_x, cy + reach_y)
        if all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken):
            taken.append(box)
            return cx, cy
    return None


def render_image(spec: DataSpec, index: int) -> tuple[np.ndarray, list[dict]]:
    """Image `index` of the data set and its objects: dicts of label, bbox (x1, y1, x2, y2) and plate text."""
    rng = np.random.default_rng([spec.seed, index])
    long_side = int(rng.integers(spec.min_size, spec.max_size + 1))
    aspect = rng.choice([4 / 3, 16 / 9, 3 / 2, 1.0, 3 / 4])
    w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    img = photo_background(rng, spec.backgrounds, w, h) if spec.backgrounds else procedural_background(rng, w, h)
    n_plates = 0 if rng.random() < spec.empty_fraction else int(rng.choice([1, 1, 1, 1, 2, 2, 3]))
    objects: list[dict] = []
    taken: list[tuple[float, ...]] = []
    pasted: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n_plates):
        kind = "r_board" if rng.random() < 0.5 else "l_board"
        # log-uniform widths: as many small plates as large ones
        pw = int(round(math.exp(rng.uniform(math.log(spec.plate_width_min), math.log(spec.plate_width_max)))))
        pw = min(pw, int(w * 0.8))
        if kind == "r_board":
            pw = max(spec.plate_width_min, int(pw * 0.75))  # a two-row plate is narrower for the same reading size
        flat = render_plate(rng, kind, random_plate_text(rng), pw)
        ph = flat.image.shape[0]
        centre = _place(rng, taken, w, h, pw, ph)
        if centre is None:
            continue
        hom = _warp(rng, pw, ph, *centre)
        if rng.random() < 0.5:  # a car body behind the plate
            bx1, by1, bx2, by2 = _map_box(hom, (-pw * 0.8, -ph * 1.2, pw * 1.8, ph * 1.6))
            cv2.rectangle(img, (int(bx1), int(by1)), (int(bx2), int(by2)),
                          tuple(float(c) for c in rng.uniform(0, 255, 3)), -1)
        pasted.append((flat.image, hom))
        plate_box = _map_box(hom, (0, 0, pw, ph))
        objects.append({"label": kind, "bbox": plate_box, "text": flat.text})
        for region, box in flat.regions.items():
            objects.append({"label": region, "bbox": _map_box(hom, box), "text": flat.text[:3] if region == "sub_text" else flat.text[3:]})
        for char, box in flat.chars:
            objects.append({"label": char, "bbox": _map_box(hom, box)})
    # plates go on after every car body: a later plate's body must not paint over an earlier, labelled plate
    for plate, hom in pasted:
        _paste(img, plate, hom)
    img = _photometric(rng, img)
    for obj in objects:  # keep every box inside the image
        x1, y1, x2, y2 = obj["bbox"]
        obj["bbox"] = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    return img, objects


def _jpeg_quality(spec: DataSpec, index: int) -> int:
    return int(np.random.default_rng([spec.seed, index, 1]).integers(55, 96))


def _make_one(args: tuple[DataSpec, int, str]) -> dict:
    spec, index, image_dir = args
    img, objects = render_image(spec, index)
    name = f"{index:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _jpeg_quality(spec, index)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for image {index}")
    Path(image_dir, name).write_bytes(buf.tobytes())
    return {"index": index, "file_name": f"images/{name}", "width": img.shape[1], "height": img.shape[0],
            "objects": objects}


# ---------------------------------------------------------------------------------------------- COCO

def coco_categories() -> list[dict]:
    def supercategory(name: str) -> str:
        if name.endswith("_board"):
            return "plate"
        return "region" if name.endswith("_text") else "character"
    return [{"id": category_id(c), "name": c, "supercategory": supercategory(c)} for c in CLASSES]


def to_coco(records: Iterable[dict]) -> dict:
    images, annotations = [], []
    for rec in records:
        image_id = rec["index"] + 1
        images.append({"id": image_id, "file_name": rec["file_name"], "width": rec["width"], "height": rec["height"]})
        for obj in rec["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id(obj["label"]),
                   "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                   "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0}
            if "text" in obj:
                ann["text"] = obj["text"]
            annotations.append(ann)
    return {"info": {"description": "platepipe synthetic plates"}, "images": images, "annotations": annotations,
            "categories": coco_categories()}


def split_of(spec: DataSpec) -> list[str]:
    """The split of every image index: a seeded shuffle cut by the fractions."""
    order = np.random.default_rng([spec.seed, 7]).permutation(spec.n_images)
    n_train = int(round(spec.split[0] * spec.n_images))
    n_val = int(round(spec.split[1] * spec.n_images))
    names = [""] * spec.n_images
    for rank, index in enumerate(order):
        names[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return names


def fingerprint(folder: str | Path) -> str:
    """sha256 over the annotation files and image bytes of a written data set (short hex)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in SPLITS:
        h.update((folder / f"{name}.json").read_bytes())
    for path in sorted((folder / "images").iterdir()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def generate(out_dir: str | Path, spec: DataSpec, workers: int | None = None, progress: bool = True) -> dict:
    """Write the data set to out_dir (images/, train/val/test COCO JSON, dataset.json); return its summary.

    Files are written to a temporary sibling folder and moved into place at the end, so an interrupted
    run never leaves a half-written data set behind.
    """
    spec.check()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: choose a new --out folder or delete it")
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(spec, i, str(tmp / "images")) for i in range(spec.n_images)]
    bar = _progress(spec.n_images, "rendering plates", progress)
    records = []
    try:
        if workers == 1:
            for job in jobs:
                records.append(_make_one(job))
                bar.update(1)
        else:
            with Pool(workers) as pool:
                for rec in pool.imap_unordered(_make_one, jobs, chunksize=8):
                    records.append(rec)
                    bar.update(1)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    records.sort(key=lambda r: r["index"])
    splits = split_of(spec)
    counts = {}
    for name in SPLITS:
        subset = [r for r in records if splits[r["index"]] == name]
        (tmp / f"{name}.json").write_text(json.dumps(to_coco(subset)))
        counts[name] = len(subset)
    summary = {"source": "synthetic", "seed": spec.seed, "n_images": spec.n_images, "splits": counts,
               "plates": sum(1 for r in records for o in r["objects"] if o["label"].endswith("_board")),
               "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()},
               "classes": list(CLASSES), "fingerprint": fingerprint(tmp)}
    (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return summary


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- preview

_COLOURS = {"plate": (60, 220, 60), "region": (255, 160, 0), "character": (40, 40, 255)}


def preview(data_dir: str | Path, out_png: str | Path, split: str = "train", count: int = 8) -> Path:
    """A contact sheet: each row one image with its plates boxed, then each plate enlarged with every
    character box and label drawn, so a person can check the labels at a glance."""
    data_dir = Path(data_dir)
    coco = json.loads((data_dir / f"{split}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    rows = []
    row_h, crop_h = 300, 150
    for info in coco["images"][:count]:
        img = cv2.imread(str(data_dir / info["file_name"]))
        anns = by_image.get(info["id"], [])
        scale = row_h / img.shape[0]
        thumb = cv2.resize(img, (max(1, int(img.shape[1] * scale)), row_h), interpolation=cv2.INTER_AREA)
        tiles = [thumb]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            name = names[ann["category_id"]]
            if name.endswith("_board"):
                cv2.rectangle(thumb, (int(x * scale), int(y * scale)), (int((x + w) * scale), int((y + h) * scale)),
                              _COLOURS["plate"], 2)
                tiles.append(_plate_tile(img, ann, anns, names, crop_h))
        if not anns:
            cv2.putText(thumb, "no plate", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 255), 2, cv2.LINE_AA)
        rows.append(np.concatenate([_pad_h(t, row_h) for t in tiles], axis=1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), sheet)
    return out_png


def _pad_h(tile: np.ndarray, h: int) -> np.ndarray:
    out = np.full((h, tile.shape[1] + 6, 3), 255, np.uint8)
    out[:tile.shape[0], :tile.shape[1]] = tile[:h]
    return out


def _plate_tile(img: np.ndarray, plate: dict, anns: list[dict], names: dict, crop_h: int) -> np.ndarray:
    x, y, w, h = plate["bbox"]
    m = 0.15 * max(w, h)
    x1, y1 = max(0, int(x - m)), max(0, int(y - m))
    x2, y2 = min(img.shape[1], int(x + w + m)), min(img.shape[0], int(y + h + m))
    scale = crop_h / max(1, y2 - y1)
    crop = cv2.resize(img[y1:y2, x1:x2], (max(1, int((x2 - x1) * scale)), crop_h), interpolation=cv2.INTER_CUBIC)
    for ann in anns:
        ax, ay, aw, ah = ann["bbox"]
        if not (ax >= x - 1 and ay >= y - 1 and ax + aw <= x + w + 1 and ay + ah <= y + h + 1):
            continue
        name = names[ann["category_id"]]
        kind = "plate" if name.endswith("_board") else "region" if name.endswith("_text") else "character"
        p1 = (int((ax - x1) * scale), int((ay - y1) * scale))
        p2 = (int((ax + aw - x1) * scale), int((ay + ah - y1) * scale))
        cv2.rectangle(crop, p1, p2, _COLOURS[kind], 1)
        if kind == "character":
            cv2.putText(crop, name, (p1[0], p2[1] + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _COLOURS[kind], 1, cv2.LINE_AA)
    label = f"{names[plate['category_id']]} {plate.get('text', '')}"
    header = np.full((24, crop.shape[1], 3), 255, np.uint8)
    cv2.putText(header, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, crop])
