"""Evaluate step: COCO bbox mAP and EIR (exact plate read rate: type and all 7 characters right), plus
per-character accuracy, plate detection recall and read recall/precision, results per plate type and size
(EIR and detection recall up to the largest plates), false plates (reported where no plate is), plates
reported on plate-free images and inference time; for the data set's own split and for each
out-of-distribution set the data step rendered beside it (DATA/ood/NAME). Writes metrics.json (the split's
figures at the top, each set's under "ood") and report.html (a table of every set, then each set's breakdowns
and worst cases drawn).
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

from platepipe.serving.labels import CLASSES, PLATE_TYPES, category_id
from platepipe.serving.plates import Detection, decode, iou

SIZE_BUCKETS = ((0, 120, "small (<120 px)"), (120, 240, "medium (120-240 px)"), (240, 480, "large (240-480 px)"),
                (480, 1e9, "huge (>=480 px)"))


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
                              plate_score=0.0, char_score=0.0, keep_partial=True)
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


def ood_sets(data_dir: str | Path) -> dict[str, Path]:
    """The out-of-distribution sets beside a data set: name -> folder holding its test.json."""
    return {p.parent.name: p.parent for p in sorted(Path(data_dir).glob("ood/*/test.json"))}


def evaluate(model, data_dir: str | Path, out_dir: str | Path, split: str = "test",
             plate_score: float | None = None, char_score: float | None = None, iou_threshold: float = 0.5,
             report_worst: int = 12, device: str = "auto", batch: int = 4, progress: bool = True,
             ood: bool = True) -> dict:
    """Run the reader over a split and, where ood, over every out-of-distribution set beside the data set; write
    OUT/metrics.json and OUT/report.html; return the metrics (the split's, with each set's under "ood").

    model: a pipeline.pth path, or any object with predict(images) -> [ImageResult] (a PlateReader); it reads at
    its own thresholds (pipeline.pth `thresholds`) unless plate_score or char_score say otherwise."""
    from platepipe.serving.reader import PlateReader

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    coco_file = data_dir / f"{split}.json"
    if not coco_file.is_file():
        raise FileNotFoundError(f"{coco_file} not found: evaluate needs a data set with a {split} split")
    if hasattr(model, "predict"):
        reader = model
    else:
        reader = PlateReader.from_file(model, device=device, plate_score=plate_score, char_score=char_score)
    metrics, cases = evaluate_set(reader, data_dir, coco_file, split, iou_threshold, batch, progress)
    sections = [(split, data_dir, metrics, cases)]
    if ood:
        metrics["ood"] = {}
        for name, folder in ood_sets(data_dir).items():
            m, c = evaluate_set(reader, folder, folder / "test.json", name, iou_threshold, batch, progress)
            summary = folder / "dataset.json"
            about = json.loads(summary.read_text()).get("about") if summary.is_file() else None
            metrics["ood"][name] = {**m, **({"about": about} if about else {})}
            sections.append((name, folder, metrics["ood"][name], c))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(out_dir / "report.html", [(name, folder, m, [c for c in cs if not c.correct][:report_worst])
                                           for name, folder, m, cs in sections])
    return metrics


def gate_eir(metrics: dict, gate_set: str) -> float:
    """The EIR the gate reads: the evaluated split's ("test") or an out-of-distribution set's."""
    if gate_set == "test":
        return metrics["eir"]
    sets = metrics.get("ood") or {}
    if gate_set not in sets:
        raise ValueError(f"evaluate.gate_set is {gate_set!r}, but the data set has no such out-of-distribution set "
                         f"(it has: {', '.join(sets) or 'none'}): set data.ood_images above 0, or gate on test")
    return sets[gate_set]["eir"]


def set_lines(metrics: dict) -> list[str]:
    """One line per evaluated set: the own split, then each out-of-distribution set."""
    sets = [(metrics.get("split", "test"), metrics), *(metrics.get("ood") or {}).items()]
    return [f"{name:<14} EIR {m['eir']:.4f} on {m['plates']} plates, detection recall {m.get('detection_recall')}, "
            f"false plates {m.get('false_plates')}" for name, m in sets]


def evaluate_set(reader, data_dir: Path, coco_file: Path, name: str, iou_threshold: float = 0.5, batch: int = 4,
                 progress: bool = True) -> tuple[dict, list[PlateCase]]:
    """The figures of one COCO file (images relative to data_dir) and every plate case, right or wrong."""
    from tqdm import tqdm

    from platepipe.serving.images import read_image_file

    coco = json.loads(coco_file.read_text())
    if not coco["images"]:
        raise ValueError(f"{coco_file} holds no images: nothing to evaluate")
    truth = truth_plates(coco)
    cases: list[PlateCase] = []
    detections, timings, plate_free_reports, detected = [], [], 0, set()
    images = coco["images"]
    bar = tqdm(total=len(images), desc=f"evaluating {name}", unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pixels = [read_image_file(data_dir / im["file_name"]) for im in chunk]
        started = time.perf_counter()
        results = reader.predict(pixels)  # in batches, as TorchServe batches requests
        timings.append((time.perf_counter() - started) / len(chunk))
        for im, result in zip(chunk, results):
            for det in result.detections:
                x1, y1, x2, y2 = det.bbox
                detections.append({"image_id": im["id"], "category_id": category_id(det.label),
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": det.score})
            boxes = [d.bbox for d in result.detections if d.label in PLATE_TYPES]
            for i, t in enumerate(truth[im["id"]]):
                if any(iou(t["bbox"], b) >= iou_threshold for b in boxes):
                    detected.add((im["id"], i))
            pairs, extra = match(truth[im["id"]], result.plates, iou_threshold)
            cases += [PlateCase(im["file_name"], t, r) for t, r in pairs]
            cases += [PlateCase(im["file_name"], None, r) for r in extra]
            if not truth[im["id"]]:
                plate_free_reports += len(result.plates)
        bar.update(len(chunk))
    bar.close()

    labelled = [c for c in cases if c.truth]
    reported = [c for c in cases if c.read]
    found = [(im_id, i) in detected for im_id, plates in truth.items() for i in range(len(plates))]
    sizes = [t["bbox"][2] - t["bbox"][0] for plates in truth.values() for t in plates]
    chars_right = sum(sum(a == b for a, b in zip(c.read["plate"], c.truth["text"])) for c in labelled if c.read)
    metrics = {
        "split": name, "images": len(images), "plates": len(labelled),
        "eir": _rate(sum(c.correct for c in labelled), len(labelled)) or 0.0,
        "char_accuracy": _rate(chars_right, 7 * len(labelled)),
        "detection_recall": _rate(sum(found), len(found)),
        "plate_recall": _rate(sum(1 for c in labelled if c.read), len(labelled)),
        "plate_precision": _rate(sum(1 for c in reported if c.truth), len(reported)),
        "false_plates": sum(1 for c in reported if not c.truth),
        "plate_free_images": sum(1 for v in truth.values() if not v),
        "plates_on_plate_free_images": plate_free_reports,
        **coco_map(coco_file, detections),
        "median_ms_per_image": round(statistics.median(timings) * 1000, 1),  # a batch's time / its images
        "by_type": {}, "by_size": {},
    }
    for kind in PLATE_TYPES:
        group = [c for c in labelled if c.truth["type"] == kind]
        metrics["by_type"][kind] = {"plates": len(group), "eir": _rate(sum(c.correct for c in group), len(group))}
    for low, high, bucket in SIZE_BUCKETS:
        group = [c for c in labelled if low <= c.truth["bbox"][2] - c.truth["bbox"][0] < high]
        hits = [f for f, size in zip(found, sizes) if low <= size < high]
        metrics["by_size"][bucket] = {"plates": len(group), "eir": _rate(sum(c.correct for c in group), len(group)),
                                      "detection_recall": _rate(sum(hits), len(hits))}
    return metrics, cases


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


HEADLINE = (("eir", "EIR (exact plate reads)"), ("char_accuracy", "character accuracy"),
            ("detection_recall", "plate detection recall"), ("plate_recall", "plates read (right or wrong)"),
            ("plate_precision", "read precision"), ("false_plates", "false plates"),
            ("plates_on_plate_free_images", "plates reported on plate-free images"), ("bbox_mAP", "COCO bbox mAP"),
            ("bbox_mAP_50", "COCO bbox mAP@50"), ("median_ms_per_image", "inference per image, in batches of 4 (ms, median)"))


def write_report(path: Path, sections: list[tuple[str, Path, dict, list[PlateCase]]]) -> None:
    """One self-contained HTML page: every set's headline figures side by side, then each set's breakdowns by
    plate type and size and its worst cases drawn. sections: (name, data folder, metrics, worst cases)."""
    def row(cells, tag="td"):
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    names = [name for name, *_ in sections]
    parts = ["<h1>platepipe evaluation</h1>",
             f"<p>The data set's own <b>{html.escape(names[0])}</b> split"
             + (f" and {len(names) - 1} out-of-distribution sets (other seeds, photos held out of training, "
                f"styles training never draws): {html.escape(', '.join(names[1:]))}" if len(names) > 1 else "")
             + ".</p>",
             "<table>" + row(["", *names], "th") + row(["images", *(m["images"] for _, _, m, _ in sections)])
             + row(["labelled plates", *(m["plates"] for _, _, m, _ in sections)])
             + "".join(row([label, *(m.get(key) for _, _, m, _ in sections)]) for key, label in HEADLINE) + "</table>"]
    for name, data_dir, metrics, worst in sections:
        about = f" ({metrics['about']})" if metrics.get("about") else ""
        parts += [f"<h2>{html.escape(name)}{html.escape(about)}</h2>",
                  f"<p>{metrics['images']} images, {metrics['plates']} labelled plates, "
                  f"{metrics['plate_free_images']} plate-free images.</p>",
                  "<table>" + row(["group", "plates", "EIR", "detection recall"], "th")
                  + "".join(row([k, v["plates"], v["eir"], v.get("detection_recall", "")])
                            for k, v in {**metrics["by_type"], **metrics["by_size"]}.items())
                  + "</table>",
                  f"<h3>Worst cases ({len(worst)})</h3>"]
        if not worst:
            parts.append("<p>Every plate was read right and nothing else was reported.</p>")
        for case in worst:
            want = f"{case.truth['type']} {case.truth['text']}" if case.truth else "no plate"
            got = f"{case.read['type']} {case.read['plate']}" if case.read else "missed"
            parts.append(f"<figure><img src='data:image/png;base64,{_crop_png(data_dir, case)}'>"
                         f"<figcaption>{html.escape(case.image)}: expected <b>{html.escape(want)}</b>, "
                         f"got <b>{html.escape(got)}</b></figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left}figure{display:inline-block;margin:.5em}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>platepipe evaluation</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


assert len(CLASSES) == 19
