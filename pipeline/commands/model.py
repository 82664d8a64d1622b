"""Commands on the model itself: data, train, evaluate, predict."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from platepipe.pipeline.commands.common import load, with_given
from platepipe.pipeline.config import Config


def register(sub, common) -> None:
    """Add this module's commands to the `platepipe` parser."""
    p = sub.add_parser("data", parents=[common], help="render a synthetic plate data set (COCO)",
                       description="Render Korean-style plates (styles: data.styles) on real photos, procedural "
                                   "scenes or your photos and write images + COCO JSON (train/val/test) to --out, "
                                   "with the out-of-distribution sets in OUT/ood/.")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder to write the data set to")
    p.add_argument("--n", type=int, metavar="N", help="number of images (default: data.n_images)")
    p.add_argument("--seed", type=int, help="random seed; the same seed writes the same bytes (default: data.seed)")
    p.add_argument("--backgrounds", metavar="DIR",
                   help="folder of photos to draw plates on, or 'procedural' (default: the shipped photos)")
    p.add_argument("--ood", type=int, metavar="N",
                   help="images in each out-of-distribution set, 0 for none (default: data.ood_images)")
    p.add_argument("--workers", type=int, help="processes to render with (default: all cores)")
    p.add_argument("--preview", action="store_true",
                   help="also write OUT/preview.png, a contact sheet with every label drawn; on an existing "
                        "data set, only write the sheet")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", parents=[common], help="train the plate reader (or fetch one) and export pipeline.pth",
                       description="Train both stages (plate detector, plate reader) with MMEngine on the GPU if "
                                   "there is one, else the CPU, then export OUT/pipeline.pth. Run it again on the same "
                                   "--out to resume. With --model, fetch an existing pipeline.pth instead.")
    p.add_argument("--data", metavar="DIR", help="data set folder (from platepipe data, or COCO train/val/test.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (checkpoints, logs, pipeline.pth)")
    p.add_argument("--preset", choices=["quick", "full", "tiny"], help="model preset (default: model.preset)")
    p.add_argument("--model", metavar="PATH|gs://...", help="fetch this pipeline.pth instead of training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common], help="measure mAP and EIR; gate on EIR",
                       description="Read every image of a split and of each out-of-distribution set beside it "
                                   "(DIR/ood/NAME), compare with the labels and write metrics.json and report.html "
                                   "(worst cases drawn). Exit 1 when the EIR of evaluate.gate_set is below --min-eir.")
    p.add_argument("--model", required=True, metavar="PATH", help="pipeline.pth")
    p.add_argument("--data", required=True, metavar="DIR", help="data set folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (test)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json and report.html")
    p.add_argument("--min-eir", type=float, metavar="X", help="fail (exit 1) below this EIR (default: evaluate.min_eir)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="read the plates in image files",
                       description="Read plates with a pipeline.pth. Prints each plate framed like the original "
                                   "client, or JSON lines with --json; --draw writes annotated images.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, TIFF, ...)")
    p.add_argument("--model", required=True, metavar="PATH", help="pipeline.pth")
    p.add_argument("--json", action="store_true", help='one JSON line per image: {"image": ..., "response": [...]}')
    p.add_argument("--draw", metavar="DIR", help="write each image with its plates drawn to DIR")
    p.set_defaults(func=cmd_predict)


def _training_data(source: str, prepared: Path, cfg: Config) -> Path:
    """A platepipe data set as it is; anything else (labelme, one COCO file, gs://) converted once into OUT/data."""
    if not source.startswith("gs://") and (Path(source) / "train.json").is_file() and (Path(source) / "val.json").is_file():
        return Path(source)
    if (prepared / "dataset.json").is_file():
        print(f"using the data prepared earlier in {prepared}")
        return prepared
    from platepipe.components import labelled
    d = cfg.data
    out = labelled.prepare(source, prepared, fmt=d.format, seed=d.seed, split=d.split)
    print(f"prepared {source} as a data set in {out}")
    return out


def _select_device(device: str) -> None:
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def cmd_data(args: argparse.Namespace) -> int:
    from platepipe.components import data
    out = Path(args.out)
    if args.preview and (out / "dataset.json").exists():
        print(f"preview: {data.preview(out, out / 'preview.png')}")
        return 0
    cfg = load(args)
    spec = with_given(cfg.data, n_images=args.n, seed=args.seed, backgrounds=args.backgrounds)
    started = time.monotonic()
    summary = data.generate(out, spec, workers=args.workers,
                            ood_images=cfg.data.ood_images if args.ood is None else args.ood)
    took = time.monotonic() - started
    print(f"wrote {summary['n_images']} images with {summary['plates']} plates to {out} in {took:.1f} s "
          f"(train {summary['splits']['train']}, val {summary['splits']['val']}, test {summary['splits']['test']}; "
          f"styles {', '.join(f'{k} {v}' for k, v in summary['images_by_style'].items())}; "
          f"fingerprint {summary['fingerprint']})")
    for name, ood in summary.get("ood", {}).items():
        print(f"  out-of-distribution set {name}: {ood['n_images']} images, {ood['plates']} plates ({ood['about']})")
    if args.preview:
        print(f"preview: {data.preview(out, out / 'preview.png')}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from platepipe.components import export, train
    cfg = load(args)
    source = args.model or cfg.model.pretrained
    if source:
        print(f"fetched {export.fetch(source, args.out)}")
        return 0
    if not args.data:
        raise ValueError("train needs --data DIR (or --model to fetch an existing pipeline.pth)")
    data_dir = _training_data(args.data, Path(args.out) / "data", cfg)
    model = dataclasses.replace(cfg.model, preset=args.preset) if args.preset else cfg.model
    _select_device(model.device)
    path = train.train(data_dir, args.out, model, cfg.train)
    print(f"exported {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from platepipe.components.evaluate import evaluate, gate_eir, set_lines
    cfg = load(args)
    ev = cfg.evaluate
    metrics = evaluate(args.model, args.data, args.out, split=args.split, iou_threshold=ev.iou_threshold, report_worst=ev.report_worst)
    print(f"EIR {metrics['eir']:.4f} on {metrics['plates']} plates ({metrics['images']} images); "
          f"mAP {metrics['bbox_mAP']:.4f}, char accuracy {metrics['char_accuracy']}, "
          f"precision {metrics['plate_precision']}, recall {metrics['plate_recall']}, "
          f"{metrics['median_ms_per_image']} ms/image")
    for line in set_lines(metrics):
        print(f"  {line}")
    print(f"report: {Path(args.out) / 'report.html'}")
    min_eir = args.min_eir if args.min_eir is not None else ev.min_eir
    gate_set = ev.gate_set if args.split == "test" else "test"
    eir = gate_eir(metrics, gate_set)
    if eir < min_eir:
        print(f"gate failed: EIR {eir:.4f} on {gate_set if gate_set != 'test' else args.split} < {min_eir}",
              file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from platepipe.components.predict import predict_files, show
    cfg = load(args)
    failed = 0
    for record in predict_files(args.images, args.model, draw_dir=args.draw, device=cfg.model.device):
        failed += "error" in record
        print(show(record, args.json), flush=True)
    return 1 if failed else 0
