"""Commands that take a model to an endpoint and talk to it: archive, upload, deploy, serve, request, smoke-test."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from platepipe.pipeline.commands.common import load, with_given
from platepipe.pipeline.config import Config
from platepipe.pipeline.tasks import state_home


def register(sub, common) -> None:
    """Add this module's commands to the `platepipe` parser."""
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

    p = sub.add_parser("models", parents=[common], help="the model versions in the bucket, and which one serves",
                       description="List the versions under gs://BUCKET/PREFIX (gcs.bucket/gcs.prefix, or --to), "
                                   "oldest first: when each was written, its EIR (on the gate's set), size and "
                                   "whether it is complete; the one the InferenceService deploy.name serves is "
                                   "marked (read from the cluster; left unmarked when it cannot be read).")
    _cluster_arguments(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("promote", parents=[common], help="deploy a listed model version, smoke-tested",
                       description="Deploy VERSION (a complete version `platepipe models` lists) to the "
                                   "InferenceService deploy.name, then run the smoke test against it; a failed "
                                   "smoke test rolls the InferenceService back to what it served before. The way "
                                   "back to an earlier model after a bad day.")
    p.add_argument("version", metavar="VERSION", help="the version folder's name, as `platepipe models` shows it")
    _cluster_arguments(p)
    p.add_argument("--image", help="serving image (default: deploy.image)")
    p.add_argument("--out", metavar="DIR", help="folder for the smoke test's report (default: runs/promote-<time>)")
    p.set_defaults(func=cmd_promote)


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="gs://BUCKET/PREFIX", help="where the versions are (default: gcs.bucket, gcs.prefix)")
    p.add_argument("--name", help="InferenceService name (default: deploy.name)")
    p.add_argument("-n", "--namespace", help="namespace (default: deploy.namespace)")
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)")


def _serving_uri(d, kubeconfig: str | None) -> tuple[str | None, int | None, str | None]:
    """(storage URI the InferenceService names, its canary percent, why it could not be read)."""
    from platepipe.components import deploy

    try:
        isvc = deploy.find(d.name, d.namespace, kubeconfig=kubeconfig)
    except Exception as exc:  # noqa: BLE001  no cluster here: list the versions all the same
        return None, None, f"cannot read InferenceService {d.namespace}/{d.name}: {exc}"
    if isvc is None:
        return None, None, f"there is no InferenceService {d.namespace}/{d.name}"
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    return predictor.get("model", {}).get("storageUri"), predictor.get("canaryTrafficPercent"), None


def _with_cluster_args(cfg, args):
    return dataclasses.replace(cfg, deploy=with_given(cfg.deploy, name=args.name, namespace=args.namespace,
                                                      image=getattr(args, "image", None)))


def cmd_models(args: argparse.Namespace) -> int:
    from platepipe.components import upload

    cfg = _with_cluster_args(load(args), args)
    uri = args.to or upload.destination(cfg.gcs)
    versions = upload.list_versions(uri, credentials_env=cfg.gcs.credentials_env)
    serving, canary, why = _serving_uri(cfg.deploy, args.kubeconfig)
    if not versions:
        print(f"no versions under {uri}: upload one with platepipe upload (or run the pipeline)")
        return 0
    print(f"model versions under {uri.rstrip('/')}, oldest first:")
    width = max(len(v["version"]) for v in versions)
    for v in versions:
        card = v.get("model") or {}
        eir = f"{card['gate_eir']:.3f} ({card.get('gate_set') or 'test'})" if card.get("gate_eir") is not None else "-"
        state = "complete" if v["complete"] else f"INCOMPLETE ({v['problem']})"
        mark = ""
        if serving and serving.rstrip("/") == v["storage_uri"].rstrip("/"):
            mark = f"<- canary, {canary}% of traffic" if canary is not None and canary < 100 else "<- serving"
        commit = ((card.get("source") or {}).get("commit") or "")[:8]
        print(f"  {v['version']:<{width}}  {v['updated'].replace('T', ' ').rstrip('Z')} UTC  EIR {eir:<14}  "
              f"{upload.human_size(v['size']):>9}  {state:<10}  {commit:<8}  {mark}".rstrip())
    if why:
        print(f"serving: unknown ({why})")
    elif serving and not any(serving.rstrip("/") == v["storage_uri"].rstrip("/") for v in versions):
        print(f"serving: {serving} (not a version under {uri})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from datetime import datetime

    from platepipe.components import upload
    from platepipe.pipeline import tasks
    from platepipe.pipeline.config import dump_config

    cfg = _with_cluster_args(load(args), args)
    uri = args.to or upload.destination(cfg.gcs)
    versions = {v["version"]: v for v in upload.list_versions(uri, credentials_env=cfg.gcs.credentials_env)}
    chosen = versions.get(args.version)
    if chosen is None:
        raise ValueError(f"no version {args.version!r} under {uri}: `platepipe models` lists "
                         f"{', '.join(versions) or 'none'}")
    if not chosen["complete"]:
        raise ValueError(f"version {args.version} is incomplete ({chosen['problem']}): upload it again with --force, "
                         f"or promote another")
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    config = dump_config(cfg)
    result = tasks.deploy(config, chosen["storage_uri"], "kserve")
    print(f"deployed {args.version} to InferenceService {cfg.deploy.namespace}/{cfg.deploy.name}: {result['url']}")
    out = Path(args.out or Path("runs") / datetime.now().strftime("promote-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    smoke = tasks.smoke(config, result["url"], result["host"], result["rollback"], str(out / "smoke.html"))
    print(f"smoke test {smoke['line']}; report: {out / 'smoke.html'}")
    if smoke.get("canary"):
        print(smoke["canary"])
    print(f"{args.version} serves now")
    return 0


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


def cmd_archive(args: argparse.Namespace) -> int:
    from platepipe.components.archive import archive
    cfg = load(args)
    spec = cfg.serving
    out = archive(args.model, args.out, spec, version=args.version)
    print(f"wrote {out / 'model-store' / (spec.model_name + '.mar')} and {out / 'config' / 'config.properties'}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from platepipe.components import upload
    g = load(args).gcs
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
    d = load(args).deploy
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
    spec = with_given(d, name=args.name, namespace=args.namespace, protocol=args.protocol, timeout_s=args.timeout,
                      image=args.image)
    if args.dry_run:
        from platepipe.components.runtime import runtime_manifest
        docs = [deploy.manifest(spec, args.storage_uri)]
        if spec.manage_runtime or spec.image:
            docs.insert(0, runtime_manifest(spec))
        sys.stdout.write("---\n".join(deploy.to_yaml(doc) for doc in docs))
        return 0
    # no smoke test here, so no canary: the new model takes all the traffic once Ready (platepipe promote and the
    # pipeline go through the canary and the smoke test)
    result = deploy.deploy(spec, args.storage_uri, kubeconfig=args.kubeconfig, ingress_host=d.ingress_host,
                           ingress_port=d.ingress_port, canary=False)
    print(f"InferenceService {namespace}/{name} is Ready ({'created' if result.created else 'updated'}, "
          f"generation {result.generation})")
    print(f"  URL          {result.url}")
    print(f"  Host header  {result.host}")
    print(f"try it: platepipe request IMAGE --isvc {name} -n {namespace} --protocol {spec.protocol}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from platepipe.components import local_server as server
    served = state_home() / "served.json"
    known = json.loads(served.read_text()) if served.exists() else []
    if args.stop:
        layouts = [args.layout] if args.layout else known
        stopped = [l for l in layouts if server.stop(l)]
        served.write_text(json.dumps([l for l in known if l not in stopped]))
        print(f"stopped TorchServe on {', '.join(stopped)}" if stopped else "no TorchServe of ours was running")
        return 0
    if not args.layout:
        raise ValueError("serve needs DIR (a folder made by platepipe archive), or --stop")
    s = load(args).serving
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


def cmd_request(args: argparse.Namespace) -> int:
    from platepipe.components import client
    from platepipe.serving.plates import format_plate
    cfg = load(args)
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


def cmd_smoke_test(args: argparse.Namespace) -> int:
    from platepipe.components.smoke_test import SmokeTestFailed, smoke_test
    cfg = load(args)
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
