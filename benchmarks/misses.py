"""Where a model's plates go wrong, plate by plate: not found by the detector, boxed off the label, read wrong,
read partly, or read right under the read score.

    .venv/bin/python benchmarks/misses.py MODEL DATA_DIR [--set ood/original]

MODEL: a pipeline.pth; DATA_DIR: a data set (the data step's output); --set: a folder inside it holding the
test.json to read (default: the data set's own test split). Prints one line per plate not read right and the
count of each kind.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def kind_of(truth: dict, boxes: list, reads: list[dict]) -> tuple[str, float]:
    """What happened to one labelled plate, and the best IoU of a plate box with its label."""
    from platepipe.serving.plates import iou

    best = max((iou(truth["bbox"], b.bbox) for b in boxes), default=0.0)
    read = max(reads, key=lambda r: iou(r["bbox"], truth["bbox"]), default=None)
    if read and iou(read["bbox"], truth["bbox"]) < 0.3:
        read = None
    if read and read["plate"] == truth["text"] and read["valid"] and best >= 0.5 and read["score"] >= 0.25:
        return "read right", best
    if best < 0.3:
        return "not found", best
    if best < 0.5:
        return "boxed off the label (IoU 0.3-0.5)", best
    if read is None or not read["valid"]:
        return "read partly", best
    if read["plate"] != truth["text"]:
        return "read wrong", best
    return "read right under the read score", best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data", type=Path)
    parser.add_argument("--set", default="", help="folder inside DATA holding test.json (e.g. ood/original)")
    args = parser.parse_args()

    from platepipe.components.evaluate import truth_plates
    from platepipe.serving.images import read_image_file
    from platepipe.serving.reader import PlateReader

    reader = PlateReader.from_file(args.model)
    reader.keep_partial = True  # partial reads too, to tell them from plates never boxed
    folder = args.data / args.set
    coco = json.loads((folder / "test.json").read_text())
    truth = truth_plates(coco)
    counts: Counter = Counter()
    for im in coco["images"]:
        if not truth[im["id"]]:
            continue
        result = reader.predict([read_image_file(folder / im["file_name"])])[0]
        boxes = [d for d in result.detections if d.label.endswith("_board")]
        for t in truth[im["id"]]:
            kind, best = kind_of(t, boxes, result.plates)
            counts[kind] += 1
            if kind != "read right":
                print(f"{kind:<36} {im['file_name']} {t['type']} {t['text']} {t['bbox'][2] - t['bbox'][0]:.0f} px wide "
                      f"in {im['width']}x{im['height']}, best box IoU {best:.2f}")
    print(dict(counts))


if __name__ == "__main__":
    main()
