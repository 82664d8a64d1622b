"""The pipeline's KFP v2 components. Each runs one plain function of pipeline/tasks.py inside the project's
image (kfp is installed there, so no per-step pip install); pipeline/pipeline.py sets the image from config.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

IMAGE = "platepipe:latest"  # replaced per task by kfp.image from the configuration


def component(fn):
    return dsl.component(fn, base_image=IMAGE, install_kfp_package=False)


@component
def settings_step(config: str) -> NamedTuple("Settings", [("data", str), ("train", str), ("evaluate", str),
                                                          ("compare", str), ("archive", str), ("upload", str),
                                                          ("deploy", str), ("smoke", str)]):
    """Check the run's configuration and hand each step only the sections it reads (never cached): a change to
    the smoke test's or the deploy's settings leaves the data and train steps' cache keys as they were."""
    from collections import namedtuple

    from platepipe.pipeline import tasks
    cut = tasks.settings(config)
    return namedtuple("Settings", list(cut))(**cut)


@component
def data_step(config: str, data: Output[Dataset], preview: Output[HTML]):
    """Render the synthetic set (or prepare the user's labelled set) as COCO, with a preview sheet."""
    from platepipe.pipeline import tasks
    data.metadata.update(tasks.make_data(config, data.path, preview.path))


@component
def train_step(config: str, pretrained_model: str, data: Input[Dataset], model: Output[Model]):
    """Train the two-stage plate reader, or fetch an existing pipeline.pth."""
    from platepipe.pipeline import tasks
    model.metadata.update(tasks.train_or_fetch(config, pretrained_model, data.path, model.path))


@component
def evaluate_step(config: str, min_eir: float, model: Input[Model], data: Input[Dataset], metrics: Output[Metrics],
                  report: Output[HTML]) -> NamedTuple("Evaluation", [("eir", float), ("passed", bool),
                                                                     ("evaluation", str)]):
    """COCO mAP, EIR (exact plate read rate), per-character accuracy; the gate's verdict."""
    import json
    from collections import namedtuple

    from platepipe.pipeline import tasks
    m = tasks.evaluate(config, min_eir, model.path, data.path, report.path)
    for name, value in tasks.metric_rows(m):
        metrics.log_metric(name, value)
    summary = {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))}
    summary["ood"] = {name: {k: v for k, v in s.items() if isinstance(v, (int, float))}
                      for name, s in (m.get("ood") or {}).items()}
    return namedtuple("Evaluation", ["eir", "passed", "evaluation"])(float(m["gate_eir"]), bool(m["passed"]),
                                                                     json.dumps(summary))


@component
def compare_step(config: str, evaluation: str, data: Input[Dataset], challenger_report: Input[HTML],
                 force_promotion: bool, deploy_target: str, metrics: Output[Metrics], report: Output[HTML]
                 ) -> NamedTuple("Comparison", [("promote", bool), ("summary", str)]):
    """Champion/challenger: the model serving now, evaluated on the same data; promote the new one unless it
    reads worse by more than evaluate.champion_margin (never cached: what serves changes)."""
    from collections import namedtuple

    from platepipe.pipeline import tasks
    r = tasks.compare(config, evaluation, data.path, challenger_report.path, force_promotion, deploy_target,
                      report.path)
    for name, value in r["metrics"]:
        metrics.log_metric(name, value)
    return namedtuple("Comparison", ["promote", "summary"])(bool(r["promote"]), r["summary"])


@component
def kept_step(summary: str):
    """The serving model reads better: nothing is exported or deployed, and the run succeeds."""
    import json
    print(json.loads(summary)["reason"])


@component
def gate_failed_step(eir: float, min_eir: float):
    """Fail the run when the model did not pass the EIR gate (nothing is exported or deployed)."""
    raise SystemExit(f"EIR gate failed: EIR {eir:.4f} < min_eir {min_eir}: the model was not exported or deployed; "
                     "see the evaluate step's report")


@component
def export_step(model: Input[Model], evaluation: str, run: str, exported: Output[Model]):
    """pipeline.pth with its evaluation, source commit and pipeline run written in."""
    from platepipe.pipeline import tasks
    exported.metadata.update(tasks.export(model.path, evaluation, exported.path, run))


@component
def archive_step(config: str, model: Input[Model], layout: Output[Model]):
    """TorchServe .mar (our handler) + config/config.properties: the layout KServe mounts."""
    from platepipe.pipeline import tasks
    layout.metadata.update(tasks.archive(config, model.path, layout.path))


@component
def upload_step(config: str, layout: Input[Model], model_version: str) -> str:
    """The layout to gs://BUCKET/PREFIX/VERSION/{config,model-store}; returns the storageUri."""
    from platepipe.pipeline import tasks
    return tasks.upload(config, layout.path, model_version)["storage_uri"]


@component
def deploy_step(config: str, storage_uri: str, deploy_target: str) -> NamedTuple(
        "Endpoint", [("url", str), ("host", str), ("rollback", str)]):
    """Create or update the GPU InferenceService and wait until Ready (or serve locally for the local run)."""
    from collections import namedtuple

    from platepipe.pipeline import tasks
    r = tasks.deploy(config, storage_uri, deploy_target)
    return namedtuple("Endpoint", ["url", "host", "rollback"])(r["url"], r["host"], r["rollback"])


@component
def smoke_test_step(config: str, url: str, host: str, rollback: str, report: Output[HTML]):
    """Post images with known plates, check every plate field; on failure roll the deploy back and fail."""
    from platepipe.components.smoke_test import SmokeTestFailed
    from platepipe.pipeline import tasks
    try:
        tasks.smoke(config, url, host, rollback, report.path)
    except SmokeTestFailed as exc:
        raise SystemExit(str(exc))  # the table says it all: no traceback
