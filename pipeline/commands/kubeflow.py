"""Commands that run the whole pipeline, here or on Kubeflow Pipelines: run, compile, upload-pipeline, submit,
schedule."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from platepipe.pipeline.commands.common import load, placeholder_arg
from platepipe.pipeline.config import Config


def register(sub, common) -> None:
    """Add this module's commands to the `platepipe` parser."""
    kfp_args = _kfp_args()
    p = sub.add_parser("run", parents=[common], help="run the whole pipeline",
                       description="Run the pipeline's steps one after another and print a summary.")
    p.add_argument("--local", action="store_true", required=True,
                   help="run every step on this machine, no cluster (the only mode so far)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<time>)")
    p.add_argument("--keep-serving", action="store_true",
                   help="leave the local TorchServe of the deploy step running after the run (stop it with "
                        "platepipe serve --stop); the next run compares its model with this one")
    p.add_argument("--force-promotion", action="store_true",
                   help="deploy the new model even where the one served now reads better")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", parents=[common], help="compile the Kubeflow pipeline to YAML",
                       description="Write the pipeline (KFP v2 IR YAML) for the Kubeflow UI's 'Upload pipeline', "
                                   "`kfp pipeline create` or `platepipe upload-pipeline`. Cluster settings (image, "
                                   "GPU, node selector, tolerations, PVC, GCS secret, retries, caching) come from "
                                   "the configuration; the configuration itself becomes the run parameter `config`.")
    p.add_argument("-o", "--output", default="pipeline.yaml", metavar="FILE", help="where to write it (pipeline.yaml)")
    placeholder_arg(p)
    p.set_defaults(func=cmd_compile)

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
    p.add_argument("--follow-latest", action="store_true",
                   help="each run takes the latest uploaded version of kfp.pipeline_name (where the KFP server "
                        "allows it; else an error says so), instead of the version or package given now")
    p.add_argument("--list", action="store_true", help="list the experiment's recurring runs")
    p.add_argument("--delete", metavar="NAME", help="delete the recurring run NAME (or id)")
    p.set_defaults(func=cmd_schedule)


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
    placeholder_arg(group)
    return parent


def _run_args(parser: argparse.ArgumentParser) -> None:
    """What submit and schedule share: the pipeline version to run and its parameters."""
    parser.add_argument("--pipeline-version", metavar="V", help="run version V (or 'latest') of the uploaded "
                        "pipeline kfp.pipeline_name instead of the package")
    parser.add_argument("--param", dest="params", metavar="NAME=VALUE", action="append", default=[],
                        help="pipeline parameter, read as its type (repeatable), e.g. --param min_eir=0.9")
    parser.add_argument("--experiment", metavar="NAME", help="experiment (default: kfp.experiment; created if missing)")
    parser.add_argument("--no-cache", action="store_true", help="run every step again, ignoring cached results")
    parser.add_argument("--service-account", metavar="NAME", help="Kubernetes service account the run's pods use "
                        "(default: kfp.service_account, else the profile's default)")


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


def cmd_run(args: argparse.Namespace) -> int:
    from platepipe.pipeline.local_run import run_local
    return run_local(load(args), args.out, keep_serving=args.keep_serving, force_promotion=args.force_promotion)


def cmd_compile(args: argparse.Namespace) -> int:
    from platepipe.pipeline.pipeline import check_images, compile_pipeline
    cfg = load(args)
    check_images(cfg, args.allow_placeholder_images)
    path = compile_pipeline(cfg, args.output)
    print(f"wrote {path}: upload it in the Kubeflow UI (Pipelines > Upload pipeline), or run "
          f"`platepipe upload-pipeline --package {path}`")
    return 0


def cmd_upload_pipeline(args: argparse.Namespace) -> int:
    from platepipe.pipeline import kfp_client
    cfg = load(args)
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
    cfg = load(args)
    experiment = args.experiment or cfg.kfp.experiment
    with _run_source(args, cfg) as (source, params, kfp):
        out = kfp_client.submit(kfp, source, params, experiment=experiment, run_name=args.run_name,
                                enable_caching=False if args.no_cache else None, wait=args.wait,
                                service_account=args.service_account or cfg.kfp.service_account,
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
    cfg = load(args)
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
    if args.follow_latest:
        if args.package:
            raise ValueError("--follow-latest schedules the uploaded pipeline kfp.pipeline_name, not a package: "
                             "drop --package (upload it first with platepipe upload-pipeline)")
        args.pipeline_version = args.pipeline_version or "latest"
    with _run_source(args, cfg) as (source, params, kfp):
        out = kfp_client.schedule(kfp, source, cron, experiment=experiment, name=name, params=params,
                                  max_concurrency=args.max_concurrency, no_catchup=args.no_catchup,
                                  enable_caching=False if args.no_cache else None,
                                  service_account=args.service_account or cfg.kfp.service_account,
                                  follow_latest=args.follow_latest)
    given = " ".join(args.cron.split())
    form = f" (KFP's 6-field form of '{given}')" if given != out["cron"] else ""
    print(f"scheduled '{out['name']}' in experiment '{experiment}': cron '{out['cron']}'{form}, at most "
          f"{out['max_concurrency']} at a time, {'no catch-up' if out['no_catchup'] else 'catch-up on'} "
          f"(id {out['recurring_run_id']}): {out['url']}")
    if out.get("follows"):
        print(f"each run takes the latest uploaded version of '{out['follows']}'")
    return 0
