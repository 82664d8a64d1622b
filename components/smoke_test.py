"""Smoke test step: post images with known plates to a live endpoint and check every answer.

The images: a small synthetic set from the data step (fixed seed, about 1280 px, plates 120-360 px wide:
sizes the model should read), one plate-free scene (must come back with no plates), and any images of
your own listed in a YAML file (`smoke.user_images`):

    - {image: photos/car.jpg, plates: ["38D4831"], types: [l_board]}
    - {image: photos/two.jpg, plates: ["12A3456", "98E7654"]}               # types optional
    - {image: photos/boxed.jpg, plates: ["38D4831"], boxes: [[412, 300, 572, 334]]}  # x1, y1, x2, y2
    - {image: photos/empty.jpg, plates: []}                                  # must read no plate

Paths are relative to the YAML file. Each image goes in its own request, through components.client (which
shrinks images over the request limit and retries 502/503/504), in the configured protocol.

Checks, per image:
  * reads are paired with the labelled plates by IoU of their bbox with the labelled box (>= 0.5) where the
    labels have boxes, else by plate string (exact first, then the closest with at least 4 of 7 characters
    in place); every labelled plate needs a read with the right type, region (sub_text digits), letter and
    serial; a read paired with nothing is an extra plate;
  * every field that comes back has the right shape: type r_board/l_board, board_center_p [x, y] inside the
    image, width/height positive and consistent with bbox, sub_text [digit, digit, letter A-E], main_text
    4 digits; and, when present, bbox inside the image, plate/region/class/serial equal to the characters,
    score in [0, 1], valid a boolean.

Any problem fails the step (SmokeTestFailed, with a table of expected vs got per image). Either way it
writes OUT/smoke.json and OUT/smoke.html (self-contained, with thumbnails).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import statistics
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from platepipe.serving.labels import DIGITS, LETTERS, PLATE_TYPES

DEFAULT_SEED = 4831
IOU_THRESHOLD = 0.5
PLATE_RE = re.compile(r"[0-9]{2}[A-E][0-9]{4}")
USER_KEYS = ("image", "plates", "types", "boxes")
REQUIRED_FIELDS = ("type", "board_center_p", "width", "height", "sub_text", "main_text")
# a whole run stops at these: every further request would fail the same way
FATAL_STATUS = (None, 401, 403, 404)


class SmokeTestFailed(RuntimeError):
    """The endpoint answered wrong; str() holds the table of expected vs got, .summary the full result."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


class UserImagesError(ValueError):
    """The user images YAML is malformed; the message names the file, the entry and what is expected."""


@dataclass
class Sample:
    """One image to post and its known plates ({"type" or None, "text", "bbox" (x1, y1, x2, y2) or None})."""

    name: str
    data: bytes
    width: int
    height: int
    truth: list[dict]
    source: str  # synthetic | plate-free | user


@dataclass
class Result:
    sample: Sample
    got: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    read_status: list[str] = field(default_factory=list)  # per read: ok | wrong | extra
    paired: dict = field(default_factory=dict)  # labelled plate index -> index of its read in got
    correct: int = 0

    def reads_aligned(self) -> list[str]:
        """The reads in the labelled plates' order ("(missing)" where one was not read), extras after."""
        if not self.got:
            return ["(none)"]
        lines = [show_read(self.got[self.paired[i]]) if i in self.paired else "(missing)"
                 for i in range(len(self.sample.truth))]
        return lines + [show_read(p) for j, p in enumerate(self.got) if j not in self.paired.values()]

    @property
    def passed(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------------- images

def smoke_spec(n_images: int, seed: int = DEFAULT_SEED, style: str = "stamped"):
    """The synthetic images: every one with plates, in one style, on real photos, about 1280 px, plates large
    enough to read."""
    from platepipe.pipeline.config import settings

    return settings("data", n_images=n_images, seed=seed, min_size=1152, max_size=1344, plate_width_min=160,
                    plate_width_max=360, split_train=1.0, split_val=0.0, split_test=0.0, empty_fraction=0.0,
                    procedural_fraction=0.0, styles={style: 1.0})


def _generated(folder: Path, spec, source: str, prefix: str = "") -> list[Sample]:
    from platepipe.components.data import generate
    from platepipe.components.evaluate import truth_plates

    generate(folder, spec, workers=1, progress=False)
    coco = json.loads((folder / "train.json").read_text())
    truth = truth_plates(coco)
    return [Sample(prefix + Path(im["file_name"]).name, (folder / im["file_name"]).read_bytes(), im["width"],
                   im["height"], truth[im["id"]], source) for im in coco["images"]]


def sample_images(work_dir: str | Path, n_images: int = 8, seed: int = DEFAULT_SEED) -> list[Sample]:
    """Render the synthetic images under work_dir, all on real photos: n_images with plates (half of them, at
    least one, in the original project's style, the rest stamped plates; none when n_images is 0: the user's
    images only), then one plate-free."""
    import dataclasses
    work_dir = Path(work_dir)
    n_original = max(1, n_images // 2) if n_images else 0
    samples = []
    if n_original:
        samples += _generated(work_dir / "original", smoke_spec(n_original, seed, "original"),
                              "synthetic, original style", prefix="original-")
    if n_images > n_original:
        samples += _generated(work_dir / "plates", smoke_spec(n_images - n_original, seed), "synthetic")
    empty = dataclasses.replace(smoke_spec(1, seed + 1), empty_fraction=1.0)
    return samples + _generated(work_dir / "plate-free", empty, "plate-free", prefix="plate-free-")


def _image_size(data: bytes) -> tuple[int, int]:
    """Width, height as the server sees the image (EXIF rotation applied)."""
    from PIL import Image, ImageOps
    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).size


def load_user_images(path: str | Path) -> list[Sample]:
    """The images listed in a user images YAML file, validated; UserImagesError names every problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserImagesError(f"{path}: user images file not found (smoke.user_images)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise UserImagesError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    example = "- {image: photos/car.jpg, plates: [\"38D4831\"], types: [l_board]}"
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserImagesError(f"{path}: expected a list of images at the top level, like\n  {example}\n"
                              f"got {type(raw).__name__}")
    problems: list[str] = []
    samples: list[Sample] = []
    for i, entry in enumerate(raw, 1):
        where = f"{path}: entry {i}"
        if isinstance(entry, dict) and isinstance(entry.get("image"), str):
            where += f" ({entry['image']})"
        sample = _user_entry(entry, path.parent, where, problems, example)
        if sample:
            samples.append(sample)
    if problems:
        raise UserImagesError("bad user images file:\n  " + "\n  ".join(problems))
    return samples


def _user_entry(entry, base: Path, where: str, problems: list[str], example: str) -> Sample | None:
    import difflib

    before = len(problems)
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping like {example}, got {entry!r}")
        return None
    for key in entry:
        if key not in USER_KEYS:
            close = difflib.get_close_matches(str(key), USER_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(USER_KEYS)}"
            problems.append(f"{where}: unknown key '{key}' ({hint})")
    image = entry.get("image")
    data = None
    if not isinstance(image, str) or not image.strip():
        problems.append(f"{where}: image: missing or not a path (a file relative to the YAML file)")
    else:
        file = base / image
        if not file.is_file():
            problems.append(f"{where}: image: {file} not found (paths are relative to the YAML file)")
        else:
            data = file.read_bytes()
            try:
                width, height = _image_size(data)
            except Exception as exc:  # noqa: BLE001 - any decoder error means the same to the user
                problems.append(f"{where}: image: {file} is not an image Pillow can read ({exc})")
                data = None
    plates = entry.get("plates")
    if plates is None:
        problems.append(f"{where}: plates: missing (a list of plate strings like [\"38D4831\"]; [] for an image "
                        "without plates)")
        plates = []
    elif not isinstance(plates, list):
        problems.append(f"{where}: plates: expected a list of plate strings like [\"38D4831\"], got {plates!r}")
        plates = []
    texts = []
    for j, p in enumerate(plates):
        text = p.replace(" ", "").replace("-", "") if isinstance(p, str) else None
        if text is None or not PLATE_RE.fullmatch(text):
            problems.append(f"{where}: plates[{j}]: {p!r} is not a plate (expected 2 digits, a letter A-E and "
                            "4 digits, e.g. \"38D4831\")")
        texts.append(text)
    types = _per_plate_list(entry, "types", len(plates), where, problems)
    for j, t in enumerate(types or []):
        if t not in PLATE_TYPES:
            problems.append(f"{where}: types[{j}]: {t!r} is not a plate type (expected r_board or l_board)")
    boxes = _per_plate_list(entry, "boxes", len(plates), where, problems)
    for j, b in enumerate(boxes or []):
        if not (isinstance(b, list) and len(b) == 4 and all(_number(v) for v in b) and b[0] < b[2] and b[1] < b[3]):
            problems.append(f"{where}: boxes[{j}]: {b!r} is not a box (expected [x1, y1, x2, y2] in the image's "
                            "pixels, x1 < x2, y1 < y2)")
    if len(problems) > before or data is None:
        return None
    truth = [{"type": types[j] if types else None, "text": texts[j],
              "bbox": tuple(float(v) for v in boxes[j]) if boxes else None} for j in range(len(texts))]
    return Sample(image, data, width, height, truth, "user")


def _per_plate_list(entry: dict, key: str, n: int, where: str, problems: list[str]) -> list | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append(f"{where}: {key}: expected a list with one item per plate, got {value!r}")
        return None
    if len(value) != n:
        problems.append(f"{where}: {key}: {len(value)} item(s) for {n} plate(s) (one per plate, in the order "
                        "of plates)")
        return None
    return value


# ---------------------------------------------------------------------------------------------- checks

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _chars(seq) -> str:
    if not isinstance(seq, (list, tuple)):
        return "?"
    return "".join("?" if c is None else str(c) for c in seq)


def read_text(plate) -> str:
    """The characters of a read (sub_text then main_text), '?' where missing; robust to malformed reads."""
    if not isinstance(plate, dict):
        return "?"
    return _chars(plate.get("sub_text")) + _chars(plate.get("main_text"))


def show_read(plate) -> str:
    if not isinstance(plate, dict):
        return repr(plate)[:40]
    return f"{plate.get('type', '?')} {read_text(plate)}"


def show_truth(t: dict) -> str:
    return f"{t['type']} {t['text']}" if t.get("type") else t["text"]


def _box(plate) -> tuple[float, ...] | None:
    b = plate.get("bbox") if isinstance(plate, dict) else None
    if isinstance(b, (list, tuple)) and len(b) == 4 and all(_number(v) for v in b) and b[0] < b[2] and b[1] < b[3]:
        return tuple(float(v) for v in b)
    return None


def shape_problems(plate, width: int, height: int) -> list[str]:
    """What is wrong with the fields of one read plate (empty when nothing)."""
    if not isinstance(plate, dict):
        return [f"{show_read(plate)}: a plate must be a JSON object"]
    name = show_read(plate)
    out: list[str] = []

    def bad(text: str) -> None:
        out.append(f"{name}: {text}")

    for key in REQUIRED_FIELDS:
        if key not in plate:
            bad(f"field '{key}' missing")
    kind = plate.get("type")
    if "type" in plate and kind not in PLATE_TYPES:
        bad(f"type {kind!r} is not r_board or l_board")
    box = _box(plate)
    tol = lambda v: max(3.0, 0.03 * abs(v))  # noqa: E731 - rounding, and the client's rescaling of shrunk images
    if "bbox" in plate:
        if box is None:
            bad(f"bbox {plate['bbox']!r} is not [x1, y1, x2, y2] with x1 < x2, y1 < y2")
        elif box[0] < -2 or box[1] < -2 or box[2] > width + 2 or box[3] > height + 2:
            bad(f"bbox {list(plate['bbox'])} is outside the {width}x{height} image")
    centre = plate.get("board_center_p")
    if "board_center_p" in plate:
        if not (isinstance(centre, (list, tuple)) and len(centre) == 2 and all(_number(v) for v in centre)):
            bad(f"board_center_p {centre!r} is not [x, y]")
        elif not (0 <= centre[0] <= width and 0 <= centre[1] <= height):
            bad(f"board_center_p {list(centre)} is outside the {width}x{height} image")
        elif box and (abs(centre[0] - (box[0] + box[2]) / 2) > tol(box[2] - box[0])
                      or abs(centre[1] - (box[1] + box[3]) / 2) > tol(box[3] - box[1])):
            bad(f"board_center_p {list(centre)} is not the centre of bbox {list(plate['bbox'])}")
    for key, axis, limit in (("width", 0, width), ("height", 1, height)):
        if key not in plate:
            continue
        v = plate[key]
        if not _number(v) or v <= 0:
            bad(f"{key} {v!r} is not a positive number")
        elif box and abs(v - (box[axis + 2] - box[axis])) > tol(v):
            bad(f"{key} {v} does not match bbox ({box[axis + 2] - box[axis]:.1f})")
        elif not box and v > limit + 2:
            bad(f"{key} {v} is larger than the image ({limit})")
    for key, kinds, what in (("sub_text", ("digit", "digit", "letter"), "digit, digit, letter A-E"),
                             ("main_text", ("digit",) * 4, "4 digits")):
        if key not in plate:
            continue
        seq = plate[key]
        if not isinstance(seq, list):
            bad(f"{key} {seq!r} is not a list ({what})")
            continue
        if len(seq) != len(kinds):
            bad(f"{key} has {len(seq)} items, expected {len(kinds)} ({what})")
        for i, (c, k) in enumerate(zip(seq, kinds)):
            if k == "digit" and not (isinstance(c, str) and c in DIGITS):
                bad(f"{key}[{i}] {c!r} is not a digit (a string '0'-'9')")
            if k == "letter" and not (isinstance(c, str) and c in LETTERS):
                bad(f"{key}[{i}] {c!r} is not a letter A-E")
    sub, main = plate.get("sub_text"), plate.get("main_text")
    pieces = {"plate": _chars(sub) + _chars(main)}
    if isinstance(sub, list):
        pieces.update({"region": _chars(sub[:2]), "class": _chars(sub[2:3])})
    if isinstance(main, list):
        pieces["serial"] = _chars(main)
    for key, want in pieces.items():
        if key in plate and plate[key] != want:
            bad(f"{key} {plate[key]!r} does not match its characters ({want!r})")
    if "score" in plate and not (_number(plate["score"]) and 0 <= plate["score"] <= 1):
        bad(f"score {plate['score']!r} is not a number in [0, 1]")
    if "valid" in plate and not isinstance(plate["valid"], bool):
        bad(f"valid {plate['valid']!r} is not true/false")
    return out


def read_problems(truth: dict, read: dict) -> list[str]:
    """How a read differs from its labelled plate: type, region, letter, serial (empty when right)."""
    sub = read.get("sub_text") if isinstance(read.get("sub_text"), list) else []
    main = read.get("main_text")
    got = {"region": _chars(sub[:2]), "letter": _chars(sub[2:3]), "serial": _chars(main)}
    want = {"region": truth["text"][:2], "letter": truth["text"][2], "serial": truth["text"][3:]}
    wrong = []
    if truth.get("type") and read.get("type") != truth["type"]:
        wrong.append(f"type {read.get('type')}, expected {truth['type']}")
    wrong += [f"{k} {got[k] or '(none)'}, expected {want[k]}" for k in want if got[k] != want[k]]
    return [f"{show_truth(truth)} read as {show_read(read)}: " + "; ".join(wrong)] if wrong else []


def _same_chars(a: str, b: str) -> int:
    return sum(x == y for x, y in zip(a, b)) + (1 if a == b else 0)


def pair(truth: list[dict], reads: list, iou_threshold: float = IOU_THRESHOLD) -> tuple[dict[int, int], list[int]]:
    """Pair labelled plates with reads: {truth index: read index}, and the unpaired read indices.

    By IoU of the boxes where the labels have boxes (reads without a usable bbox then go by string), else
    by plate string: exact first, then the most characters in place (at least 4 of 7)."""
    from platepipe.components.evaluate import match

    paired: dict[int, int] = {}
    left = list(range(len(reads)))
    if truth and all(t.get("bbox") for t in truth):
        boxed = [j for j in left if _box(reads[j])]
        pairs, _ = match(truth, [{"bbox": _box(reads[j]), "j": j} for j in boxed], iou_threshold)
        paired = {i: r["j"] for i, (t, r) in enumerate(pairs) if r is not None}
        left = [j for j in left if j not in boxed]
    by_text = sorted(((_same_chars(t["text"], read_text(reads[j])), i, j) for i, t in enumerate(truth)
                      if i not in paired for j in left), reverse=True)
    for score, i, j in by_text:
        if score >= 4 and i not in paired and j not in paired.values():
            paired[i] = j
    return paired, [j for j in range(len(reads)) if j not in paired.values()]


def check(sample: Sample, got: list) -> Result:
    """Compare one image's answer with its known plates."""
    result = Result(sample, got=got)
    if not isinstance(got, list):
        result.problems.append(f"the answer is not a list of plates: {got!r:.80}")
        result.got = []
        return result
    for plate in got:
        result.problems += shape_problems(plate, sample.width, sample.height)
    dicts = [p if isinstance(p, dict) else {} for p in got]
    paired, extra = pair(sample.truth, dicts)
    result.paired = paired
    result.read_status = ["extra"] * len(got)
    for i, t in enumerate(sample.truth):
        if i not in paired:
            hint = ""
            twins = [j for j in extra if read_text(dicts[j]) == t["text"]]
            if twins and t.get("bbox") and _box(dicts[twins[0]]):
                from platepipe.serving.plates import iou
                hint = (f" (a read of {t['text']} came back at {list(_box(dicts[twins[0]]))}, IoU "
                        f"{iou(t['bbox'], _box(dicts[twins[0]])):.2f} with the labelled box)")
            result.problems.append(f"{show_truth(t)}: missing{hint}")
            continue
        wrong = read_problems(t, dicts[paired[i]])
        result.problems += wrong
        result.read_status[paired[i]] = "wrong" if wrong else "ok"
        result.correct += not wrong
    for j in extra:
        where = "no plate expected" if not sample.truth else f"at {dicts[j].get('bbox', '?')}"
        result.problems.append(f"extra plate {show_read(got[j])} ({where})")
    return result


# ---------------------------------------------------------------------------------------------- run

def smoke_test(endpoint, out_dir: str | Path, n_images: int = 8, seed: int = DEFAULT_SEED,
               user_images: str | Path | None = None, timeout: float = 60,
               echo: Callable[[str], None] | None = None) -> dict:
    """Post the smoke images to `endpoint` (a components.client.Endpoint), check every answer, write
    OUT/smoke.json and OUT/smoke.html; return the summary, or raise SmokeTestFailed (its .summary is the same
    dict) when anything is wrong. UserImagesError (a ValueError) when the user images file is malformed."""
    from platepipe.components import client

    out_dir = Path(out_dir)
    users = load_user_images(user_images) if user_images else []
    with tempfile.TemporaryDirectory(prefix="platepipe-smoke-") as tmp:
        samples = sample_images(tmp, n_images, seed) + users
    url = endpoint.url.rstrip("/") + endpoint.path()
    results: list[Result] = []
    stopped: str | None = None
    for sample in samples:
        if stopped:
            results.append(Result(sample, problems=[f"not sent: {stopped}"]))
            continue
        started = time.perf_counter()
        try:
            got = client.request(endpoint, [sample.data], timeout=timeout)[0]
            latency_ms = round((time.perf_counter() - started) * 1000, 1)
        except client.ClientError as exc:
            results.append(Result(sample, problems=[f"request failed: {exc}"]))
            if exc.status in FATAL_STATUS:
                stopped = f"stopped after {sample.name}: {exc}"
            continue
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # an answer in the wrong envelope
            results.append(Result(sample, problems=[f"answer not in the {endpoint.protocol} protocol's shape: "
                                                    f"{type(exc).__name__}: {exc}"]))
            continue
        result = check(sample, got)
        result.latency_ms = latency_ms
        results.append(result)
        if echo:
            echo(f"{sample.name}: {len(result.got)} plate(s), {result.latency_ms} ms"
                 + ("" if result.passed else f", {len(result.problems)} problem(s)"))
    summary = _summary(results, url, endpoint.protocol, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "smoke.json").write_text(json.dumps(summary, indent=2))
    write_html(out_dir / "smoke.html", summary, results)
    if not summary["passed"]:
        failed = len(summary["failures"])
        raise SmokeTestFailed(f"smoke test failed: {failed} of {summary['images']} images wrong ({url})\n"
                              f"{summary['table']}\nreport: {out_dir / 'smoke.html'}", summary)
    return summary


def _summary(results: list[Result], url: str, protocol: str, out_dir: Path) -> dict:
    latencies = [r.latency_ms for r in results if r.latency_ms is not None]
    rows = [{"image": r.sample.name, "source": r.sample.source, "size": [r.sample.width, r.sample.height],
             "expected": [{"type": t["type"], "plate": t["text"], "bbox": list(t["bbox"]) if t["bbox"] else None}
                          for t in r.sample.truth],
             "got": r.got, "problems": r.problems, "passed": r.passed, "latency_ms": r.latency_ms}
            for r in results]
    return {
        "passed": all(r.passed for r in results),
        "endpoint": url, "protocol": protocol,
        "images": len(results),
        "plates_expected": sum(len(r.sample.truth) for r in results),
        "plates_read": sum(len(r.got) for r in results),
        "plates_correct": sum(r.correct for r in results),
        "latency_ms_median": round(statistics.median(latencies), 1) if latencies else None,
        "failures": [{"image": r.sample.name, "problems": r.problems} for r in results if not r.passed],
        "table": table(results),
        "report": {"json": str(out_dir / "smoke.json"), "html": str(out_dir / "smoke.html")},
        "results": rows,
    }


# ---------------------------------------------------------------------------------------------- report

def table(results: list[Result], problem_width: int = 72) -> str:
    """Expected vs got per image, as fixed-width text."""
    head = ("image", "expected", "got", "problems")
    rows = []
    for r in results:
        problems = [line for p in r.problems for line in textwrap.wrap(p, problem_width, subsequent_indent="  ",
                                                                          break_on_hyphens=False)]
        rows.append(([r.sample.name], [show_truth(t) for t in r.sample.truth] or ["(no plate)"],
                     r.reads_aligned(), problems or ["ok"]))
    widths = [max([len(head[c])] + [len(line) for row in rows for line in row[c]]) for c in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        for k in range(max(len(col) for col in row)):
            lines.append("  ".join((col[k] if k < len(col) else "").ljust(w) for col, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def thumbnail(result: Result, size: int = 320) -> str:
    """A small JPEG of the image with the labelled boxes (blue) and the reads (green right, red wrong), base64."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(result.sample.data)) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    draw = ImageDraw.Draw(img)
    boxes = [(t["bbox"], (0, 120, 255)) for t in result.sample.truth if t.get("bbox")]
    boxes += [(_box(p), (40, 190, 40) if s == "ok" else (230, 40, 40))
              for p, s in zip(result.got, result.read_status) if _box(p)]
    for box, colour in boxes:
        draw.rectangle([v * scale for v in box], outline=colour, width=2)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=70)
    return base64.b64encode(out.getvalue()).decode()


def write_html(path: Path, summary: dict, results: list[Result]) -> None:
    def cell(lines) -> str:
        return "<td>" + "<br>".join(html.escape(str(x)) for x in lines) + "</td>"

    verdict = "PASSED" if summary["passed"] else "FAILED"
    rows = []
    for r in results:
        thumb = f"<img src='data:image/jpeg;base64,{thumbnail(r)}'>"
        rows.append(f"<tr class='{'ok' if r.passed else 'bad'}'><td>{thumb}</td>{cell([r.sample.name, r.sample.source])}"
                    + cell([show_truth(t) for t in r.sample.truth] or ["(no plate)"])
                    + cell(r.reads_aligned())
                    + cell(r.problems or ["ok"])
                    + cell([f"{r.latency_ms} ms" if r.latency_ms is not None else ""]) + "</tr>")
    facts = [("endpoint", f"{summary['endpoint']} ({summary['protocol']})"), ("images", summary["images"]),
             ("plates expected / read / correct",
              f"{summary['plates_expected']} / {summary['plates_read']} / {summary['plates_correct']}"),
             ("median latency per request", f"{summary['latency_ms_median']} ms")]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left;vertical-align:top}"
             "tr.bad td{background:#fff0f0}tr.ok td{background:#f3fff3}.v{font-weight:bold}"
             ".PASSED{color:#080}.FAILED{color:#c00}")
    parts = [f"<h1>platepipe smoke test: <span class='{verdict}'>{verdict}</span></h1>",
             "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
             + "</table>",
             "<p>Blue: labelled plates; green: right reads; red: wrong or extra reads.</p>",
             "<table><tr><th></th><th>image</th><th>expected</th><th>got</th><th>problems</th><th>latency</th></tr>"
             + "".join(rows) + "</table>"]
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>platepipe smoke test</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
