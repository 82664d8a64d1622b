"""The `platepipe` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import warnings
import time
from pathlib import Path

from platepipe.pipeline.config import Config, ConfigError, dump_config, load_config

EPILOG = """Every command takes --config FILE (YAML, only the keys you change) and --set KEY=VALUE
(repeatable, e.g. --set train.max_iters=200). Defaults: configs/default.yaml."""


def _config_args() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE", help="YAML file with the settings to change")
    group.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                       help="override one setting, e.g. --set data.n_images=500 (repeatable)")
    return parent


def _kfp_args() -> argparse.ArgumentParser:
    """Where the KFP API is and which pipeline package to use: upload-pipeline, submit, schedule."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Kubeflow Pipelines")
    group.add_argument("--host", metavar="URL", help="KFP API URL, e.g. http://localhost:8080 (a port-forward of "
                       "svc/ml-pipeline-ui) or https://KUBEFLOW/pipeline (default: kfp.host, else "
                       "KF_PIPELINES_ENDPOINT, else the in-cluster service or the kube config)")
    group.add_argument("--token", help="bearer token (default: KF_PIPELINES_TOKEN; else kfp.Client's own "
                       "credentials: service account, kube config, ~/.config/kfp/context.json)")
    group.add_argument("--namespace", metavar="NS", help="your profile namespace on multi-user Kubeflow")
    group.add_argument("--package", metavar="FILE", help="compiled pipeline YAML (default: compile it now from "
                       "the configuration, as platepipe compile does)")
    _placeholder_arg(group)
    return parent


def _placeholder_arg(parser) -> None:
    parser.add_argument("--allow-placeholder-images", action="store_true",
                        help="go on although kfp.image or deploy.image is a local placeholder or unset (a cluster "
                             "that has the image under that name, or a pipeline that never deploys)")


def _run_args(parser: argparse.ArgumentParser) -> None:
    """What submit and schedule share: the pipeline version to run and its parameters."""
    parser.add_argument("--pipeline-version", metavar="V", help="run version V (or 'latest') of the uploaded "
                        "pipeline kfp.pipeline_name instead of the package")
    parser.add_argument("--param", dest="params", metavar="NAME=VALUE", action="append", default=[],
                        help="pipeline parameter, read as its type (repeatable), e.g. --param min_eir=0.9")
    parser.add_argument("--experiment", metavar="NAME", help="experiment (default: kfp.experiment; created if missing)")
    parser.add_argument("--no-cache", action="store_true", help="run every step again, ignoring cached results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platepipe",
        description="Train a licence-plate reader and take it to a GPU KServe endpoint, as a Kubeflow pipeline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"platepipe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _config_args()

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

    p = sub.add_parser("archive", parents=[common], help="pack pipeline.pth into a TorchServe .mar + config",
                       description="Run torch-model-archiver with our handler and write OUT/model-store/<name>.mar and "
                                   "OUT/config/config.properties: the layout KServe's pytorch predictor mounts.")
    p.add_argument("--model", required=True, metavar="PATH", help="pipeline.pth")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder for the layout")
    p.add_argument("--version", default="1.0", help="model version inside the .mar (1.0)")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("upload", parents=[common], help="upload an archive layout to GCS as a new model version",
                       description="Upload DIR (from platepipe archive) to gs://BUCKET/PREFIX/VERSION/: the .mar, "
                                   "then config/config.properties, then platepipe-version.json (the manifest that "
                                   "marks the version complete). Each object is verified (crc32c, md5); transient "
                                   "errors are retried; a failed upload removes what it wrote. Prints the "
                                   "storageUri for KServe. Credentials: ADC, or the key file named by the variable "
                                   "in gcs.credentials_env.")
    p.add_argument("layout", nargs="?", metavar="DIR", help="folder with model-store/<name>.mar and config/")
    p.add_argument("--to", metavar="gs://BUCKET/PREFIX", help="destination (default: gs://{gcs.bucket}/{gcs.prefix})")
    p.add_argument("--version", help="version folder (default: gcs.version, else UTC time + short hash of the .mar, "
                                     "e.g. 20261125-091500-3fa2c1d9)")
    p.add_argument("--force", action="store_true", help="replace the version if it exists (default: refuse)")
    p.add_argument("--list", nargs="?", const="", metavar="gs://BUCKET/PREFIX",
                   help="list the versions under this address (default: --to, or the configured one), oldest "
                        "first, with size and whether each is complete")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("deploy", parents=[common], help="create or update the KServe InferenceService",
                       description="Create (or update in place) the serving.kserve.io/v1beta1 InferenceService that "
                                   "serves the archive at --storage-uri on platepipe's own ServingRuntime (created "
                                   "or updated with deploy.image first; deploy.manage_runtime: false checks yours), "
                                   "wait until it is Ready and print its URL and Host header. Without a serving "
                                   "image, or without the permissions it needs (checked first: k8s/rbac.yaml grants "
                                   "them), nothing is created. If it does not become Ready, the controller's reason "
                                   "is printed and the previous spec is restored (or the new service deleted). "
                                   "Settings: the deploy section.")
    p.add_argument("--storage-uri", metavar="gs://...", help="the archive layout (model-store/ + config/), e.g. "
                                                              "the storageUri printed by platepipe upload")
    p.add_argument("--name", help="InferenceService name (default: deploy.name)")
    p.add_argument("-n", "--namespace", help="Kubernetes namespace (default: deploy.namespace)")
    p.add_argument("--protocol", choices=["v1", "v2"], help="KServe protocol (default: deploy.protocol)")
    p.add_argument("--image", metavar="REGISTRY/IMAGE:TAG",
                   help="serving image pushed by `make images` (default: deploy.image)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for Ready (default: deploy.timeout_s)")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, else the pod's service account)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the ServingRuntime and InferenceService YAML; touch nothing")
    mode.add_argument("--status", action="store_true",
                      help="print its conditions, URL, Host header and traffic (exit 1 when not Ready)")
    mode.add_argument("--delete", action="store_true", help="delete the InferenceService")
    p.set_defaults(func=cmd_deploy)

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
    _endpoint_arguments(p, protocol_help="original (TorchServe's API), v1 or v2 "
                                         "(default: original; with --isvc deploy.protocol)")
    p.add_argument("--max-mb", type=float, default=6.0, help="largest request to send, MB (6)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of framed plates")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("smoke-test", parents=[common], help="check a live endpoint with images of known plates",
                       description="Post smoke.n_images synthetic images with known plates, one plate-free image and "
                                   "the images listed in smoke.user_images (YAML) to the endpoint; check type, "
                                   "region, letter and serial of every plate and the shape of every field. Writes "
                                   "OUT/smoke.json and OUT/smoke.html; exit 1 (with a table of expected vs got) "
                                   "when anything is wrong.")
    _endpoint_arguments(p, protocol_help="default: smoke.protocol, else deploy.protocol")
    p.add_argument("--out", metavar="DIR", help="folder for smoke.json and smoke.html (default: runs/smoke-<time>)")
    p.set_defaults(func=cmd_smoke_test)

    p = sub.add_parser("run", parents=[common], help="run the whole pipeline",
                       description="Run the pipeline's steps one after another and print a summary.")
    p.add_argument("--local", action="store_true", required=True,
                   help="run every step on this machine, no cluster (the only mode so far)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<time>)")
    p.add_argument("--keep-serving", action="store_true",
                   help="leave the local TorchServe of the deploy step running after the run (stop it with "
                        "platepipe serve --stop)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", parents=[common], help="compile the Kubeflow pipeline to YAML",
                       description="Write the pipeline (KFP v2 IR YAML) for the Kubeflow UI's 'Upload pipeline', "
                                   "`kfp pipeline create` or `platepipe upload-pipeline`. Cluster settings (image, "
                                   "GPU, node selector, tolerations, PVC, GCS secret, retries, caching) come from "
                                   "the configuration; the configuration itself becomes the run parameter `config`.")
    p.add_argument("-o", "--output", default="pipeline.yaml", metavar="FILE", help="where to write it (pipeline.yaml)")
    _placeholder_arg(p)
    p.set_defaults(func=cmd_compile)

    kfp_args = _kfp_args()
    p = sub.add_parser("upload-pipeline", parents=[common, kfp_args], help="upload the pipeline to Kubeflow Pipelines",
                       description="Upload the compiled pipeline as a new pipeline named kfp.pipeline_name, or with "
                                   "--version as a new version of it (the pipeline is created if it does not "
                                   "exist). Prints the pipeline's URL in the KFP UI.")
    p.add_argument("--version", metavar="V", help="upload as version V (required when the pipeline already exists)")
    p.add_argument("--description", help="pipeline (version) description (default: the pipeline's own)")
    p.set_defaults(func=cmd_upload_pipeline)

    p = sub.add_parser("submit", parents=[common, kfp_args], help="start a pipeline run on Kubeflow Pipelines",
                       description="Start a run of the pipeline (the package, or an uploaded --pipeline-version) "
                                   "with --param values, in the experiment kfp.experiment (created if missing), and "
                                   "print its URL. Parameters are checked against the pipeline's before anything "
                                   "is sent. With --wait, follow the run and exit 1 unless it SUCCEEDED.")
    _run_args(p)
    p.add_argument("--run-name", metavar="NAME", help="run name (default: pipeline name + UTC time)")
    p.add_argument("--wait", action="store_true", help="wait until the run ends, printing its progress")
    p.add_argument("--timeout", type=float, default=6 * 3600, metavar="S",
                   help="with --wait: give up waiting after S seconds (21600); the run goes on")
    p.add_argument("--poll", type=float, default=10.0, metavar="S", help="with --wait: seconds between checks (10)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("schedule", parents=[common, kfp_args], help="run the pipeline on a cron schedule (recurring run)",
                       description="Create a KFP recurring run of the pipeline (the package, or an uploaded "
                                   "--pipeline-version) in kfp.experiment. KFP's cron has 6 fields, seconds first: "
                                   "the usual 5-field cron is converted by prefixing '0 ' ('0 3 * * 0' = Sundays "
                                   "03:00 becomes '0 0 3 * * 0'); 6 fields and @daily, @weekly, ... are kept. Times "
                                   "are in the KFP scheduler's time zone (usually UTC). --list shows the "
                                   "experiment's recurring runs; --delete NAME removes one.")
    p.add_argument("--cron", metavar="EXPR", help="cron expression, 5 fields (minute hour day month weekday) or "
                   "KFP's 6 (seconds first), e.g. \"0 3 * * 0\"")
    p.add_argument("--name", metavar="NAME", help="recurring run name (default: kfp.pipeline_name + '-schedule')")
    _run_args(p)
    p.add_argument("--max-concurrency", type=int, default=1, metavar="N", help="runs allowed at once, 1-10 (1)")
    p.add_argument("--no-catchup", action="store_true",
                   help="after a pause, start only the latest missed run instead of every missed one")
    p.add_argument("--list", action="store_true", help="list the experiment's recurring runs")
    p.add_argument("--delete", metavar="NAME", help="delete the recurring run NAME (or id)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("config", parents=[common], help="print the effective configuration as YAML",
                       description="Print the configuration after --config and --set are applied.")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("doctor", parents=[common], help="check that the set-up (or the cluster) is complete",
                       description="Check torch, mmcv's compiled ops, mmdet, kfp, kserve, GCS client, "
                                   "TorchServe and Java; exit 1 if something required is missing. With --cluster: "
                                   "check the cluster a deploy goes to instead (KServe's CRDs, the serving runtime, "
                                   "RBAC for every verb the deploy uses, GPU nodes, the storage service account), "
                                   "each with its fix.")
    p.add_argument("--cluster", action="store_true", help="check the Kubernetes cluster instead of this machine")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, else the pod's service account)")
    p.add_argument("-n", "--namespace", help="namespace deploys go to (default: deploy.namespace)")
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
    from platepipe.components import data
    out = Path(args.out)
    if args.preview and (out / "dataset.json").exists():
        print(f"preview: {data.preview(out, out / 'preview.png')}")
        return 0
    cfg = _load(args)
    spec = data.DataSpec.from_config(cfg.data, n_images=args.n, seed=args.seed, backgrounds=args.backgrounds)
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
    from platepipe.components import labelled
    d = cfg.data
    out = labelled.prepare(source, prepared, fmt=d.format, seed=d.seed, split=(d.split_train, d.split_val, d.split_test))
    print(f"prepared {source} as a data set in {out}")
    return out


def _select_device(device: str) -> None:
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from platepipe.components.evaluate import evaluate, gate_eir, set_lines
    cfg = _load(args)
    ev = cfg.evaluate
    metrics = evaluate(args.model, args.data, args.out, split=args.split, plate_score=ev.plate_score, char_score=ev.char_score,
                       iou_threshold=ev.iou_threshold, report_worst=ev.report_worst)
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
    cfg = _load(args)
    failed = 0
    for record in predict_files(args.images, args.model, draw_dir=args.draw, device=cfg.model.device):
        failed += "error" in record
        print(show(record, args.json), flush=True)
    return 1 if failed else 0


def cmd_archive(args: argparse.Namespace) -> int:
    from platepipe.components.archive import ServingSpec, archive
    cfg = _load(args)
    spec = ServingSpec.from_config(cfg.serving, bind_address="0.0.0.0", token_auth=False)
    out = archive(args.model, args.out, spec, version=args.version)
    print(f"wrote {out / 'model-store' / (spec.model_name + '.mar')} and {out / 'config' / 'config.properties'}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from platepipe.components import upload
    g = _load(args).gcs
    if args.list is not None:
        if args.layout:
            raise ValueError("upload --list takes no DIR: write platepipe upload --list gs://BUCKET/PREFIX")
        uri = args.list or args.to or upload.destination(g)
        versions = upload.list_versions(uri, credentials_env=g.credentials_env,
                                        progress=lambda line: print(line, file=sys.stderr))
        if not versions:
            print(f"no versions under {uri}")
            return 0
        print(f"versions under {uri.rstrip('/')}, oldest first (newest last):")
        width = max(len(v["version"]) for v in versions)
        for v in versions:
            state = "complete" if v["complete"] else f"INCOMPLETE ({v['problem']})"
            print(f"  {v['version']:<{width}}  {v['updated'].replace('T', ' ').rstrip('Z')} UTC  "
                  f"{upload.human_size(v['size']):>9}  {state:<10}  {v['storage_uri']}".rstrip())
        return 0
    if not args.layout:
        raise ValueError("upload needs DIR (a folder made by platepipe archive), or --list")
    result = upload.upload(args.layout, args.to or upload.destination(g), version=args.version or g.version,
                           force=args.force, credentials_env=g.credentials_env,
                           progress=lambda line: print(line, flush=True))
    print(f"uploaded version {result['version']} ({len(result['objects'])} objects + manifest, verified)")
    print(f"storageUri: {result['storage_uri']}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from platepipe.components import deploy
    d = _load(args).deploy
    name, namespace = args.name or d.name, args.namespace or d.namespace
    if args.status:
        isvc = deploy.get(name, namespace, kubeconfig=args.kubeconfig)
        print(deploy.format_status(isvc, d.ingress_host, d.ingress_port))
        return 0 if deploy.is_ready(isvc) else 1
    if args.delete:
        gone = deploy.delete(name, namespace, kubeconfig=args.kubeconfig)
        print(f"deleted InferenceService {namespace}/{name}" if gone
              else f"there is no InferenceService {namespace}/{name}: nothing to delete")
        return 0
    if not args.storage_uri:
        raise ValueError("deploy needs --storage-uri gs://BUCKET/PATH (the folder with model-store/ and config/, "
                         "as platepipe upload prints it), or --status / --delete")
    spec = deploy.DeploySpec.from_config(d, args.storage_uri, name=args.name, namespace=args.namespace,
                                         protocol=args.protocol, timeout_s=args.timeout, image=args.image)
    if args.dry_run:
        from platepipe.components.runtime import runtime_manifest
        docs = [deploy.manifest(spec)]
        if spec.manage_runtime or spec.image:
            docs.insert(0, runtime_manifest(spec))
        sys.stdout.write("---\n".join(deploy.to_yaml(doc) for doc in docs))
        return 0
    result = deploy.deploy(spec, kubeconfig=args.kubeconfig, ingress_host=d.ingress_host, ingress_port=d.ingress_port)
    print(f"InferenceService {namespace}/{name} is Ready ({'created' if result.created else 'updated'}, "
          f"generation {result.generation})")
    print(f"  URL          {result.url}")
    print(f"  Host header  {result.host}")
    print(f"try it: platepipe request IMAGE --isvc {name} -n {namespace} --protocol {spec.protocol}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from platepipe.components import local_server as server
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
    from platepipe.components import client
    from platepipe.serving.plates import format_plate
    cfg = _load(args)
    endpoint = _endpoint(args, cfg, args.protocol or (cfg.deploy.protocol if args.isvc else "original"))
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


def _endpoint_arguments(p: argparse.ArgumentParser, protocol_help: str) -> None:
    """The options that name an endpoint and how to talk to it (read by _endpoint)."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="endpoint base URL, e.g. http://127.0.0.1:8085")
    where.add_argument("--isvc", metavar="NAME", help="a KServe InferenceService: URL and Host header from its status "
                                                      "(deploy.ingress_host/ingress_port override the address)")
    p.add_argument("-n", "--namespace", help="namespace of --isvc (default: deploy.namespace)")
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for --isvc (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--protocol", choices=["original", "v1", "v2"],
                   help=protocol_help)
    p.add_argument("--model-name", default=None, help="model name in the URL (default: serving.model_name)")
    p.add_argument("--token", help="bearer token (TorchServe token auth)")
    p.add_argument("--token-file", metavar="FILE", help="TorchServe key_file.json to take the inference key from")
    p.add_argument("--host", help="Host header (KServe behind an ingress gateway)")


def _endpoint(args: argparse.Namespace, cfg: Config, protocol: str):
    """The client Endpoint of --url, or of --isvc NAME [-n NS] (URL and Host header from the InferenceService's
    status), with --model-name, --token / --token-file and --host."""
    from platepipe.components import client
    token = args.token
    if args.token_file:
        token = json.loads(Path(args.token_file).read_text())["inference"]["key"]
    url, host = args.url, args.host
    if args.isvc:
        from platepipe.components import deploy
        d = cfg.deploy
        url, isvc_host = deploy.endpoint_for(args.isvc, args.namespace or d.namespace, kubeconfig=args.kubeconfig,
                                             ingress_host=d.ingress_host, ingress_port=d.ingress_port)
        host = host or isvc_host
    return client.Endpoint(url, model=args.model_name or cfg.serving.model_name, protocol=protocol, token=token,
                           host=host)


def cmd_smoke_test(args: argparse.Namespace) -> int:
    from platepipe.components.smoke_test import SmokeTestFailed, smoke_test
    cfg = _load(args)
    s = cfg.smoke
    endpoint = _endpoint(args, cfg, args.protocol or s.protocol or cfg.deploy.protocol)
    out = Path(args.out or Path("runs") / time.strftime("smoke-%Y%m%d-%H%M%S"))
    print(f"smoke test of {endpoint.url.rstrip('/')}{endpoint.path()} ({endpoint.protocol}): {s.n_images} "
          f"synthetic images, 1 plate-free" + (f", the images of {s.user_images}" if s.user_images else ""), flush=True)
    try:
        summary = smoke_test(endpoint, out, n_images=s.n_images, user_images=s.user_images, timeout=s.timeout_s,
                             echo=lambda line: print(f"  {line}", flush=True))
    except SmokeTestFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(summary["table"])
    print(f"smoke test passed: {summary['plates_correct']} of {summary['plates_expected']} plates read right on "
          f"{summary['images']} images, median {summary['latency_ms_median']} ms per request")
    print(f"report: {out / 'smoke.html'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from platepipe.pipeline.local_run import run_local
    return run_local(_load(args), args.out, keep_serving=args.keep_serving)


def cmd_compile(args: argparse.Namespace) -> int:
    from platepipe.pipeline.pipeline import check_images, compile_pipeline
    cfg = _load(args)
    check_images(cfg, args.allow_placeholder_images)
    path = compile_pipeline(cfg, args.output)
    print(f"wrote {path}: upload it in the Kubeflow UI (Pipelines > Upload pipeline), or run "
          f"`platepipe upload-pipeline --package {path}`")
    return 0


@contextlib.contextmanager
def _pipeline_package(args: argparse.Namespace, cfg: Config):
    """--package FILE, or the pipeline compiled now from the configuration into a temporary folder."""
    from platepipe.pipeline import kfp_client
    from platepipe.pipeline.pipeline import check_images, compile_pipeline, package_images
    if args.package:
        package = kfp_client.load_package(args.package)
        check_images(None, args.allow_placeholder_images, package_images(package.spec))
        yield package
        return
    check_images(cfg, args.allow_placeholder_images)
    with tempfile.TemporaryDirectory(prefix="platepipe-kfp-") as tmp:
        yield kfp_client.load_package(compile_pipeline(cfg, Path(tmp) / "pipeline.yaml"))


@contextlib.contextmanager
def _run_source(args: argparse.Namespace, cfg: Config):
    """(source, connection) for submit/schedule; the package's parameters are checked before connecting."""
    from platepipe.pipeline import kfp_client
    if args.pipeline_version and args.package:
        raise ValueError("give --package FILE or --pipeline-version V, not both")
    params = kfp_client.parse_param_args(args.params)
    if args.pipeline_version:
        kfp = _kfp_connect(args, cfg)
        yield kfp_client.find_version(kfp, cfg.kfp.pipeline_name, args.pipeline_version), params, kfp
        return
    with _pipeline_package(args, cfg) as package:
        kfp_client.check_params(package.parameters, params)
        yield package, params, _kfp_connect(args, cfg)


def _kfp_connect(args: argparse.Namespace, cfg: Config):
    from platepipe.pipeline import kfp_client
    return kfp_client.connect(args.host or cfg.kfp.host, namespace=args.namespace, token=args.token)


def cmd_upload_pipeline(args: argparse.Namespace) -> int:
    from platepipe.pipeline import kfp_client
    cfg = _load(args)
    with _pipeline_package(args, cfg) as package:
        kfp = _kfp_connect(args, cfg)
        out = kfp_client.upload_pipeline(kfp, package, cfg.kfp.pipeline_name, version=args.version,
                                         description=args.description)
    what = "uploaded new pipeline" if out["created"] else "uploaded a new version of pipeline"
    print(f"{what} '{out['pipeline']}', version '{out['version']}' (pipeline id {out['pipeline_id']}, "
          f"version id {out['version_id']}): {out['url']}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from platepipe.pipeline import kfp_client
    cfg = _load(args)
    experiment = args.experiment or cfg.kfp.experiment
    with _run_source(args, cfg) as (source, params, kfp):
        out = kfp_client.submit(kfp, source, params, experiment=experiment, run_name=args.run_name,
                                enable_caching=False if args.no_cache else None, wait=args.wait,
                                timeout_s=args.timeout, poll_s=args.poll, echo=lambda line: print(line, flush=True))
    print(f"started run '{out['name']}' (id {out['run_id']}) in experiment '{experiment}': {out['url']}")
    if not args.wait:
        return 0
    if out["state"] == "SUCCEEDED":
        print(f"run {out['run_id']} SUCCEEDED after {out['elapsed_s']:.0f} s")
        return 0
    details = "; ".join(filter(None, [out.get("error"), out["failed_tasks"] and
                                      f"failed tasks: {', '.join(map(str, out['failed_tasks']))}"]))
    print(f"platepipe submit: run {out['run_id']} ended {out['state']}{': ' + details if details else ''} "
          f"({out['url']})", file=sys.stderr)
    return 1


def cmd_schedule(args: argparse.Namespace) -> int:
    from platepipe.pipeline import kfp_client
    cfg = _load(args)
    experiment = args.experiment or cfg.kfp.experiment
    if args.list or args.delete:
        if args.cron or (args.list and args.delete):
            raise ValueError("--list, --delete NAME and --cron EXPR go one at a time")
        kfp = _kfp_connect(args, cfg)
        if args.delete:
            gone = kfp_client.delete_schedule(kfp, experiment, args.delete)
            print(f"deleted recurring run '{gone['name']}' (id {gone['recurring_run_id']}, {gone['schedule']})")
            return 0
        rows = kfp_client.list_schedules(kfp, experiment)
        if not rows:
            print(f"no recurring runs in experiment '{experiment}'")
        for r in rows:
            print(f"{r['name']}  {r['schedule']}  {r['status']}  max {r['max_concurrency']} at a time"
                  f"{', no catch-up' if r['no_catchup'] else ''}  (id {r['recurring_run_id']})")
        return 0
    if not args.cron:
        raise ValueError('schedule needs --cron EXPR (e.g. --cron "0 3 * * 0"), --list or --delete NAME')
    cron = kfp_client.kfp_cron(args.cron)  # a bad expression fails before anything else
    kfp_client.check_max_concurrency(args.max_concurrency)
    name = args.name or f"{cfg.kfp.pipeline_name}-schedule"
    with _run_source(args, cfg) as (source, params, kfp):
        out = kfp_client.schedule(kfp, source, cron, experiment=experiment, name=name, params=params,
                                  max_concurrency=args.max_concurrency, no_catchup=args.no_catchup,
                                  enable_caching=False if args.no_cache else None)
    given = " ".join(args.cron.split())
    form = f" (KFP's 6-field form of '{given}')" if given != out["cron"] else ""
    print(f"scheduled '{out['name']}' in experiment '{experiment}': cron '{out['cron']}'{form}, at most "
          f"{out['max_concurrency']} at a time, {'no catch-up' if out['no_catchup'] else 'catch-up on'} "
          f"(id {out['recurring_run_id']}): {out['url']}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_load(args)))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.cluster:
        return _doctor_cluster(args)
    from platepipe.pipeline import doctor
    results = doctor.run_checks()
    print(doctor.report(results))
    if doctor.healthy(results):
        print("set-up ok")
        return 0
    print("set-up incomplete: fix the FAIL lines above (make setup installs everything)", file=sys.stderr)
    return 1


def _doctor_cluster(args: argparse.Namespace) -> int:
    from platepipe.components import deploy, runtime
    cfg = _load(args)
    bucket = cfg.gcs.bucket or "BUCKET"
    spec = deploy.DeploySpec.from_config(cfg.deploy, f"gs://{bucket}/{cfg.gcs.prefix}", namespace=args.namespace)
    checks = runtime.cluster_checks(spec, deploy.api_client(args.kubeconfig))
    print(runtime.report(checks))
    if any(c.ok is False for c in checks):
        print("cluster not ready for `platepipe deploy`: fix the FAIL lines above", file=sys.stderr)
        return 1
    print("cluster ok" + (" (?? lines: not allowed to look; ask an admin)" if any(c.ok is None for c in checks) else ""))
    return 0


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
    with _stop_on_sigterm():
        return _call(args)


@contextlib.contextmanager
def _stop_on_sigterm():
    """`kill PID` (a job scheduler, a timeout) stops the command the way Ctrl-C does, so that what it started
    (fake-gcs-server, TorchServe, pipeline steps) is stopped too."""
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _call(args) -> int:
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
