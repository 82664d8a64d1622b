"""What each pipeline step does, as plain functions of (config text, paths): the KFP components in
pipeline/steps.py are one-line calls of these, so they run and test without Kubeflow.

Every step gets the run's whole configuration as YAML text (the pipeline's `config` parameter) and reads
what it needs from it, so the Kubeflow UI shows one editable configuration per run.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

from platepipe.components.progress import show
from platepipe.pipeline.config import Config, config_from_text

show()  # a step's progress lines go to its standard output, where KFP shows them

LOCAL_DIR_ENV = "PLATEPIPE_LOCAL_DIR"  # the local run's folder: where the deploy step serves from
LOCAL_SERVING = "local-serving.json"   # in state_home(): the layout the local deploy target serves
WORK_DIR_ENV = "PLATEPIPE_WORK_DIR"    # a persistent volume for training checkpoints (resume after a retry)


def _cfg(config: str) -> Config:
    return config_from_text(config)


def settings(config: str) -> dict:
    """The whole configuration (the run parameter), checked, cut into what each step reads (STEP_SECTIONS)."""
    from platepipe.pipeline.config import STEP_SECTIONS, step_config

    cfg = _cfg(config)
    return {step: step_config(cfg, step) for step in STEP_SECTIONS}


def _report(step: str, result: dict) -> dict:
    """The local run collects each step's result for its summary (in the cluster, KFP shows them instead)."""
    if os.environ.get(LOCAL_DIR_ENV):
        folder = Path(os.environ[LOCAL_DIR_ENV]) / "steps"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{step}.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _html_image(png: Path, title: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (f"<!doctype html><meta charset='utf-8'><title>{title}</title><h2>{title}</h2>"
            f"<img style='max-width:100%' src='data:image/png;base64,{data}'>")


def make_data(config: str, out_dir: str, preview_html: str) -> dict:
    """Synthetic plates, or the user's labelled set (folder or gs://, labelme or COCO), as a COCO data set."""
    from platepipe.components import data, labelled

    cfg = _cfg(config)
    d = cfg.data
    if d.source == "synthetic":
        summary = data.generate(out_dir, d, ood_images=d.ood_images)
    else:
        labelled.prepare(d.source, out_dir, fmt=d.format, seed=d.seed, split=d.split)
        summary = json.loads((Path(out_dir) / "dataset.json").read_text())
        if d.ood_images:  # the same out-of-distribution sets beside the user's own
            data.write_ood_sets(out_dir, d, d.ood_images, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        sheet = data.preview(out_dir, Path(tmp) / "preview.png")
        Path(preview_html).write_text(_html_image(sheet, "platepipe data: labels drawn on a sample of the training split"))
    return _report("data", {**{k: summary[k] for k in ("n_images", "plates", "splits", "fingerprint") if k in summary},
                            "artifact": preview_html})


def train_or_fetch(config: str, pretrained_model: str, data_dir: str, model_path: str) -> dict:
    """Train both stages (resuming from WORK_DIR_ENV when set), or fetch the given pipeline.pth."""
    from platepipe.components import export, train

    cfg = _cfg(config)
    source = pretrained_model or cfg.model.pretrained
    with tempfile.TemporaryDirectory() as tmp:
        if source:
            pth = export.fetch(source, tmp)
        else:
            if cfg.model.device == "cpu":
                os.environ["CUDA_VISIBLE_DEVICES"] = ""
            # resume only what was training on the same data with the same settings
            fingerprint = json.loads((Path(data_dir) / "dataset.json").read_text()).get("fingerprint", "data")
            what = {"model": {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("pretrained", "device")},
                    **{k: v for k, v in dataclasses.asdict(cfg.train).items()
                       if k not in ("workers", "resume", "time_budget_min")}}
            settings = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
            key = f"train-{fingerprint}-{settings.hexdigest()[:8]}"
            work = Path(os.environ[WORK_DIR_ENV]) / key if os.environ.get(WORK_DIR_ENV) else Path(tmp)
            pth = train.train(data_dir, work, cfg.model, cfg.train)
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pth, model_path)
    return _report("train", {"source": source or "trained", "preset": cfg.model.preset})


def evaluate(config: str, min_eir: float, model_path: str, data_dir: str, report_html: str) -> dict:
    """mAP, EIR and the rest on the test split and each out-of-distribution set; the HTML report; whether the EIR
    gate (on evaluate.gate_set) lets the model through."""
    from platepipe.components.evaluate import evaluate as run, gate_eir

    ev = _cfg(config).evaluate
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run(model_path, data_dir, tmp, iou_threshold=ev.iou_threshold,
                      report_worst=ev.report_worst, progress=False)
        shutil.copyfile(Path(tmp) / "report.html", report_html)
    metrics["min_eir"] = min_eir
    metrics["gate_set"] = ev.gate_set
    metrics["gate_eir"] = gate_eir(metrics, ev.gate_set)
    metrics["passed"] = metrics["gate_eir"] >= min_eir
    return _report("evaluate", {**metrics, "artifact": report_html})


METRIC_KEYS = ("eir", "detection_recall", "false_plates", "plates_on_plate_free_images", "bbox_mAP", "bbox_mAP_50",
               "char_accuracy", "plate_precision", "plate_recall", "median_ms_per_image")


def metric_rows(metrics: dict) -> list[tuple[str, float]]:
    """The figures KFP's Metrics show: the own split's by name, each out-of-distribution set's as SET.NAME, and
    detection recall by plate size per set."""
    rows = []
    for prefix, m in [("", metrics), *((f"{n}.", s) for n, s in (metrics.get("ood") or {}).items())]:
        rows += [(prefix + key, float(m[key])) for key in METRIC_KEYS if isinstance(m.get(key), (int, float))]
        rows += [(f"{prefix}detection_recall.{bucket.split()[0]}", float(v["detection_recall"]))
                 for bucket, v in m.get("by_size", {}).items() if isinstance(v.get("detection_recall"), (int, float))]
    return rows


def compare(config: str, evaluation_json: str, data_dir: str, challenger_report: str, force: bool, target: str,
            report_html: str) -> dict:
    """Champion/challenger: evaluate the model serving now on the same data as the new one and decide whether the
    new one may replace it (evaluate.champion_margin); force promotes all the same. The HTML puts both side by
    side."""
    from platepipe.components import champion as ch
    from platepipe.components.evaluate import evaluate as run

    cfg = _cfg(config)
    challenger = json.loads(evaluation_json)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if target == "local":
            champ = ch.serving_model_local(local_serving().get("layout"), work)
        elif target == "kserve":
            champ = ch.serving_model_kserve(cfg.deploy, work)
        else:
            raise ValueError(f"deploy_target {target!r}: expected kserve or local")
        champion_metrics, champion_report = None, None
        if champ is not None:
            champion_metrics = run(champ.model, data_dir, work / "evaluation", iou_threshold=cfg.evaluate.iou_threshold,
                                   report_worst=cfg.evaluate.report_worst, progress=False)
            champion_report = (work / "evaluation" / "report.html").read_text()
        decision = ch.compare(challenger, champion_metrics, cfg.evaluate.champion_margin, force)
        Path(report_html).write_text(ch.comparison_html(decision, Path(challenger_report).read_text(),
                                                        champion_report, champ))
    return _report("compare", {**decision, "summary": ch.summary(decision, champ), "metrics": ch.metric_rows(decision),
                               "line": decision["reason"], "artifact": report_html})


def export(model_path: str, evaluation_json: str, out_path: str, run: str = "") -> dict:
    from platepipe.components.export import stamp
    from platepipe.serving.reader import load_pipeline

    stamp(model_path, out_path, json.loads(evaluation_json), run)
    payload = load_pipeline(out_path)
    return _report("export", {"data_fingerprint": payload.get("data_fingerprint"), "versions": payload.get("versions"),
                              "bytes": Path(out_path).stat().st_size, "artifact": out_path})


def archive(config: str, model_path: str, out_dir: str) -> dict:
    from platepipe.components.archive import archive as run

    spec = _cfg(config).serving
    layout = run(model_path, out_dir, spec)
    return _report("archive", {"mar": str(layout / "model-store" / f"{spec.model_name}.mar"),
                               "model_name": spec.model_name})


def stop_local_serving(run_dir: str | Path) -> bool:
    """Stop the TorchServe the local deploy step started in RUN/serving, if any."""
    from platepipe.components import local_server as server

    layout = Path(run_dir) / "serving"
    return layout.exists() and server.stop(layout)


def upload(config: str, layout_dir: str, model_version: str) -> dict:
    """The layout to gs://BUCKET/PREFIX/VERSION/{config,model-store}, verified; never over an existing version."""
    from platepipe.components import upload as up

    cfg = _cfg(config)
    result = up.upload(layout_dir, up.destination(cfg.gcs), version=model_version or cfg.gcs.version or None,
                       credentials_env=cfg.gcs.credentials_env)
    return _report("upload", {"storage_uri": result["storage_uri"], "version": result["version"],
                              "line": f"{result['storage_uri']} (version {result['version']})"})


def state_home() -> Path:
    """Where platepipe keeps what outlives a run on this machine: PLATEPIPE_CACHE, else ~/.cache/platepipe."""
    return Path(os.environ.get("PLATEPIPE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                          Path.home() / ".cache") / "platepipe")


def local_serving() -> dict:
    """The local deploy target's record (what `platepipe run --local` serves, the local stand-in for the
    InferenceService): {"layout"}, or {} when nothing was deployed locally."""
    record = state_home() / LOCAL_SERVING
    return json.loads(record.read_text()) if record.is_file() else {}


def _record_local_serving(layout: Path | None) -> None:
    from platepipe.components.local_server import write_private

    record = state_home() / LOCAL_SERVING
    record.parent.mkdir(parents=True, exist_ok=True)
    write_private(record, json.dumps({"layout": str(layout) if layout else None}))


def deploy_local(cfg: Config, storage_uri: str) -> dict:
    """Serve the uploaded layout with TorchServe on this machine, fetched from the bucket the way KServe's
    storage initializer fills /mnt/models; the model served before (this run's, or an earlier run's kept with
    --keep-serving) is replaced, and put back by the smoke test's rollback."""
    from platepipe.components.gcs import download_prefix
    from platepipe.components import local_server as server

    layout = Path(os.environ.get(LOCAL_DIR_ENV) or tempfile.mkdtemp(prefix="platepipe-")) / "serving"
    previous = local_serving().get("layout")
    previous = previous if previous and server.serving(previous) and Path(previous) != layout else None
    if previous:
        server.stop(previous)  # the same ports
    if layout.exists():
        server.stop(layout)
        shutil.rmtree(layout)
    download_prefix(storage_uri, layout)
    s = cfg.serving
    ports = dict(inference_port=s.inference_port, management_port=s.management_port, metrics_port=s.metrics_port,
                 token_auth=s.token_auth)
    srv = server.start(layout, **ports)
    _record_local_serving(layout)
    return {"url": srv.inference_url, "host": "", "model_name": srv.model_name, "layout": str(layout),
            "rollback": json.dumps({"local": str(layout), "previous": previous, "ports": ports})}


def deploy(config: str, storage_uri: str, target: str) -> dict:
    """Create or update the InferenceService and wait for Ready (target kserve), or serve the layout locally
    (target local). Returns the endpoint and what the smoke test needs to roll back."""
    cfg = _cfg(config)
    if target == "local":
        result = deploy_local(cfg, storage_uri)
        return _report("deploy", {**result, "line": f"{result['url']} (local TorchServe, model {result['model_name']})"})
    if target != "kserve":
        raise ValueError(f"deploy_target {target!r}: expected kserve or local")
    from platepipe.components import deploy as dep

    done = dep.deploy(cfg.deploy, storage_uri, ingress_host=cfg.deploy.ingress_host, ingress_port=cfg.deploy.ingress_port)
    rollback = {"name": done.name, "namespace": done.namespace, "previous": done.previous, "canary": done.canary}
    how = ("a canary at 0% of traffic, its own URL" if done.canary else
           "replaced; RawDeployment has no canary: a failed smoke test rolls it back" if done.mode == "RawDeployment"
           else "created" if done.created else "replaced")
    return _report("deploy", {"url": done.url, "host": done.host, "model_name": cfg.serving.model_name,
                              "rollback": json.dumps(rollback), "mode": done.mode, "canary": done.canary,
                              "line": f"{done.url} (Host: {done.host}) InferenceService {done.namespace}/{done.name}, "
                                      f"{done.mode} ({how})"})


def roll_back(rollback: str) -> str:
    """Undo a deploy: stop the local server, or restore the InferenceService's previous spec (delete a new one)."""
    info = json.loads(rollback)
    if "local" in info:
        from platepipe.components import local_server as server

        stop_local_serving(Path(info["local"]).parent)
        if info.get("previous") and Path(info["previous"]).is_dir():
            server.start(info["previous"], **info["ports"])
            _record_local_serving(Path(info["previous"]))
            return f"stopped the local TorchServe on {info['local']} and served {info['previous']} again"
        _record_local_serving(None)
        return f"stopped the local TorchServe on {info['local']}"
    from platepipe.components import deploy as dep

    return dep.roll_back(info["name"], info["namespace"], info["previous"])


def smoke(config: str, url: str, host: str, rollback: str, report_html: str) -> dict:
    """Post sample images with known plates to the new endpoint and check every field; on failure roll the
    deploy back and fail (SmokeTestFailed carries the expected-vs-got table)."""
    from platepipe.components.smoke_test import SmokeTestFailed, smoke_test
    from platepipe.components import client, local_server as server

    cfg = _cfg(config)
    out_dir = Path(os.environ.get(LOCAL_DIR_ENV) or tempfile.mkdtemp(prefix="platepipe-smoke-")) / "smoke-test"
    info = json.loads(rollback)
    token = None
    if "local" in info:  # a local TorchServe keeps its keys beside the layout
        running = server.running(info["local"])
        token = running.keys.get("inference") if running and running.keys else None
    protocol = cfg.smoke.protocol or ("original" if "local" in info else cfg.deploy.protocol)

    def check(url: str, host: str | None, folder: Path) -> dict:
        return smoke_test(client.Endpoint(url, model=cfg.serving.model_name, protocol=protocol, token=token,
                                          host=host or None),
                          folder, n_images=cfg.smoke.n_images, user_images=cfg.smoke.user_images,
                          timeout=cfg.smoke.timeout_s)

    try:
        summary = check(url, host, out_dir)
    except SmokeTestFailed as exc:
        shutil.copyfile(Path(out_dir) / "smoke.html", report_html)
        undone = roll_back(rollback)
        _report("smoke-test", {**exc.summary, "line": f"FAILED, rolled back ({undone})", "artifact": report_html})
        raise SmokeTestFailed(f"{exc}\nrolled back: {undone}", exc.summary) from None
    shutil.copyfile(Path(out_dir) / "smoke.html", report_html)
    if info.get("canary"):  # passed on the canary's own URL: now move traffic to it, a smoke test at each step
        from platepipe.components import deploy as dep

        steps = itertools.count(1)
        try:
            line = dep.ramp(cfg.deploy, info["previous"], lambda u, h: check(u, h, out_dir.with_name(
                f"smoke-test-{next(steps)}")), ingress_host=cfg.deploy.ingress_host, ingress_port=cfg.deploy.ingress_port)
        except dep.DeployError as exc:  # ramp put the serving model back itself
            _report("smoke-test", {**summary, "passed": False, "line": f"FAILED: {exc}", "artifact": report_html})
            raise SmokeTestFailed(str(exc), summary) from None
        summary = {**summary, "canary": line}
    line = (f"passed: {summary.get('plates_correct')} of {summary.get('plates_expected')} plates read right "
            f"({protocol} protocol)" + (f"; {summary['canary']}" if summary.get("canary") else ""))
    return _report("smoke-test", {**summary, "line": line, "artifact": report_html})
