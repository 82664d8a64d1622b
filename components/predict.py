"""Predict: read the plates in image files with a pipeline.pth; JSON lines, framed text or drawn images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from platepipe.serving.images import BadImage, read_image_file
from platepipe.serving.plates import format_plate

GREEN, RED = (60, 200, 60), (40, 40, 230)


def draw_plates(img: np.ndarray, plates: list[dict], truth: list[dict] | None = None) -> np.ndarray:
    """The image with each plate boxed and its read written above it (red where a read is partial)."""
    out = img.copy()
    thick = max(1, round(max(img.shape[:2]) / 600))
    for plate in plates:
        x1, y1, x2, y2 = (int(v) for v in plate["bbox"])
        colour = GREEN if plate.get("valid", True) else RED
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        label = f"{plate['plate']} {plate['score']:.2f}"
        scale = max(0.5, thick * 0.5)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y = max(th + 4, y1 - 4)
        cv2.rectangle(out, (x1, y - th - 4), (x1 + tw + 4, y + 2), colour, -1)
        cv2.putText(out, label, (x1 + 2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    for t in truth or []:
        x1, y1, x2, y2 = (int(v) for v in t["bbox"])
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 160, 0), 1)
    return out


def predict_files(paths: list[str], model: str, draw_dir: str | None = None, device: str = "auto",
                  batch: int = 4) -> Iterator[dict]:
    """Yield {"image": path, "response": [plates]} or {"image": path, "error": message} per file."""
    from platepipe.serving.reader import PlateReader

    reader = PlateReader.from_file(model, device=device)
    if draw_dir:
        Path(draw_dir).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), batch):
        records, images = [], []
        for path in paths[start:start + batch]:
            try:
                images.append(read_image_file(path))
                records.append({"image": path})
            except BadImage as exc:
                records.append({"image": path, "error": str(exc)})
        results = iter(zip(images, reader.predict(images)))
        for record in records:  # in the order given
            if "error" not in record:
                img, result = next(results)
                record["response"] = result.plates
                if draw_dir:
                    name = Path(draw_dir) / (Path(record["image"]).stem + ".jpg")
                    cv2.imwrite(str(name), draw_plates(img, result.plates))
            yield record


def show(record: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(record)
    if "error" in record:
        return f"{record['image']}: error: {record['error']}"
    if not record["response"]:
        return f"{record['image']}: no plate found"
    return f"{record['image']}: {len(record['response'])} plate(s)\n" + "\n".join(
        format_plate(p) for p in record["response"])
