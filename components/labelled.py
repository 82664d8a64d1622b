"""A user's labelled plates -> a platepipe data set (the original project's "record" step).

Accepted, from a folder or gs://bucket/prefix:
  * platepipe layout: train.json + val.json (+ test.json) COCO files beside the images: used as they are;
  * one COCO file (any name) with images: split into train/val/test;
  * labelme: one JSON per image with rectangle or polygon shapes labelled with our class names
    (r_board, l_board, sub_text, main_text, 0-9, A-E).
Category names must be ours; category ids may be anything (they are remapped to our order). Images are
copied (never moved) into OUT/images; the split is a seeded hash of each image's name, so adding images
never reshuffles the others.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from platepipe.components.data import SPLITS, coco_categories, fingerprint
from platepipe.serving.labels import CLASSES, category_id


def _split_name(name: str, seed: int, split: tuple[float, float, float]) -> str:
    h = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if h < split[0] else "val" if h < split[0] + split[1] else "test"


def _labelme_to_records(folder: Path) -> list[dict]:
    records = []
    for js in sorted(folder.rglob("*.json")):
        doc = json.loads(js.read_text())
        if "shapes" not in doc:
            continue
        image = js.parent / doc.get("imagePath", js.with_suffix(".jpg").name)
        if not image.is_file():
            raise FileNotFoundError(f"{js}: its image {image} is missing: put the image beside its JSON")
        objects = []
        for i, shape in enumerate(doc["shapes"]):
            label = str(shape.get("label", "")).strip()
            if label not in CLASSES:
                raise ValueError(f"{js}: shape {i} has label {label!r}; use one of {', '.join(CLASSES)}")
            xs = [p[0] for p in shape["points"]]
            ys = [p[1] for p in shape["points"]]
            if len(xs) < 2 or max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
                raise ValueError(f"{js}: shape {i} ({label}) has no area; draw a rectangle or polygon")
            objects.append({"label": label, "bbox": (min(xs), min(ys), max(xs), max(ys))})
        records.append({"source": image, "width": doc.get("imageWidth"), "height": doc.get("imageHeight"),
                         "objects": objects})
    return records


def _coco_to_records(coco_file: Path) -> list[dict]:
    coco = json.loads(coco_file.read_text())
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    unknown = sorted(set(names.values()) - set(CLASSES))
    if unknown:
        raise ValueError(f"{coco_file}: categories {unknown} are not plate classes; rename them to ours: "
                         f"{', '.join(CLASSES)}")
    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        x, y, w, h = ann["bbox"]
        obj = {"label": names[ann["category_id"]], "bbox": (x, y, x + w, y + h)}
        if ann.get("text"):
            obj["text"] = ann["text"]
        by_image.setdefault(ann["image_id"], []).append(obj)
    records = []
    for im in coco.get("images", []):
        image = coco_file.parent / im["file_name"]
        if not image.is_file():
            raise FileNotFoundError(f"{coco_file}: image {image} is missing")
        records.append({"source": image, "width": im["width"], "height": im["height"],
                        "objects": by_image.get(im["id"], [])})
    return records


def detect_format(folder: Path) -> str:
    if (folder / "train.json").is_file() and (folder / "val.json").is_file():
        return "platepipe"
    jsons = sorted(folder.rglob("*.json"))
    for js in jsons[:50]:
        try:
            doc = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and "shapes" in doc:
            return "labelme"
        if isinstance(doc, dict) and {"images", "annotations", "categories"} <= set(doc):
            return "coco"
    raise ValueError(f"{folder}: found no COCO file or labelme JSON: label the images with labelme, or export COCO")


def prepare(source: str, out_dir: str | Path, fmt: str = "auto", seed: int = 0,
            split: tuple[float, float, float] | None = None) -> Path:
    """Turn a labelled folder (or gs:// prefix) into OUT with images/, train/val/test.json and dataset.json;
    split: the data section's (split_train, split_val, split_test), default configs/default.yaml's."""
    if split is None:
        from platepipe.pipeline.config import settings
        split = settings("data").split
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: choose a new folder or delete it")
    work = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        folder = Path(source)
        if source.startswith("gs://"):
            from platepipe.components.gcs import download_prefix
            folder = download_prefix(source, work / "download")
        elif not folder.is_dir():
            raise FileNotFoundError(f"labelled data folder not found: {source}")
        kind = detect_format(folder) if fmt == "auto" else fmt
        if kind == "platepipe":
            shutil.copytree(folder, work / "set", ignore=shutil.ignore_patterns("download"))
            final = work / "set"
        else:
            if kind == "labelme":
                records = _labelme_to_records(folder)
            else:
                files = [f for f in sorted(folder.rglob("*.json")) if {"images", "annotations"} <= set(json.loads(f.read_text()))]
                records = [r for f in files for r in _coco_to_records(f)]
            if not records:
                raise ValueError(f"{folder}: no labelled images found")
            final = work / "set"
            _write(records, final, seed, split)
        summary = {"source": source, "format": kind, "seed": seed, "classes": list(CLASSES),
                   "splits": {s: len(json.loads((final / f'{s}.json').read_text())["images"])
                              for s in SPLITS if (final / f"{s}.json").is_file()},
                   "fingerprint": fingerprint(final) if (final / "test.json").is_file() else None}
        (final / "dataset.json").write_text(json.dumps(summary, indent=2))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()
        final.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _write(records: list[dict], out: Path, seed: int, split: tuple[float, float, float]) -> None:
    from PIL import Image

    (out / "images").mkdir(parents=True)
    sets = {s: {"images": [], "annotations": [], "categories": coco_categories()} for s in SPLITS}
    used = set()
    for i, rec in enumerate(records):
        name = rec["source"].name
        if name in used:
            name = f"{i:06d}_{name}"
        used.add(name)
        shutil.copyfile(rec["source"], out / "images" / name)
        width, height = rec["width"], rec["height"]
        if not width or not height:
            with Image.open(rec["source"]) as im:
                width, height = im.size
        target = sets[_split_name(name, seed, split)]
        image_id = i + 1
        target["images"].append({"id": image_id, "file_name": f"images/{name}", "width": width, "height": height})
        for obj in rec["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            ann = {"id": sum(len(s["annotations"]) for s in sets.values()) + 1, "image_id": image_id,
                   "category_id": category_id(obj["label"]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                   "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if obj.get("text"):
                ann["text"] = obj["text"]
            target["annotations"].append(ann)
    for name, coco in sets.items():
        (out / f"{name}.json").write_text(json.dumps(coco))
