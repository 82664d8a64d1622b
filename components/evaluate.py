"""Evaluate step: COCO bbox mAP and EIR (exact plate read rate: type and all 7 characters right), plus
per-character accuracy, plate detection recall/precision, results per plate type and size, plates reported
on plate-free images and inference time. Writes metrics.json and report.html (worst cases drawn).
"""

from __future__ import annotations

import base64
import html
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from serving.labels import CLASSES, PLATE_TYPES, category_id
from serving.plates import Detection, decode, iou
from serving.reader import CHAR_SCORE, PLATE_SCORE

SIZE_BUCKETS = ((0, 120, "small (<120 px)"), (120, 240, "medium (120-240 px)"), (240, 1e9, "large (>=240 px)"))


@dataclass
class PlateCase:
    image: str
    truth: dict | None       # {"type", "text", "bbox"} or None for a false plate
    read: dict | None        # the decoded plate, or None when missed

    @property
    def correct(self) -> bool:
        return bool(self.truth and self.read and self.read["type"] == self.truth["type"]
                    and self.read["plate"] == self.truth["text"])


def truth_plates(coco: dict) -> dict[int, list[dict]]:
    """Labelled plates per image id: type, text (from the labels' characters when no text is stored), box."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = {}
    for image_id, anns in by_image.items():
        plates = []
        dets = [Detection(names[a["category_id"]], 1.0, _xyxy(a["bbox"])) for a in anns]
        for a in anns:
            kind = names[a["category_id"]]
            if kind not in PLATE_TYPES:
                continue
            text = a.get("text")
            if not text:
                read = decode([d for d in dets if d.label not in PLATE_TYPES] + [Detection(kind, 1.0, _xyxy(a["bbox"]))],
                              keep_partial=True)
                text = read[0]["plate"] if read else "???????"
            plates.append({"type": kind, "text": text, "bbox": _xyxy(a["bbox"])})
        out[image_id] = plates
    return out


def _xyxy(b):
    return (b[0], b[1], b[0] + b[2], b[1] + b[3])


def match(truth: list[dict], reads: list[dict], iou_threshold: float) -> tuple[list[tuple], list[dict]]:
    """Pair labelled plates with reads, best overlap first; return (pairs (truth, read|None), unmatched reads)."""
    pairs = sorted(((iou(t["bbox"], r["bbox"]), i, j) for i, t in enumerate(truth) for j, r in enumerate(reads)),
                   reverse=True)
    used_t, used_r, matched = set(), set(), {}
    for overlap, i, j in pairs:
        if overlap < iou_threshold or i in used_t or j in used_r:
            continue
        used_t.add(i)
        used_r.add(j)
        matched[i] = reads[j]
    return [(t, matched.get(i)) for i, t in enumerate(truth)], [r for j, r in enumerate(reads) if j not in used_r]


def coco_map(coco_file: Path, detections: list[dict]) -> dict:
    """COCO bbox mAP over every class with pycocotools; 0 when nothing was detected."""
    if not detections:
        return {"bbox_mAP": 0.0, "bbox_mAP_50": 0.0}
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_file))
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"bbox_mAP": round(float(ev.stats[0]), 4), "bbox_mAP_50": round(float(ev.stats[1]), 4)}


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def evaluate(model, data_dir: str | Path, out_dir: str | Path, split: str = "test",
             plate_score: float = PLATE_SCORE, char_score: float = CHAR_SCORE, iou_threshold: float = 0.5,
             report_worst: int = 12,
             device: str = "auto", batch: int = 4, progress: bool = True) -> dict:
    """Run the reader over a split and write OUT/metrics.json and OUT/report.html; return the metrics.

    model: a pipeline.pth path, or any object with predict(images) -> [ImageResult] (a PlateReader)."""
    from tqdm import tqdm

    from serving.images import read_image_file
    from serving.reader import PlateReader

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    coco_file = data_dir / f"{split}.json"
    if not coco_file.is_file():
        raise FileNotFoundError(f"{coco_file} not found: evaluate needs a data set with a {split} split")
    coco = json.loads(coco_file.read_text())
    if not coco["images"]:
        raise ValueError(f"{coco_file} holds no images: nothing to evaluate")
    truth = truth_plates(coco)
    if hasattr(model, "predict"):
        reader = model
    else:
        reader = PlateReader.from_file(model, device=device, plate_score=plate_score, char_score=char_score)
    cases: list[PlateCase] = []
    detections, timings, plate_free_reports = [], [], 0
    images = coco["images"]
    bar = tqdm(total=len(images), desc="evaluating", unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pixels = [read_image_file(data_dir / im["file_name"]) for im in chunk]
        for im, img in zip(chunk, pixels):
            started = time.perf_counter()
            result = reader.predict([img])[0]
            timings.append(time.perf_counter() - started)
            for det in result.detections:
                x1, y1, x2, y2 = det.bbox
                detections.append({"image_id": im["id"], "category_id": category_id(det.label),
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": det.score})
            pairs, extra = match(truth[im["id"]], result.plates, iou_threshold)
            cases += [PlateCase(im["file_name"], t, r) for t, r in pairs]
            cases += [PlateCase(im["file_name"], None, r) for r in extra]
            if not truth[im["id"]]:
                plate_free_reports += len(result.plates)
        bar.update(len(chunk))
    bar.close()

    labelled = [c for c in cases if c.truth]
    reported = [c for c in cases if c.read]
    chars_right = sum(sum(a == b for a, b in zip(c.read["plate"], c.truth["text"])) for c in labelled if c.read)
    metrics = {
        "split": split, "images": len(images), "plates": len(labelled),
        "eir": _rate(sum(c.correct for c in labelled), len(labelled)) or 0.0,
        "char_accuracy": _rate(chars_right, 7 * len(labelled)),
        "plate_recall": _rate(sum(1 for c in labelled if c.read), len(labelled)),
        "plate_precision": _rate(sum(1 for c in reported if c.truth), len(reported)),
        "plate_free_images": sum(1 for v in truth.values() if not v),
        "plates_on_plate_free_images": plate_free_reports,
        **coco_map(coco_file, detections),
        "median_ms_per_image": round(statistics.median(timings) * 1000, 1),
        "by_type": {}, "by_size": {},
    }
    for kind in PLATE_TYPES:
        group = [c for c in labelled if c.truth["type"] == kind]
        metrics["by_type"][kind] = {"plates": len(group), "eir": _rate(sum(c.correct for c in group), len(group))}
    for low, high, name in SIZE_BUCKETS:
        group = [c for c in labelled if low <= c.truth["bbox"][2] - c.truth["bbox"][0] < high]
        metrics["by_size"][name] = {"plates": len(group), "eir": _rate(sum(c.correct for c in group), len(group))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(out_dir / "report.html", metrics, [c for c in cases if not c.correct][:report_worst], data_dir)
    return metrics


def _crop_png(data_dir: Path, case: PlateCase) -> str:
    img = cv2.imread(str(data_dir / case.image))
    box = (case.truth or case.read)["bbox"]
    x1, y1, x2, y2 = box
    m = 0.25 * max(x2 - x1, y2 - y1)
    x1, y1 = max(0, int(x1 - m)), max(0, int(y1 - m))
    x2, y2 = min(img.shape[1], int(x2 + m)), min(img.shape[0], int(y2 + m))
    crop = img[y1:y2, x1:x2]
    scale = 160 / max(1, crop.shape[0])
    crop = cv2.resize(crop, (max(1, int(crop.shape[1] * scale)), 160), interpolation=cv2.INTER_CUBIC)
    for plate, colour in ((case.truth, (255, 160, 0)), (case.read, (60, 200, 60) if case.correct else (40, 40, 230))):
        if plate:
            a, b, c, d = plate["bbox"]
            cv2.rectangle(crop, (int((a - x1) * scale), int((b - y1) * scale)), (int((c - x1) * scale), int((d - y1) * scale)),
                          colour, 2)
    ok, buf = cv2.imencode(".png", crop)
    return base64.b64encode(buf.tobytes()).decode()


def write_report(path: Path, metrics: dict, worst: list[PlateCase], data_dir: Path) -> None:
    """One self-contained HTML page: headline numbers, breakdowns and the worst cases drawn."""
    def row(cells, tag="td"):
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    headline = [("EIR (exact plate reads)", metrics["eir"]), ("character accuracy", metrics["char_accuracy"]),
                ("plate recall", metrics["plate_recall"]), ("plate precision", metrics["plate_precision"]),
                ("COCO bbox mAP", metrics["bbox_mAP"]), ("COCO bbox mAP@50", metrics["bbox_mAP_50"]),
                ("plates reported on plate-free images", metrics["plates_on_plate_free_images"]),
                ("median inference per image (ms)", metrics["median_ms_per_image"])]
    parts = [f"<h1>platepipe evaluation: {metrics['split']} split</h1>",
             f"<p>{metrics['images']} images, {metrics['plates']} labelled plates, "
             f"{metrics['plate_free_images']} plate-free images.</p>",
             "<table>" + row(["metric", "value"], "th") + "".join(row(r) for r in headline) + "</table>",
             "<h2>By plate type and size</h2><table>" + row(["group", "plates", "EIR"], "th")
             + "".join(row([k, v["plates"], v["eir"]]) for k, v in {**metrics["by_type"], **metrics["by_size"]}.items())
             + "</table>",
             f"<h2>Worst cases ({len(worst)})</h2>"]
    if not worst:
        parts.append("<p>Every plate was read right and nothing else was reported.</p>")
    for case in worst:
        want = f"{case.truth['type']} {case.truth['text']}" if case.truth else "no plate"
        got = f"{case.read['type']} {case.read['plate']}" if case.read else "missed"
        parts.append(f"<figure><img src='data:image/png;base64,{_crop_png(data_dir, case)}'>"
                     f"<figcaption>{html.escape(case.image)}: expected <b>{html.escape(want)}</b>, "
                     f"got <b>{html.escape(got)}</b></figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left}figure{display:inline-block;margin:.5em}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>platepipe evaluation</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


assert len(CLASSES) == 19
