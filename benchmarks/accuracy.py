"""Accuracy and speed of the quick preset, from scratch on this machine.

    .venv/bin/python benchmarks/accuracy.py --work runs/bench [--budget-min 30]
    .venv/bin/python benchmarks/accuracy.py --work runs/bench --from-run runs/<time>   (after make run)

1. renders the synthetic set (2,000 images, seed 0) and trains the quick preset with a time budget;
2. evaluates on its held-out test split, on a shifted set (another seed, larger photos, user-photo-like
   backgrounds it never saw) and on plate-free images;
3. times inference on 1280x720 images;
4. prints the results and the EIR curve (reader EIR on validation crops, detector mAP) against training time.
Re-running with the same --work reuses what is there (data, finished training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2


def curve(work_dir: Path, key: str) -> list[tuple[float, float]]:
    """(minutes since the stage started, value) for each validation, from the runner's scalars.json."""
    points, start, clock = [], None, 0.0
    for log in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "time" in rec:
                clock += rec["time"] * 50  # the logger records every 50 iterations
            if key in rec:
                points.append((round(clock / 60, 1), round(rec[key], 4)))
    return points


def adopt_run(run: Path, work: Path) -> None:
    """Link a local run's data set and training folder where this script looks for them."""
    work.mkdir(parents=True, exist_ok=True)
    (data,) = run.glob("kfp/*/data-step/data")
    (train,) = run.glob("work/train-*")
    for link, target in ((work / "data", data), (work / "train", train)):
        if not link.exists():
            link.symlink_to(target.resolve())
    steps = json.loads((run / "summary.json").read_text())["steps"]
    (work / "train_seconds.json").write_text(json.dumps(
        sum(s["seconds"] for s in steps if s["name"] == "train or fetch")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench")
    parser.add_argument("--budget-min", type=float, default=30)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--from-run", metavar="RUN", help="measure the model a `platepipe run --local` trained "
                                                            "(its data, checkpoints and training time) instead")
    args = parser.parse_args()
    work = Path(args.work)
    if args.from_run:
        adopt_run(Path(args.from_run), work)
    from platepipe.components.data import generate
    from platepipe.pipeline.config import settings
    from platepipe.components.evaluate import evaluate
    from platepipe.components.train import train
    from platepipe.serving.images import read_image_file
    from platepipe.serving.reader import PlateReader

    data = work / "data"
    if not (data / "dataset.json").exists():
        generate(data, settings("data", n_images=args.n, seed=0))
    pth = work / "train" / "pipeline.pth"
    started = time.monotonic()
    if not pth.exists():
        train(data, work / "train", settings("model", preset="quick"), settings("train", val_interval=200, time_budget_min=args.budget_min))
    train_min = (time.monotonic() - started) / 60
    if (work / "train_seconds.json").exists():  # trained by a local run
        train_min = json.loads((work / "train_seconds.json").read_text()) / 60
    shifted, empty = work / "shifted", work / "plate-free"
    if not (shifted / "dataset.json").exists():
        generate(shifted, settings("data", n_images=200, seed=99, min_size=900, max_size=1600, split_train=0, split_val=0, split_test=1))
    if not (empty / "dataset.json").exists():
        generate(empty, settings("data", n_images=200, seed=98, split_train=0, split_val=0, split_test=1, empty_fraction=1.0))
    results = {"train_minutes": round(train_min, 1)}
    for name, folder in (("test split", data), ("shifted set", shifted), ("plate-free", empty)):
        results[name] = evaluate(pth, folder, work / "eval" / name.replace(" ", "-"), progress=False)
    reader = PlateReader.from_file(pth)
    files = sorted((data / "images").iterdir())[:30]
    images = [cv2.resize(read_image_file(f), (1280, 720)) for f in files]
    reader.predict(images[:2])  # warm-up
    timings = []
    for img in images:
        t = time.perf_counter()
        reader.predict([img])
        timings.append((time.perf_counter() - t) * 1000)
    results["ms_per_1280x720"] = round(statistics.median(timings), 1)
    results["curve_reader_eir"] = curve(work / "train" / "reader", "plate/eir")
    results["curve_detector_map"] = curve(work / "train" / "detector", "coco/bbox_mAP")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    for name in ("test split", "shifted set"):
        m = results[name]
        print(f"{name}: EIR {m['eir']} on {m['plates']} plates, precision {m['plate_precision']}, "
              f"recall {m['plate_recall']}, char acc {m['char_accuracy']}, mAP {m['bbox_mAP']}, by size {m['by_size']}")
    print(f"plate-free: {results['plate-free']['plates_on_plate_free_images']} plates reported on "
          f"{results['plate-free']['images']} images")
    print(f"inference: median {results['ms_per_1280x720']} ms per 1280x720 image (CPU)")
    print(f"training: {results['train_minutes']} min; reader EIR curve {results['curve_reader_eir']}; "
          f"detector mAP curve {results['curve_detector_map']}")


if __name__ == "__main__":
    main()
