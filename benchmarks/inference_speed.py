"""Inference time of one or more pipeline.pth files, taking turns image by image in one process.

    .venv/bin/python benchmarks/inference_speed.py MODEL.pth [MODEL.pth ...] --images DIR [--n 30] [--repeats 2]

Each image (the first N of DIR, resized to 1280x720) goes through every model in turn, so that a machine whose
speed drifts (as this one's does) slows them all alike; the median milliseconds per image and the plates read
on the first pass are printed per model. Second looks included, batch 1, the device PlateReader picks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="pipeline.pth files")
    parser.add_argument("--images", type=Path, required=True, help="a folder of images (a data set's images/)")
    parser.add_argument("--n", type=int, default=30, help="images to time (default 30)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images (default 2)")
    args = parser.parse_args()

    import cv2

    from platepipe.serving.images import read_image_file
    from platepipe.serving.reader import PlateReader

    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.n]
    if not files:
        parser.error(f"no .jpg/.png images in {args.images}")
    images = [cv2.resize(read_image_file(f), (1280, 720)) for f in files]
    readers = [PlateReader.from_file(m) for m in args.models]
    for reader in readers:
        reader.predict(images[:2])  # warm-up
    ms = [[] for _ in readers]
    plates = [0 for _ in readers]
    for rep in range(args.repeats):
        for img in images:
            for k, reader in enumerate(readers):
                started = time.perf_counter()
                result = reader.predict([img])[0]
                ms[k].append((time.perf_counter() - started) * 1000)
                plates[k] += len(result.plates) if rep == 0 else 0
    for model, times, found in zip(args.models, ms, plates):
        print(f"{model}: median {statistics.median(times):.1f} ms per 1280x720 image ({len(times)} timed), "
              f"{found} plates on {len(images)} images")


if __name__ == "__main__":
    main()
