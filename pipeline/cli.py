"""The `platepipe` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.config import Config, ConfigError, dump_config, load_config

EPILOG = """Every command takes --config FILE (YAML, only the keys you change) and --set KEY=VALUE
(repeatable, e.g. --set train.max_iters=200). Defaults: configs/default.yaml."""


def _config_args() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE", help="YAML file with the settings to change")
    group.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                       help="override one setting, e.g. --set data.n_images=500 (repeatable)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platepipe",
        description="Train a licence-plate reader and take it to a GPU KServe endpoint, as a Kubeflow pipeline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"platepipe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _config_args()

    p = sub.add_parser("data", parents=[common], help="render a synthetic plate data set (COCO)",
                       description="Render Korean-style plates on procedural scenes or your photos and write "
                                   "images + COCO JSON (train/val/test) to --out.")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder to write the data set to")
    p.add_argument("--n", type=int, metavar="N", help="number of images (default: data.n_images)")
    p.add_argument("--seed", type=int, help="random seed; the same seed writes the same bytes (default: data.seed)")
    p.add_argument("--backgrounds", metavar="DIR", help="folder of photos to draw plates on (default: procedural)")
    p.add_argument("--workers", type=int, help="processes to render with (default: all cores)")
    p.add_argument("--preview", action="store_true",
                   help="also write OUT/preview.png, a contact sheet with every label drawn; on an existing "
                        "data set, only write the sheet")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", parents=[common], help="run the whole pipeline",
                       description="Run the pipeline's steps one after another and print a summary.")
    p.add_argument("--local", action="store_true", required=True,
                   help="run every step on this machine, no cluster (the only mode so far)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<time>)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", parents=[common], help="print the effective configuration as YAML",
                       description="Print the configuration after --config and --set are applied.")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("doctor", help="check that the set-up is complete",
                       description="Check torch, mmcv's compiled ops, mmdet, kfp, kserve, GCS client, "
                                   "TorchServe and Java; exit 1 if something required is missing.")
    p.set_defaults(func=cmd_doctor)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("platepipe")
    except PackageNotFoundError:
        return "dev"


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def cmd_data(args: argparse.Namespace) -> int:
    from components import data
    out = Path(args.out)
    if args.preview and (out / "dataset.json").exists():
        print(f"preview: {data.preview(out, out / 'preview.png')}")
        return 0
    spec = data.DataSpec.from_config(_load(args).data, n_images=args.n, seed=args.seed,
                                     backgrounds=args.backgrounds)
    started = time.monotonic()
    summary = data.generate(out, spec, workers=args.workers)
    took = time.monotonic() - started
    print(f"wrote {summary['n_images']} images with {summary['plates']} plates to {out} in {took:.1f} s "
          f"(train {summary['splits']['train']}, val {summary['splits']['val']}, test {summary['splits']['test']}; "
          f"fingerprint {summary['fingerprint']})")
    if args.preview:
        print(f"preview: {data.preview(out, out / 'preview.png')}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.local_run import run_local
    return run_local(_load(args), args.out)


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_load(args)))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline import doctor
    results = doctor.run_checks()
    print(doctor.report(results))
    if doctor.healthy(results):
        print("set-up ok")
        return 0
    print("set-up incomplete: fix the FAIL lines above (make setup installs everything)", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"platepipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"platepipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
