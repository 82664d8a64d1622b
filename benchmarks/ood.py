"""Out-of-distribution figures of trained models, side by side, on larger sets than the evaluate step's.

    .venv/bin/python benchmarks/ood.py --work runs/ood RUN [RUN ...]        (RUN: a `make run` folder, or a pipeline.pth)
    .venv/bin/python benchmarks/ood.py --work runs/ood --images 300 RUN ...

Renders once (under --work, reused after) the data step's out-of-distribution sets with --images images each,
from seeds of their own (data.seed 500: none of the seeds a run trains or evaluates on), plus the own-style test
set of that seed; evaluates every model on each and prints one Markdown table: EIR, detection recall, false plates
per set and model, and the median of each row. The sets are the ones the data step renders (components.data
OOD_SETS), with the default data settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path


def model_of(path: Path) -> Path:
    """A run folder's pipeline.pth (its export step's), or the file itself."""
    if path.is_file():
        return path
    found = sorted(path.glob("kfp/*/export-step/exported")) or sorted(path.glob("work/train-*/pipeline.pth"))
    if not found:
        raise SystemExit(f"{path}: no pipeline.pth in it (a `make run` folder or a pipeline.pth file)")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, metavar="RUN")
    parser.add_argument("--work", type=Path, default=Path("runs/ood"))
    parser.add_argument("--images", type=int, default=300, help="images per set (300)")
    parser.add_argument("--seed", type=int, default=500)
    args = parser.parse_args()

    from platepipe.components.data import generate
    from platepipe.components.evaluate import evaluate
    from platepipe.pipeline.config import load_config

    data = args.work / f"data-{args.seed}-{args.images}"
    if not (data / "dataset.json").exists():
        spec = dataclasses.replace(load_config().data, n_images=args.images, seed=args.seed, split_train=0.0,
                                   split_val=0.0, split_test=1.0)
        generate(data, spec, ood_images=args.images)
    rows: dict[str, dict[str, list]] = {}
    for model in args.models:
        pth = model_of(model)
        out = args.work / "eval" / model.name
        metrics = evaluate(pth, data, out, progress=True)
        (out / "model.txt").write_text(str(pth))
        for name, m in [("own styles (test)", metrics), *metrics["ood"].items()]:
            row = rows.setdefault(name, {"eir": [], "detection_recall": [], "false_plates": [], "plates": m["plates"]})
            for key in ("eir", "detection_recall", "false_plates"):
                row[key].append(m[key])
    names = [m.name for m in args.models]
    print(f"\n{args.images} images a set, seed {args.seed}; models: {', '.join(names)}\n")
    print("| set | plates | EIR per model | median EIR | detection recall (median) | false plates per model |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        if row["plates"]:
            eirs, median = " / ".join(f"{v:.3f}" for v in row["eir"]), f"{statistics.median(row['eir']):.3f}"
            recall = statistics.median(row["detection_recall"])
        else:  # plate-free: only the false plates say anything
            eirs = median = recall = "–"
        print(f"| {name} | {row['plates']} | {eirs} | {median} | {recall} | "
              f"{' / '.join(str(v) for v in row['false_plates'])} |")
    (args.work / "results.json").write_text(json.dumps({"models": names, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
