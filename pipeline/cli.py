"""The `platepipe` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
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
                       description="Read every image of a split, compare with its labels and write metrics.json and "
                                   "report.html (worst cases drawn). Exit 1 when EIR is below --min-eir.")
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

    p = sub.add_parser("archive", parents=[common], help="pack pipeline.pth into a TorchServe .mar + config",
                       description="Run torch-model-archiver with our handler and write OUT/model-store/<name>.mar and "
                                   "OUT/config/config.properties: the layout KServe's pytorch predictor mounts.")
    p.add_argument("--model", required=True, metavar="PATH", help="pipeline.pth")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder for the layout")
    p.add_argument("--version", default="1.0", help="model version inside the .mar (1.0)")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("serve", parents=[common], help="serve an archive layout with a local TorchServe",
                       description="Start TorchServe on 127.0.0.1 over DIR (from platepipe archive), wait until the "
                                   "model is READY and print its URLs. Token authorisation is on unless "
                                   "--no-token-auth. Stop it with --stop.")
    p.add_argument("layout", nargs="?", metavar="DIR", help="folder with model-store/ and config/")
    p.add_argument("--stop", action="store_true", help="stop the server of DIR (or every server started here)")
    p.add_argument("--no-token-auth", action="store_true", help="serve without token authorisation (local use only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("request", parents=[common], help="send images to a plate reader endpoint",
                       description="Post images (base64 JSON) to TorchServe or KServe and print the plates. "
                                   "Images too large for the server's limit are shrunk; 503 is retried.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--url", required=True, help="endpoint base URL, e.g. http://127.0.0.1:8085")
    p.add_argument("--protocol", choices=["original", "v1", "v2"], default="original")
    p.add_argument("--model-name", default=None, help="model name in the URL (default: serving.model_name)")
    p.add_argument("--token", help="bearer token (TorchServe token auth)")
    p.add_argument("--token-file", metavar="FILE", help="TorchServe key_file.json to take the inference key from")
    p.add_argument("--host", help="Host header (KServe behind an ingress gateway)")
    p.add_argument("--max-mb", type=float, default=6.0, help="largest request to send, MB (6)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of framed plates")
    p.set_defaults(func=cmd_request)

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


def cmd_train(args: argparse.Namespace) -> int:
    from components import export, train
    cfg = _load(args)
    source = args.model or cfg.model.pretrained
    if source:
        print(f"fetched {export.fetch(source, args.out)}")
        return 0
    if not args.data:
        raise ValueError("train needs --data DIR (or --model to fetch an existing pipeline.pth)")
    data_dir = _training_data(args.data, Path(args.out) / "data", cfg)
    spec = train.TrainSpec.from_config(cfg)
    if args.preset:
        spec = dataclasses.replace(spec, preset=args.preset)
    _select_device(cfg.model.device)
    path = train.train(data_dir, args.out, spec)
    print(f"exported {path}")
    return 0


def _training_data(source: str, prepared: Path, cfg: Config) -> Path:
    """A platepipe data set as it is; anything else (labelme, one COCO file, gs://) converted once into OUT/data."""
    if not source.startswith("gs://") and (Path(source) / "train.json").is_file() and (Path(source) / "val.json").is_file():
        return Path(source)
    if (prepared / "dataset.json").is_file():
        print(f"using the data prepared earlier in {prepared}")
        return prepared
    from components import labelled
    d = cfg.data
    out = labelled.prepare(source, prepared, fmt=d.format, seed=d.seed, split=(d.split_train, d.split_val, d.split_test))
    print(f"prepared {source} as a data set in {out}")
    return out


def _select_device(device: str) -> None:
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from components.evaluate import evaluate
    cfg = _load(args)
    ev = cfg.evaluate
    metrics = evaluate(args.model, args.data, args.out, split=args.split, score_threshold=ev.score_threshold,
                       iou_threshold=ev.iou_threshold, report_worst=ev.report_worst)
    print(f"EIR {metrics['eir']:.4f} on {metrics['plates']} plates ({metrics['images']} images); "
          f"mAP {metrics['bbox_mAP']:.4f}, char accuracy {metrics['char_accuracy']}, "
          f"precision {metrics['plate_precision']}, recall {metrics['plate_recall']}, "
          f"{metrics['median_ms_per_image']} ms/image")
    print(f"report: {Path(args.out) / 'report.html'}")
    min_eir = args.min_eir if args.min_eir is not None else ev.min_eir
    if metrics["eir"] < min_eir:
        print(f"gate failed: EIR {metrics['eir']:.4f} < {min_eir}", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from components.predict import predict_files, show
    cfg = _load(args)
    failed = 0
    for record in predict_files(args.images, args.model, draw_dir=args.draw, device=cfg.model.device):
        failed += "error" in record
        print(show(record, args.json), flush=True)
    return 1 if failed else 0


def cmd_archive(args: argparse.Namespace) -> int:
    from components.archive import ServingSpec, archive
    cfg = _load(args)
    spec = ServingSpec.from_config(cfg.serving, bind_address="0.0.0.0", token_auth=False)
    out = archive(args.model, args.out, spec, version=args.version)
    print(f"wrote {out / 'model-store' / (spec.model_name + '.mar')} and {out / 'config' / 'config.properties'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving import server
    served = Path(_state_home()) / "served.json"
    known = json.loads(served.read_text()) if served.exists() else []
    if args.stop:
        layouts = [args.layout] if args.layout else known
        stopped = [l for l in layouts if server.stop(l)]
        served.write_text(json.dumps([l for l in known if l not in stopped]))
        print(f"stopped TorchServe on {', '.join(stopped)}" if stopped else "no TorchServe of ours was running")
        return 0
    if not args.layout:
        raise ValueError("serve needs DIR (a folder made by platepipe archive), or --stop")
    s = _load(args).serving
    token_auth = s.token_auth and not args.no_token_auth
    if not token_auth:
        print("WARNING: token authorisation is OFF: anyone who can reach these ports can use and manage the model",
              file=sys.stderr)
    srv = server.start(args.layout, inference_port=s.inference_port, management_port=s.management_port,
                       metrics_port=s.metrics_port, token_auth=token_auth)
    layout = str(Path(args.layout).resolve())
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_text(json.dumps(sorted(set(known) | {layout})))
    print(f"TorchServe is serving {srv.model_name} (READY)")
    print(f"  inference   {srv.inference_url}/predictions/{srv.model_name}  "
          f"(KServe v1: /v1/models/{srv.model_name}:predict, v2: /v2/models/{srv.model_name}/infer)")
    print(f"  management  {srv.management_url}/models/{srv.model_name}")
    print(f"  metrics     {srv.metrics_url}/metrics")
    if srv.token_auth:
        print(f"  token auth  on: send 'Authorization: Bearer {srv.keys['inference']}' "
              f"(keys in {srv.state_dir / 'key_file.json'}; `platepipe request --token-file` reads it)")
    print(f"stop it with: platepipe serve --stop {layout}")
    return 0


def _state_home() -> str:
    return os.environ.get("PLATEPIPE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                            os.path.expanduser("~/.cache"), "platepipe")


def cmd_request(args: argparse.Namespace) -> int:
    from serving import client
    from serving.plates import format_plate
    cfg = _load(args)
    token = args.token
    if args.token_file:
        token = json.loads(Path(args.token_file).read_text())["inference"]["key"]
    endpoint = client.Endpoint(args.url, model=args.model_name or cfg.serving.model_name, protocol=args.protocol,
                               token=token, host=args.host)
    max_bytes = int(args.max_mb * 1024 * 1024)
    failed = 0
    for path in args.images:
        try:
            plates = client.request(endpoint, [Path(path).read_bytes()], max_bytes=max_bytes)[0]
        except (client.ClientError, OSError) as exc:
            failed += 1
            print(json.dumps({"image": path, "error": str(exc)}) if args.json else f"{path}: error: {exc}")
            continue
        if args.json:
            print(json.dumps({"image": path, "response": plates}))
        else:
            print(f"{path}: {len(plates)} plate(s)" + "".join("\n" + format_plate(p) for p in plates))
    return 1 if failed else 0


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


def _quiet_libraries() -> None:
    """mmdet and torch repeat deprecation warnings on every forward pass; they are not the user's concern."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.cuda.amp.autocast.*")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*torch.meshgrid.*")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"platepipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"platepipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
