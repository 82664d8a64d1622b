"""Detections -> plates. Used by evaluation, the CLI and the TorchServe handler; standard library only.

Rules:
1. Plates are r_board/l_board detections scoring >= plate_score, after non-maximum suppression across
   both types (IoU > 0.5: the higher score wins).
2. Each character (0-9, A-E) and region (sub_text, main_text) detection scoring >= char_score goes to the
   plate that covers most of it (at least half of its own area; ties go to the smaller plate).
3. Inside a plate, character boxes overlapping by IoU > 0.4 are one character: the higher score stays.
4. Order: r_board characters split into two rows (by the region boxes when the reader found them, else
   at the largest vertical gap between character centres), each row read left to right along the row's
   slope, so mildly rotated plates read right. l_board: one row, left to right; the first three characters
   are sub_text.
5. A read must be 2 digits + a letter A-E, then 4 digits. Anything else is partial: dropped, or with
   keep_partial kept with "valid": False and None where a position is missing or of the wrong kind.
6. Score = plate score x the lowest character score (a plate is as sure as its least sure character).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .labels import CLASSES, DIGITS, LETTERS, PLATE_TYPES

CHARS = set(DIGITS) | set(LETTERS)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    bbox: Box  # x1, y1, x2, y2 in image pixels


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _nms(dets: list[Detection], threshold: float) -> list[Detection]:
    kept: list[Detection] = []
    for det in sorted(dets, key=lambda d: -d.score):
        if all(iou(det.bbox, k.bbox) <= threshold for k in kept):
            kept.append(det)
    return kept


def _centre(b: Sequence[float]) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)


def _row_order(chars: list[Detection]) -> list[Detection]:
    """Left to right along the row's own slope (robust to a few degrees of rotation)."""
    if len(chars) < 2:
        return chars
    pts = [_centre(c.bbox) for c in chars]
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
    norm = (1 + slope * slope) ** 0.5
    return [c for _, c in sorted(zip(pts, chars), key=lambda pc: (pc[0][0] + slope * pc[0][1]) / norm)]


def _split_rows(chars: list[Detection], regions: dict[str, Detection]) -> tuple[list[Detection], list[Detection]]:
    if "sub_text" in regions and "main_text" in regions:
        top, bottom = [], []
        for c in chars:
            cx, cy = _centre(c.bbox)
            # the region that holds more of the character wins; its centre decides on a tie
            a = _intersection(c.bbox, regions["sub_text"].bbox)
            b = _intersection(c.bbox, regions["main_text"].bbox)
            if a == b:
                a = -abs(cy - _centre(regions["sub_text"].bbox)[1])
                b = -abs(cy - _centre(regions["main_text"].bbox)[1])
            (top if a > b else bottom).append(c)
        return top, bottom
    if len(chars) < 2:
        return [], chars
    by_y = sorted(chars, key=lambda c: _centre(c.bbox)[1])
    gaps = [_centre(by_y[i + 1].bbox)[1] - _centre(by_y[i].bbox)[1] for i in range(len(by_y) - 1)]
    cut = max(range(len(gaps)), key=lambda i: gaps[i])
    return by_y[:cut + 1], by_y[cut + 1:]


def _pattern(chars: list[Detection], kinds: Sequence[str]) -> tuple[list[str | None], bool]:
    """The read of one region, as many positions as kinds; None where missing or of the wrong kind."""
    out: list[str | None] = []
    ok = len(chars) == len(kinds)
    for i, kind in enumerate(kinds):
        label = chars[i].label if i < len(chars) else None
        good = label is not None and (label in DIGITS if kind == "digit" else label in LETTERS)
        out.append(label if good else None)
        ok = ok and good
    return out, ok


def _read_plate(plate: Detection, members: list[Detection]) -> dict:
    chars = _nms([d for d in members if d.label in CHARS], 0.4)
    regions = {}
    for d in members:
        if d.label in ("sub_text", "main_text") and (d.label not in regions or d.score > regions[d.label].score):
            regions[d.label] = d
    if plate.label == "r_board":
        top, bottom = _split_rows(chars, regions)
        sub, main = _row_order(top), _row_order(bottom)
    else:
        row = _row_order(chars)
        if "sub_text" in regions and "main_text" in regions and len(row) != 7:
            sub = [c for c in row if _intersection(c.bbox, regions["sub_text"].bbox) >
                   _intersection(c.bbox, regions["main_text"].bbox)]
            main = [c for c in row if c not in sub]
        else:
            sub, main = row[:3], row[3:]
    sub_text, sub_ok = _pattern(sub, ("digit", "digit", "letter"))
    main_text, main_ok = _pattern(main, ("digit",) * 4)
    used = (sub + main)[:7] if sub_ok and main_ok else sub + main
    char_scores = [c.score for c in used]
    score = plate.score * (min(char_scores) if char_scores else 0.0)
    valid = sub_ok and main_ok
    text = "".join(c or "?" for c in sub_text + main_text)
    return {
        "type": plate.label,
        **box_fields(plate.bbox),
        "sub_text": sub_text,
        "main_text": main_text,
        "plate": text,
        "region": text[:2],
        "class": text[2],
        "serial": text[3:],
        "score": round(score, 4),
        "valid": valid,
    }


def box_fields(box: Sequence[float]) -> dict:
    """A plate's place in a read: board_center_p, width and height (whole pixels) and bbox."""
    x1, y1, x2, y2 = box
    return {"board_center_p": [int(round((x1 + x2) / 2)), int(round((y1 + y2) / 2))],
            "width": int(round(x2 - x1)), "height": int(round(y2 - y1)), "bbox": [round(float(v), 1) for v in box]}


def decode(detections: Iterable[Detection], *, plate_score: float, char_score: float,
           keep_partial: bool = False) -> list[dict]:
    """Group detections into plates, best score first (see the module's rules); plate_score and char_score are
    the model's (pipeline.pth `thresholds`)."""
    detections = list(detections)
    plates = _nms([d for d in detections if d.label in PLATE_TYPES and d.score >= plate_score], 0.5)
    members: dict[int, list[Detection]] = {i: [] for i in range(len(plates))}
    for det in detections:
        if det.label in PLATE_TYPES or det.score < char_score or _area(det.bbox) <= 0:
            continue
        best, best_key = None, None
        for i, plate in enumerate(plates):
            cover = _intersection(det.bbox, plate.bbox) / _area(det.bbox)
            key = (cover, -_area(plate.bbox))
            if cover >= 0.5 and (best_key is None or key > best_key):
                best, best_key = i, key
        if best is not None:
            members[best].append(det)
    out = [_read_plate(plate, members[i]) for i, plate in enumerate(plates)]
    if not keep_partial:
        out = [p for p in out if p["valid"]]
    return sorted(out, key=lambda p: -p["score"])


def detections_from_arrays(bboxes, scores, labels, classes: Sequence[str] = CLASSES) -> list[Detection]:
    """MMDetection-style arrays (N x 4 boxes, N scores, N label indices; lists, numpy or torch) -> Detections."""
    def plain(x):
        return x.tolist() if hasattr(x, "tolist") else list(x)
    return [Detection(classes[int(l)], float(s), tuple(float(v) for v in b))
            for b, s, l in zip(plain(bboxes), plain(scores), plain(labels))]


def format_plate(plate: dict) -> str:
    """A small framed drawing of a plate for the terminal, like the original client printed."""
    sub = "".join(c or "?" for c in plate["sub_text"])
    main = "".join(c or "?" for c in plate["main_text"])
    rows = [sub, main] if plate["type"] == "r_board" else [f"{sub} {main}"]
    inner = max(len(r) for r in rows) + 4
    lines = ["┌" + "─" * inner + "┐"] + [f"│{r:^{inner}}│" for r in rows] + ["└" + "─" * inner + "┘"]
    lines.append(f"{plate['type']}  score {plate['score']:.2f}" + ("" if plate.get("valid", True) else "  (partial)"))
    return "\n".join(lines)
