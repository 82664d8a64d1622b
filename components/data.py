"""Data step: synthetic Korean-style licence plates drawn on real photos, written as a COCO data set.

Each image holds zero to three plates, drawn in one of the styles below, on a photo (real photographs that
platepipe's dependencies ship, or the user's own folder) or, for a share of the images, a procedural scene. A plate
is rendered flat (one glyph at a time, so every character box is tight), then warped into the photo; the boxes
follow the same warp. Camera damage (lighting, night, glare, low contrast, blur, noise, JPEG) is applied to the
whole image afterwards.

Styles:
  stamped       plates like metal ones: a frame, bolts, shading, TrueType or Hershey fonts, eight colours,
                perspective and tilt
  original      the original project's boards (HibernationNo1/project_4_kubeflow_pipeline, tmp_code/draw_board.py):
                flat, no frame or bolts, its four colours, black Hershey Duplex text written with cv2.putText at
                its positions, sizes and spacing, up to half the photo wide and more, placed on a 4x4 grid,
                some see-through, some images blended with a second photo (montage)
  unseen-fonts  stamped plates in fonts that the training styles never use: kept out of training, it tells
                whether the reader reads characters or learned its fonts (an out-of-distribution set)

Layouts (the original project's plate types):
  r_board  two rows: "NN X" over "NNNN"      (Korean 335x170 mm plate)
  l_board  one row:  "NN X  NNNN"            (Korean 520x110 mm plate)

Annotations: every plate (r_board/l_board, with its text in "text"), its two text regions (sub_text =
region digits + class letter, main_text = serial) and every character. Output layout:

  OUT/images/000123.jpg
  OUT/{train,val,test}.json      COCO, categories in serving.labels.CLASSES order
  OUT/dataset.json               seed, counts, styles, fingerprint
  OUT/ood/NAME/...               the out-of-distribution sets (same layout, all images in test.json)

Photos are split into a training pool and a held-out pool (by a hash of each file's name, so the split is
the same everywhere): training images use the first, the out-of-distribution sets the second, so those sets
are photos the model never saw. The shipped photos come from scikit-image and scikit-learn (SHIPPED_PHOTOS).

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
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from platepipe.components.styles import OOD_SETS
from platepipe.pipeline.config import DataConfig
from platepipe.serving.labels import CLASSES, DIGITS, LETTERS, category_id

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
# TrueType fonts shipped with matplotlib: those the training styles draw with, and those kept for the
# unseen-fonts set
TRAIN_TTF = ("DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans.ttf",
             "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf")
UNSEEN_TTF = ("STIXGeneralBol.ttf", "cmss10.ttf", "cmb10.ttf", "cmtt10.ttf")
UNSEEN_HERSHEY = (cv2.FONT_HERSHEY_PLAIN,)
# Real plate proportions (width / height) of the whole plate.
ASPECT = {"r_board": 335 / 170, "l_board": 520 / 110}
DISTRACTOR_CHARS = "FGHJKLMNPRSTUVWXYZ#%&+-"

# The original project's boards: its BGR colours (black text on each) and, per plate type, its two sizes as
# drawn (draw_board.py draws a rectangle from centre - (width, height) to centre + (width, height), so its
# 200x100 "s" board is 400x200 px) with each text line's putText origin from the board's left and top,
# fontScale and thickness (fontFace 2, Hershey Duplex; the serial line of a two-row board one scale larger).
ORIGINAL_COLOURS = ((128, 128, 128), (211, 211, 211), (100, 212, 255), (255, 212, 100))
ORIGINAL_BOARDS = {
    "r_board": ((400, 200, ((105, 70, 2.5, 3), (63, 180, 3.5, 3))),
                (600, 300, ((140, 120, 4.0, 5), (95, 270, 5.0, 5)))),
    "l_board": ((420, 80, ((-10, 60, 2.0, 3),)),
                (600, 120, ((-20, 87, 2.9, 5),))),
}

def ood_settings(spec: DataConfig, name: str, n_images: int) -> DataConfig:
    """The settings of out-of-distribution set `name`: spec's sizes and photos, another seed, the held-out photo
    pool, the set's own styles and settings, every image in its test split."""
    changes = {k: v for k, v in OOD_SETS[name].items() if k != "about"}
    return dataclasses.replace(spec, n_images=n_images, seed=spec.seed + 1000 + sorted(OOD_SETS).index(name),
                               split_train=0.0, split_val=0.0, split_test=1.0, photo_pool="held-out", **changes)


def check_backgrounds(spec: DataConfig) -> None:
    """What the configuration cannot check where it is written: the backgrounds folder, here where it is read."""
    if spec.backgrounds not in (None, "procedural") and not Path(spec.backgrounds).is_dir():
        raise ValueError(f"bad data settings: backgrounds folder not found: {spec.backgrounds} (give a folder of "
                         f"photos, 'procedural', or leave it unset for the shipped photos)")


# ---------------------------------------------------------------------------------------------- fonts

def _ttf_dir() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


def font_files(names: Sequence[str] = TRAIN_TTF) -> list[str]:
    """TrueType fonts shipped with matplotlib (a dependency), so every machine draws the same plates."""
    ttf = _ttf_dir()
    return [str(ttf / n) for n in names if ttf and (ttf / n).exists()]


def font_choices(unseen: bool = False) -> list[tuple[str, object]]:
    """The fonts a style draws with: the training ones, or (unseen) the ones no training style uses."""
    if unseen:
        return [("hershey", f) for f in UNSEEN_HERSHEY] + [("ttf", f) for f in font_files(UNSEEN_TTF)]
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
    alpha: float = 1.0  # how opaque it is pasted (the original style's see-through boards are less)


def random_plate_text(rng: np.random.Generator) -> str:
    digits = rng.choice(list(DIGITS), size=6)
    return "".join(digits[:2]) + str(rng.choice(list(LETTERS))) + "".join(digits[2:])


def _union(boxes: Sequence[tuple[float, float, float, float]], pad: float) -> tuple[float, ...]:
    arr = np.asarray(boxes, dtype=np.float64)
    return (arr[:, 0].min() - pad, arr[:, 1].min() - pad, arr[:, 2].max() + pad, arr[:, 3].max() + pad)


def _regions(chars: list, height: float) -> dict[str, tuple[float, ...]]:
    pad = height * 0.03
    return {"sub_text": _union([b for _, b in chars[:3]], pad), "main_text": _union([b for _, b in chars[3:]], pad)}


def render_plate(rng: np.random.Generator, kind: str, text: str, width: int, unseen_fonts: bool = False) -> FlatPlate:
    """Draw one stamped plate `width` pixels wide. `text` is like "38D4831". unseen_fonts: in the fonts that
    no training style uses."""
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

    fonts = font_choices(unseen_fonts)
    kind_font, font = fonts[rng.integers(len(fonts))]
    weight = int(rng.integers(2, 5)) if kind_font == "hershey" else int(rng.integers(1, 4))
    condense = rng.uniform(0.75, 1.05)
    # a slant and a heavier or lighter stroke now and then: more letterforms than the fonts alone draw
    shear = float(rng.uniform(-0.2, 0.2)) if rng.random() < 0.25 else 0.0
    stroke = int(rng.choice([-1, 0, 0, 0, 1]))
    margin_x = width * rng.uniform(0.05, 0.09)
    if kind == "l_board":
        rows = [(text, height * 0.5, height * rng.uniform(0.58, 0.72), margin_x, width - margin_x, 3)]
    else:
        top_h = height * rng.uniform(0.24, 0.30)  # the rows a little apart: 0.40 and 0.42 of the height at most
        bottom_h = height * rng.uniform(0.42, 0.50)
        rows = [(text[:3], height * 0.25, top_h, width * 0.22, width * 0.78, None),
                (text[3:], height * 0.67, bottom_h, margin_x, width - margin_x, None)]
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
            glyph, shift = _styled_glyph(m, w, glyph_h, shear, stroke)
            x0 = int(round(x)) - shift
            ys, xs = np.nonzero(glyph > (0.5 if glyph.max() > 0.5 else 0.0))  # pixels at least half inked
            x1c, y1c = max(0, x0), max(0, y0)
            x2c, y2c = min(width, x0 + glyph.shape[1]), min(height, y0 + glyph_h)
            ink[y1c:y2c, x1c:x2c] = np.maximum(ink[y1c:y2c, x1c:x2c],
                                               glyph[y1c - y0:y2c - y0, x1c - x0:x2c - x0])
            box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            chars.append((c, tuple(float(v) for v in box)))
            x += w + (gaps[i] if i < len(gaps) else 0)
    plate = plate * (1 - ink[..., None]) + fg.astype(np.float32) * ink[..., None]
    return FlatPlate(kind, text, np.clip(plate, 0, 255).astype(np.uint8), chars, _regions(chars, height))


def _styled_glyph(mask: np.ndarray, w: int, h: int, shear: float, stroke: int) -> tuple[np.ndarray, int]:
    """A glyph mask resized to w x h (ink 0-1), its stroke thickened (stroke 1) or thinned (-1) where it is
    tall enough to keep its shape, slanted by `shear` (x moves by shear x height from the baseline); and how many
    columns it grew on the left, to keep it centred where it was."""
    glyph = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA)
    if stroke and h >= 20:
        op = cv2.dilate if stroke > 0 else cv2.erode
        thinner = op(glyph, np.ones((2, 2), np.uint8))
        glyph = thinner if (thinner > 64).sum() > 0.3 * (glyph > 64).sum() else glyph
    shift = 0
    if shear:
        pad = int(math.ceil(abs(shear) * h))
        shift = pad // 2
        m = np.float32([[1, -shear, pad if shear > 0 else 0], [0, 1, 0]])
        glyph = cv2.warpAffine(glyph, m, (w + pad, h), flags=cv2.INTER_LINEAR)
    return glyph.astype(np.float32) / 255, shift


def original_lines(kind: str, text: str) -> list[str]:
    """The text lines the original project writes on a board: "NN X" over "NNNN", or " NN X  NNNN"."""
    if kind == "r_board":
        return [f"{text[:2]} {text[2]}", text[3:]]
    return [f" {text[:2]} {text[2]}  {text[3:]}"]


def render_original(rng: np.random.Generator, kind: str, text: str, width: int, board: int | None = None) -> FlatPlate:
    """Draw one board as the original project does, `width` pixels wide: a flat rectangle in one of its four
    colours, black Hershey Duplex text from cv2.putText at its origins, scales and thicknesses (all scaled by
    width / its board's width), aliased as putText draws it. Half the boards are drawn at one of the original's
    own sizes and resized to `width`, as a photo the original drew on would be when it is made smaller.
    Character boxes come from the ink each character adds to the line (putText's own spacing). board: which of
    the original's sizes (0 or 1; None: either)."""
    pick = int(rng.integers(len(ORIGINAL_BOARDS[kind])))
    board_w, board_h, lines = ORIGINAL_BOARDS[kind][pick if board is None else board]
    native = rng.random() < 0.5 and width < board_w
    k = 1.0 if native else width / board_w
    bw, bh = int(round(board_w * k)), int(round(board_h * k))
    colour = np.array(ORIGINAL_COLOURS[rng.integers(len(ORIGINAL_COLOURS))], np.uint8)
    ink = np.zeros((bh, bw), np.uint8)
    chars: list[tuple[str, tuple[float, float, float, float]]] = []
    for line, (x, y, scale, thickness) in zip(original_lines(kind, text), lines):
        org = (int(round(x * k)), int(round(y * k)))
        font_scale, weight = scale * k, max(1, int(round(thickness * k)))
        before = np.zeros_like(ink)
        for end in range(1, len(line) + 1):  # each prefix of the line: the new ink is the last character's
            if line[end - 1] == " ":
                continue
            now = np.zeros_like(ink)
            cv2.putText(now, line[:end], org, cv2.FONT_HERSHEY_DUPLEX, font_scale, 255, weight)
            ys, xs = np.nonzero((now > 0) & (before == 0))
            before = now
            if len(xs):
                chars.append((line[end - 1], (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))
        ink |= before
    board = np.empty((bh, bw, 3), np.uint8)
    board[:] = colour
    board[ink > 0] = 0
    if native:
        f = width / bw
        board = cv2.resize(board, (width, max(4, int(round(bh * f)))), interpolation=cv2.INTER_AREA)
        f_y = board.shape[0] / bh
        chars = [(c, (b[0] * f, b[1] * f_y, b[2] * f, b[3] * f_y)) for c, b in chars]
    if len(chars) != 7:  # a character too small to leave ink of its own: no plate a person could read either
        raise ValueError(f"board {width} px wide too small for its text")
    alpha = float(rng.uniform(0.45, 0.9)) if rng.random() < 0.25 else 1.0
    return FlatPlate(kind, text, board, chars, _regions(chars, board.shape[0]), alpha)


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
    _distractor_text(rng, img)
    return img


def _distractor_text(rng: np.random.Generator, img: np.ndarray) -> None:
    """Text that is not a plate: letters the plates never use, in the plates' own fonts."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        s = "".join(rng.choice(list(DISTRACTOR_CHARS), size=int(rng.integers(2, 7))))
        scale = rng.uniform(0.4, 2.0)
        cv2.putText(img, s, (int(rng.integers(0, w)), int(rng.integers(10, h))), HERSHEY_FONTS[rng.integers(4)],
                    scale, tuple(int(c) for c in rng.uniform(0, 255, 3)), int(rng.integers(1, 4)), cv2.LINE_AA)


# Real photographs shipped inside two PyPI packages platepipe installs (no download at run time), each with its
# licence as the package states it. Neither holds street scenes; random crops, scales and mirroring of these
# and the procedural scenes make up the variety.
SHIPPED_PHOTOS = (
    ("skimage", "data/astronaut.png", "public domain (NASA)"),
    ("skimage", "data/brick.png", "CC0 (CC0Textures)"),
    ("skimage", "data/camera.png", "CC0 (Lav Varshney)"),
    ("skimage", "data/chelsea.png", "CC0 (Stefan van der Walt)"),
    ("skimage", "data/coffee.png", "CC0 (Rachel Michetti)"),
    ("skimage", "data/coins.png", "no known copyright restrictions"),
    ("skimage", "data/grass.png", "CC0 (CC0Textures)"),
    ("skimage", "data/gravel.png", "CC0 (CC0Textures)"),
    ("skimage", "data/rocket.jpg", "public domain (SpaceX)"),
    ("skimage", "data/text.png", "public domain"),
    ("sklearn", "datasets/images/china.jpg", "CC BY 2.0, danielbuechele (Flickr)"),
    ("sklearn", "datasets/images/flower.jpg", "CC BY 2.0, vultilion (Flickr)"),
)


def shipped_photos() -> tuple[str, ...]:
    """The shipped photos' paths, found without importing their packages; () where neither is installed."""
    found = []
    for package, rel, _ in SHIPPED_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]) / rel
            if path.is_file():
                found.append(str(path))
    return tuple(found)


@lru_cache(maxsize=8)
def _background_files(folder: str) -> tuple[str, ...]:
    files = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in backgrounds folder {folder}")
    return tuple(files)


def photo_pool(files: Sequence[str], pool: str) -> tuple[str, ...]:
    """The photos of `files` in `pool` ("train", "held-out" or "all"). The held-out pool is the fifth of the
    photos (at least one, where there are two or more) whose file names hash lowest: fixed by the names alone,
    so a photo keeps its pool from run to run and machine to machine."""
    files = tuple(files)
    if pool == "all" or len(files) < 2:
        return files
    ranked = sorted(files, key=lambda f: hashlib.sha256(Path(f).name.encode()).hexdigest())
    out = set(ranked[:math.ceil(len(files) / 5)])
    return tuple(f for f in files if (f in out) == (pool == "held-out"))


def photo_background(rng: np.random.Generator, files: Sequence[str], w: int, h: int) -> np.ndarray:
    """A w x h part of a photo picked at random, scaled to cover it (and up to 1.4x more), mirrored half the time."""
    path = files[rng.integers(len(files))]
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read background image {path}: remove it or convert it to JPEG/PNG")
    scale = max(w / img.shape[1], h / img.shape[0]) * rng.uniform(1.0, 1.4)
    img = cv2.resize(img, (max(w, int(img.shape[1] * scale)), max(h, int(img.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x, y = int(rng.integers(0, img.shape[1] - w + 1)), int(rng.integers(0, img.shape[0] - h + 1))
    out = img[y:y + h, x:x + w]
    return cv2.flip(out, 1) if rng.random() < 0.5 else out.copy()


def background_files(spec: DataConfig) -> tuple[str, ...]:
    """The photos spec draws on (empty: procedural scenes only); worked out once per setting and process."""
    return _pool_files(spec.backgrounds, spec.photo_pool)


@lru_cache(maxsize=8)
def _pool_files(backgrounds: str | None, pool: str) -> tuple[str, ...]:
    if backgrounds == "procedural":
        return ()
    files = shipped_photos() if backgrounds is None else _background_files(backgrounds)
    return photo_pool(files, pool)


def background(rng: np.random.Generator, spec: DataConfig, files: Sequence[str], w: int, h: int) -> np.ndarray:
    """A photo of `files`, or for spec.procedural_fraction of the images (and where there are none) a procedural
    scene."""
    if files and rng.random() >= spec.procedural_fraction:
        img = photo_background(rng, files, w, h)
        if rng.random() < 0.3:
            _distractor_text(rng, img)
        return img
    return procedural_background(rng, w, h)


def _warp(rng: np.random.Generator, pw: int, ph: int, cx: float, cy: float, flat: bool = False) -> np.ndarray:
    """Homography from flat plate pixels to the image: tilt and perspective (none where flat: the plate pasted
    square, on whole pixels, as the original project draws), centred at (cx, cy)."""
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    if flat:
        return np.array([[1, 0, round(cx - pw / 2)], [0, 1, round(cy - ph / 2)], [0, 0, 1]], np.float64)
    tilted = rng.random() < 0.2  # a camera held askew, or a plate seen from the side
    angle = math.radians(rng.uniform(-14, 14) if tilted else rng.normal(0, 3.0))
    jitter = rng.uniform(-1, 1, (4, 2)) * (0.12 if tilted else 0.06) * np.float32([pw * 0.5, ph])
    corners = src - np.float32([pw / 2, ph / 2]) + jitter.astype(np.float32)
    rot = np.float32([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = corners @ rot.T + np.float32([cx, cy])
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def _map_box(hom: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    pts = cv2.perspectiveTransform(np.float32([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]]), hom)[0]
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def _paste(img: np.ndarray, plate: np.ndarray, hom: np.ndarray, alpha: float = 1.0) -> None:
    """Warp the plate into img in place, touching only the plate's bounding rectangle (what lies past the image's
    border is cut off); alpha < 1 lets the photo show through."""
    h, w = plate.shape[:2]
    x1, y1, x2, y2 = _map_box(hom, (0, 0, w, h))
    x1, y1 = max(0, int(math.floor(x1)) - 1), max(0, int(math.floor(y1)) - 1)
    x2, y2 = min(img.shape[1], int(math.ceil(x2)) + 1), min(img.shape[0], int(math.ceil(y2)) + 1)
    if x2 <= x1 or y2 <= y1:
        return
    shift = np.array([[1, 0, -x1], [0, 1, -y1], [0, 0, 1]], np.float64) @ hom
    size = (x2 - x1, y2 - y1)
    warped = cv2.warpPerspective(plate, shift, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), shift, size, flags=cv2.INTER_LINEAR)
    a = mask.astype(np.float32)[..., None] * (alpha / 255)
    roi = img[y1:y2, x1:x2]
    roi[:] = (warped * a + roi * (1 - a)).astype(np.uint8)


LOOKS = (("night", 0.08), ("glare", 0.08), ("low-contrast", 0.12))  # shares of the images; the rest: daylight


def _look(rng: np.random.Generator) -> str:
    r, edge = rng.random(), 0.0
    for name, share in LOOKS:
        edge += share
        if r < edge:
            return name
    return "day"


def _apply_look(rng: np.random.Generator, out: np.ndarray, look: str) -> np.ndarray:
    """Night: 0.3-0.5 of the light, tinted. Glare: a soft bright patch, +80-200 at its centre. Low contrast (haze,
    a dirty lens): differences squeezed to 0.5-0.75. Each still leaves a plate a person can read."""
    h, w = out.shape[:2]
    if look == "night":
        tint = rng.uniform(0.7, 1.2, 3).astype(np.float32) * np.float32(rng.uniform(0.3, 0.5))
        return cv2.multiply(out, np.full_like(out, 1.0) * np.minimum(tint, 0.5))
    if look == "glare":
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.08, 0.35) * max(w, h)
        yy, xx = np.ogrid[:h, :w]
        patch = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))).astype(np.float32)
        return out + cv2.merge([patch, patch, patch]) * np.float32(rng.uniform(80, 200))
    if look == "low-contrast":
        c = np.float32(rng.uniform(0.5, 0.75))
        return out * c + np.float32(float(out.mean()) * (1 - c))
    return out


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """What a camera does to the whole picture: lighting, and now and then night, glare or low contrast; noise;
    focus or motion blur."""
    h, w = img.shape[:2]
    # lighting: a smooth gain field plus global contrast/brightness (OpenCV's per-pixel arithmetic and normal
    # noise: a third of the time numpy's took, which was most of the data step)
    gain = cv2.resize(rng.uniform(0.6, 1.3, (2, 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    gain *= np.float32(rng.uniform(0.8, 1.15))
    out = cv2.multiply(img.astype(np.float32), cv2.merge([gain, gain, gain]))
    offset = float(rng.uniform(-25, 25))
    look = _look(rng)
    out = _apply_look(rng, out, look)
    if look == "night":
        offset = float(rng.uniform(-5, 10))
    if rng.random() < 0.5 or look == "night":
        sigma = float(rng.uniform(2, 9)) * (1.4 if look == "night" else 1.0)
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
    elif blur < 0.42:  # motion blur (a plate a person can still read)
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1)
        out = cv2.filter2D(out, -1, cv2.warpAffine(kernel, rot, (k, k)))
    return out


def _overlaps(box, taken) -> bool:
    return not all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken)


def _place(rng: np.random.Generator, taken: list[tuple[float, ...]], w: int, h: int, pw: int, ph: int,
           grid: bool = False, border: float = 0.0):
    """A plate centre whose rotated footprint stays inside the image (but for `border` of the plate's width
    past an edge) and off the other plates; grid: near a crossing of the original project's 4x4 grid."""
    reach_x, reach_y = pw * 0.62 + 0.15 * ph, ph * 0.75 + 0.1 * pw
    lo_x, lo_y = reach_x - border * pw, reach_y
    if lo_x * 2 >= w or lo_y * 2 >= h:
        return None
    for _ in range(30):
        if grid:
            cx = w / 5 * int(rng.integers(1, 5)) + rng.normal(0, w / 40)
            cy = h / 5 * int(rng.integers(1, 5)) + rng.normal(0, h / 40)
            cx, cy = min(max(cx, lo_x), w - lo_x), min(max(cy, lo_y), h - lo_y)
        else:
            cx, cy = rng.uniform(lo_x, w - lo_x), rng.uniform(lo_y, h - lo_y)
        box = (cx - reach_x, cy - reach_y, cx + reach_x, cy + reach_y)
        if not _overlaps(box, taken):
            taken.append(box)
            return cx, cy
    return None


def _plate_width(rng: np.random.Generator, spec: DataConfig, w: int) -> int:
    """Log-uniform from plate_width_min to the smaller of plate_width_max and plate_width_max_frac of the width:
    as many small plates as large ones."""
    top = max(spec.plate_width_min, min(spec.plate_width_max, int(spec.plate_width_max_frac * w)))
    return int(round(math.exp(rng.uniform(math.log(spec.plate_width_min), math.log(top)))))


def _pick_style(rng: np.random.Generator, styles: Sequence[tuple[str, float]]) -> str:
    weights = np.array([wt for _, wt in styles], np.float64)
    return styles[int(rng.choice(len(styles), p=weights / weights.sum()))][0]


def render_image(spec: DataConfig, index: int) -> tuple[np.ndarray, list[dict], str]:
    """Image `index` of the data set, its objects (dicts of label, bbox (x1, y1, x2, y2) and plate text) and the
    style it is drawn in."""
    rng = np.random.default_rng([spec.seed, index])
    long_side = int(rng.integers(spec.min_size, spec.max_size + 1))
    aspect = rng.choice([4 / 3, 16 / 9, 3 / 2, 1.0, 3 / 4])
    w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    style = _pick_style(rng, tuple(spec.styles.items()))
    files = background_files(spec)
    img = background(rng, spec, files, w, h)
    original = style == "original"
    if rng.random() < spec.empty_fraction:
        n_plates = 0
    else:
        n_plates = int(rng.choice([1, 1, 2, 2, 3] if original else [1, 1, 1, 1, 2, 2, 3]))
    objects: list[dict] = []
    taken: list[tuple[float, ...]] = []
    pasted: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(n_plates):
        kind = "r_board" if rng.random() < 0.5 else "l_board"
        pw = min(_plate_width(rng, spec, w), int(w * 0.9))
        text = random_plate_text(rng)
        if original:
            try:
                flat = render_original(rng, kind, text, max(pw, 48 if kind == "l_board" else 32))
            except ValueError:
                continue
        else:
            if kind == "r_board":
                pw = max(spec.plate_width_min, int(pw * 0.75))  # a two-row plate is narrower for the same reading size
            flat = render_plate(rng, kind, text, pw, unseen_fonts=style == "unseen-fonts")
        ph, pw = flat.image.shape[:2]
        at_border = rng.random() < 0.1  # a plate cut off by the picture's edge (its characters still inside)
        centre = _place(rng, taken, w, h, pw, ph, grid=original and rng.random() < 0.6,
                        border=0.06 if at_border else 0.0)
        if centre is None:
            continue
        hom = _warp(rng, pw, ph, *centre, flat=original and rng.random() < 0.7)
        char_boxes = [_map_box(hom, box) for _, box in flat.chars]
        if any(b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h for b in char_boxes):
            taken.pop()
            continue
        if not original and rng.random() < 0.5:  # a car body behind the plate
            bx1, by1, bx2, by2 = _map_box(hom, (-pw * 0.8, -ph * 1.2, pw * 1.8, ph * 1.6))
            cv2.rectangle(img, (int(bx1), int(by1)), (int(bx2), int(by2)),
                          tuple(float(c) for c in rng.uniform(0, 255, 3)), -1)
        pasted.append((flat.image, hom, flat.alpha))
        objects.append({"label": kind, "bbox": _map_box(hom, (0, 0, pw, ph)), "text": flat.text})
        for region, box in flat.regions.items():
            objects.append({"label": region, "bbox": _map_box(hom, box),
                            "text": flat.text[:3] if region == "sub_text" else flat.text[3:]})
        for (char, _), box in zip(flat.chars, char_boxes):
            objects.append({"label": char, "bbox": box})
    # plates go on after every car body: a later plate's body must not paint over an earlier, labelled plate
    for plate, hom, alpha in pasted:
        _paste(img, plate, hom, alpha)
    if files and rng.random() < (0.2 if original else 0.05):  # a montage: a second photo blended over it all
        other = photo_background(rng, files, w, h)
        img = cv2.addWeighted(img, 1 - (a := float(rng.uniform(0.15, 0.4))), other, a, 0)
    img = _photometric(rng, img)
    for obj in objects:  # keep every box inside the image
        x1, y1, x2, y2 = obj["bbox"]
        obj["bbox"] = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    return img, objects, style


def _jpeg_quality(spec: DataConfig, index: int) -> int:
    return int(np.random.default_rng([spec.seed, index, 1]).integers(55, 96))


def _make_one(args: tuple[DataConfig, int, str]) -> dict:
    spec, index, image_dir = args
    img, objects, style = render_image(spec, index)
    name = f"{index:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _jpeg_quality(spec, index)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for image {index}")
    Path(image_dir, name).write_bytes(buf.tobytes())
    return {"index": index, "file_name": f"images/{name}", "width": img.shape[1], "height": img.shape[0],
            "style": style, "objects": objects}


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
        images.append({"id": image_id, "file_name": rec["file_name"], "width": rec["width"], "height": rec["height"],
                       **({"style": rec["style"]} if "style" in rec else {})})
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


def split_of(spec: DataConfig) -> list[str]:
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


def generate(out_dir: str | Path, spec: DataConfig, workers: int | None = None, progress: bool = True,
             ood_images: int = 0) -> dict:
    """Write the data set to out_dir (images/, train/val/test COCO JSON, dataset.json) and, where ood_images > 0,
    each out-of-distribution set of that many images to out_dir/ood/NAME; return the summary.

    Files are written to a temporary sibling folder and moved into place at the end, so an interrupted
    run never leaves a half-written data set behind.
    """
    check_backgrounds(spec)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: choose a new --out folder or delete it")
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        summary = _write_set(tmp, spec, workers, progress, "rendering plates")
        if ood_images:
            summary["ood"] = _write_ood_sets(tmp, spec, ood_images, workers, progress)
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
    return summary


def write_ood_sets(data_dir: str | Path, spec: DataConfig, n_images: int, workers: int | None = None,
                   progress: bool = True) -> dict:
    """Render the out-of-distribution sets beside an existing data set (a user's labelled one, say) into
    data_dir/ood, written aside and moved into place whole; return their summaries."""
    check_backgrounds(spec)
    data_dir = Path(data_dir)
    if (data_dir / "ood").exists():
        raise FileExistsError(f"{data_dir / 'ood'} exists: delete it to render the sets again")
    tmp = data_dir / f".ood.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _write_ood_sets(tmp, spec, n_images, workers, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "ood").rename(data_dir / "ood")
    tmp.rmdir()
    return summary


def _write_ood_sets(folder: Path, spec: DataConfig, n_images: int, workers: int | None, progress: bool) -> dict:
    summary = {}
    for name in OOD_SETS:
        ood = {**_write_set(folder / "ood" / name, ood_settings(spec, name, n_images), workers, progress, f"rendering {name}"),
               "about": OOD_SETS[name]["about"]}
        (folder / "ood" / name / "dataset.json").write_text(json.dumps(ood, indent=2))
        summary[name] = ood
    return summary


def _write_set(folder: Path, spec: DataConfig, workers: int | None, progress: bool, desc: str) -> dict:
    """Render spec's images into folder/images and write its three COCO splits; return its summary."""
    (folder / "images").mkdir(parents=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(spec, i, str(folder / "images")) for i in range(spec.n_images)]
    bar = _progress(spec.n_images, desc, progress)
    records = []
    try:
        if workers == 1:
            for job in jobs:
                records.append(_make_one(job))
                bar.update(1)
        else:
            # a worker that dies (killed, out of memory) fails the step with BrokenProcessPool; a
            # multiprocessing.Pool would wait for its results for ever
            try:
                with ProcessPoolExecutor(workers) as pool:
                    for rec in pool.map(_make_one, jobs, chunksize=8):
                        records.append(rec)
                        bar.update(1)
            except BrokenProcessPool:
                raise RuntimeError(f"a rendering process died ({desc}: killed, or out of memory): run the data "
                                   f"step again, with fewer workers (--workers) if memory is short") from None
    finally:
        bar.close()
    records.sort(key=lambda r: r["index"])
    splits = split_of(spec)
    counts = {}
    for name in SPLITS:
        subset = [r for r in records if splits[r["index"]] == name]
        (folder / f"{name}.json").write_text(json.dumps(to_coco(subset)))
        counts[name] = len(subset)
    plates = [o for r in records for o in r["objects"] if o["label"].endswith("_board")]
    styles = {name: sum(1 for r in records if r["style"] == name) for name in spec.styles}
    photos = background_files(spec)
    return {"source": "synthetic", "seed": spec.seed, "n_images": spec.n_images, "splits": counts,
            "plates": len(plates), "images_by_style": styles,
            "backgrounds": {"source": spec.backgrounds or "shipped photos", "pool": spec.photo_pool,
                            "photos": sorted(Path(f).name for f in photos)},
            "spec": dataclasses.asdict(spec),
            "classes": list(CLASSES), "fingerprint": fingerprint(folder)}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- preview

_COLOURS = {"plate": (60, 220, 60), "region": (255, 160, 0), "character": (40, 40, 255)}


def preview(data_dir: str | Path, out_png: str | Path, split: str = "train", count: int = 8) -> Path:
    """A contact sheet: each row one image with its plates boxed, then each plate enlarged with every
    character box and label drawn, so a person can check the labels at a glance. The rows take turns over the
    styles of the split, then one image of each out-of-distribution set (data_dir/ood/NAME) follows; each row
    is headed by its style or set."""
    data_dir = Path(data_dir)
    rows = [_preview_row(data_dir, info, anns, names, info.get("style", split))
            for info, anns, names in _by_style(data_dir / f"{split}.json", count)]
    for ood in sorted((data_dir / "ood").glob("*/test.json")):
        rows += [_preview_row(ood.parent, info, anns, names, f"out-of-distribution set {ood.parent.name}")
                 for info, anns, names in _by_style(ood, 1, with_plates=True)]
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), sheet)
    return out_png


def _by_style(coco_file: Path, count: int, with_plates: bool = False) -> list[tuple[dict, list[dict], dict]]:
    """Up to `count` images of a COCO file with their annotations, taking turns over the images' styles (those
    with plates first where with_plates)."""
    coco = json.loads(coco_file.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted(coco["images"], key=lambda im: not by_image.get(im["id"])) if with_plates else coco["images"]
    queues: dict[str, list[dict]] = {}
    for info in images:
        queues.setdefault(info.get("style", ""), []).append(info)
    picked = []
    while len(picked) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return [(info, by_image.get(info["id"], []), names) for info in picked]


def _preview_row(data_dir: Path, info: dict, anns: list[dict], names: dict, title: str) -> np.ndarray:
    row_h, crop_h = 300, 150
    img = cv2.imread(str(data_dir / info["file_name"]))
    scale = row_h / img.shape[0]
    thumb = cv2.resize(img, (max(1, int(img.shape[1] * scale)), row_h), interpolation=cv2.INTER_AREA)
    tiles = [thumb]
    for ann in anns:
        x, y, w, h = ann["bbox"]
        if names[ann["category_id"]].endswith("_board"):
            cv2.rectangle(thumb, (int(x * scale), int(y * scale)), (int((x + w) * scale), int((y + h) * scale)),
                          _COLOURS["plate"], 2)
            tiles.append(_plate_tile(img, ann, anns, names, crop_h))
    if not anns:
        cv2.putText(thumb, "no plate", (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 255), 2, cv2.LINE_AA)
    row = np.concatenate([_pad_h(t, row_h) for t in tiles], axis=1)
    text = f"{title}: {info['file_name']}"
    width = max(row.shape[1], cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0] + 8)
    row = np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
    header = np.full((26, width, 3), 255, np.uint8)
    cv2.putText(header, text, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, row])


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
