"""Pipelines, versions, experiments and runs on a KFP server: upload, find, submit, wait."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union


from platepipe.pipeline.kfp_connection import Kfp, KfpError, _call, _name_filter
from platepipe.pipeline.kfp_packages import (Package, PipelineVersion, Source, _source, _source_kwargs, check_params,
                                             load_package)

_log = logging.getLogger(__name__)

FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED", "ERROR")
DEFAULT_TIMEOUT_S = 6 * 3600


def pipeline_id(kfp: Kfp, name: str) -> Optional[str]:
    """The id of the pipeline named NAME (in kfp.namespace, or shared), or None."""
    found = _call(kfp, f"looking up pipeline '{name}'", kfp.client.list_pipelines, filter=_name_filter(name),
                  namespace=kfp.namespace, page_size=2)
    pipelines = [p for p in (found.pipelines or []) if p.display_name == name]
    if len(pipelines) > 1:
        raise KfpError(f"{kfp.where} holds several pipelines named '{name}': delete all but one in the UI")
    return pipelines[0].pipeline_id if pipelines else None


def _versions(kfp: Kfp, pid: str, name: str, filter: Optional[str] = None, page_size: int = 50) -> list:
    found = _call(kfp, f"listing the versions of pipeline '{name}'", kfp.client.list_pipeline_versions, pid,
                  page_size=page_size, sort_by="created_at desc", filter=filter)
    return list(found.pipeline_versions or [])


def find_version(kfp: Kfp, pipeline_name: str, version: str = "latest") -> PipelineVersion:
    """The uploaded VERSION (a version name, or "latest") of the pipeline PIPELINE_NAME."""
    pid = pipeline_id(kfp, pipeline_name)
    if pid is None:
        raise KfpError(f"no pipeline named '{pipeline_name}' on {kfp.where}: upload it first with "
                       f"platepipe upload-pipeline")
    if version == "latest":
        versions = _versions(kfp, pid, pipeline_name, page_size=1)
    else:
        versions = [v for v in _versions(kfp, pid, pipeline_name, _name_filter(version))
                    if v.display_name == version]
    if not versions:
        known = [v.display_name for v in _versions(kfp, pid, pipeline_name)]
        raise KfpError(f"pipeline '{pipeline_name}' has no version '{version}'; its versions: "
                       f"{', '.join(known) or '(none)'}")
    v = versions[0]
    spec = v.pipeline_spec
    if not spec:
        spec = _call(kfp, f"reading version '{v.display_name}'", kfp.client.get_pipeline_version, pid,
                     v.pipeline_version_id).pipeline_spec
    return PipelineVersion(pid, v.pipeline_version_id, pipeline_name, v.display_name or version, spec or {})


def upload_pipeline(kfp: Kfp, package: Union[Package, str, Path], name: str, version: Optional[str] = None,
                    description: Optional[str] = None) -> dict:
    """Upload PACKAGE as a new pipeline NAME, or, with VERSION, as version VERSION of it (the pipeline is
    created when it does not exist yet). Without VERSION an existing NAME is an error that says so."""
    package = load_package(package) if isinstance(package, (str, Path)) else package
    description = description or package.description or f"{name}: compiled pipeline {package.path.name}"
    pid = pipeline_id(kfp, name)
    if pid is not None and not version:
        raise KfpError(f"a pipeline named '{name}' already exists on {kfp.where}: upload a new version of it "
                       f"with --version V (e.g. --version {datetime.now(timezone.utc):%Y%m%d-%H%M})")
    conflict = "choose another --version" if version else "upload a new version of it with --version V"
    created = pid is None
    if created and not version:
        pipeline = _call(kfp, f"uploading pipeline '{name}'", kfp.client.upload_pipeline, str(package.path),
                         pipeline_name=name, description=description, namespace=kfp.namespace, conflict=conflict)
        pid = pipeline.pipeline_id
        first = _versions(kfp, pid, name, page_size=1)
        return _uploaded(kfp, name, pid, first[0].pipeline_version_id if first else None,
                         first[0].display_name if first else name, created=True)
    if created:
        import kfp_server_api
        body = kfp_server_api.V2beta1Pipeline(display_name=name, description=description,
                                              namespace=kfp.namespace)
        pid = _call(kfp, f"creating pipeline '{name}'", kfp.client.pipelines.pipeline_service_create_pipeline,
                    pipeline=body, conflict=conflict).pipeline_id
    elif any(v.display_name == version for v in _versions(kfp, pid, name, _name_filter(version))):
        raise KfpError(f"pipeline '{name}' already has a version '{version}': choose another --version")
    try:
        uploaded = _call(kfp, f"uploading version '{version}' of pipeline '{name}'",
                         kfp.client.upload_pipeline_version, str(package.path), pipeline_version_name=version,
                         pipeline_id=pid, description=description, conflict=conflict)
    except KfpError:
        if created:  # do not leave an empty pipeline behind
            with contextlib.suppress(Exception):
                _call(kfp, "cleaning up", kfp.client.delete_pipeline, pid)
        raise
    return _uploaded(kfp, name, pid, uploaded.pipeline_version_id, version, created=created)


def _uploaded(kfp: Kfp, name: str, pid: str, vid: Optional[str], version: str, created: bool) -> dict:
    return {"pipeline": name, "pipeline_id": pid, "version": version, "version_id": vid, "created": created,
            "url": kfp.link(f"pipelines/details/{pid}" + (f"/version/{vid}" if vid else ""))}


def experiment_id(kfp: Kfp, name: str, create: bool = True) -> tuple[Optional[str], bool]:
    """(id of experiment NAME, whether it was created now); created when missing if CREATE, else (None, False)."""
    try:
        found = _call(kfp, f"looking up experiment '{name}'", kfp.client.get_experiment, experiment_name=name,
                      namespace=kfp.namespace)
        return found.experiment_id, False
    except ValueError as exc:
        if not str(exc).startswith("No experiment is found"):
            raise KfpError(f"experiment '{name}': {exc}") from None
    if not create:
        return None, False
    made = _call(kfp, f"creating experiment '{name}'", kfp.client.create_experiment, name=name,
                 namespace=kfp.namespace)
    return made.experiment_id, True


def submit(kfp: Kfp, source: Source, params: Optional[Mapping[str, Any]] = None, experiment: str = "Default",
           run_name: Optional[str] = None, wait: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
           poll_s: float = 10.0, enable_caching: Optional[bool] = None, service_account: Optional[str] = None,
           echo: Callable[[str], None] = _log.info) -> dict:
    """Start a run of SOURCE with PARAMS in EXPERIMENT (created if missing); with WAIT, follow it until it
    ends (or TIMEOUT_S passes: KfpError). Returns run_id, url, experiment_id, parameters (and state)."""
    source = _source(source)
    values = check_params(source.parameters, params)
    exp_id, created = experiment_id(kfp, experiment)
    if created:
        echo(f"created experiment '{experiment}'")
    name = run_name or f"{_pipeline_name(source)} {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}"
    run = _call(kfp, f"starting run '{name}'", kfp.client.run_pipeline, experiment_id=exp_id, job_name=name,
                params=values, enable_caching=enable_caching, service_account=service_account,
                **_source_kwargs(source))
    result = {"run_id": run.run_id, "name": name, "url": kfp.link(f"runs/details/{run.run_id}"),
              "experiment_id": exp_id, "experiment": experiment, "parameters": values}
    if wait:
        echo(f"run {run.run_id}: {result['url']}")
        result.update(wait_for_run(kfp, run.run_id, timeout_s=timeout_s, poll_s=poll_s, echo=echo))
    return result


def _pipeline_name(source: Union[Package, PipelineVersion]) -> str:
    if isinstance(source, Package):
        return source.name
    same = source.version_name == source.pipeline_name
    return source.pipeline_name if same else f"{source.pipeline_name} {source.version_name}"


def wait_for_run(kfp: Kfp, run_id: str, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 10.0,
                 echo: Callable[[str], None] = _log.info, report_every_s: float = 60.0) -> dict:
    """Poll the run until it ends; a line on every change of state or task count, and every REPORT_EVERY_S.
    Returns {"state", "error", "failed_tasks", "elapsed_s"}; KfpError when TIMEOUT_S passes first."""
    started = time.monotonic()
    last_line, last_time = None, 0.0
    while True:
        run = _call(kfp, f"checking run {run_id}", kfp.client.get_run, run_id)
        state = str(run.state or "PENDING").upper()
        elapsed = time.monotonic() - started
        tasks = list(getattr(run.run_details, "task_details", None) or [])
        counts = Counter(str(t.state or "PENDING").lower() for t in tasks)
        line = state + (f", tasks: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}" if counts else "")
        if line != last_line or elapsed - last_time >= report_every_s:
            echo(f"run {run_id}: {line} ({_duration(elapsed)})")
            last_line, last_time = line, elapsed
        if state in FINAL_STATES:
            error = getattr(run.error, "message", None) if run.error else None
            failed = [t.display_name for t in tasks if str(t.state or "").upper() in ("FAILED", "ERROR")]
            return {"state": state, "error": error, "failed_tasks": failed, "elapsed_s": round(elapsed, 1)}
        if elapsed >= timeout_s:
            raise KfpError(f"run {run_id} is still {state} after {_duration(timeout_s)}; it goes on on the "
                           f"cluster: {kfp.link(f'runs/details/{run_id}')}")
        time.sleep(max(0.0, min(poll_s, timeout_s - elapsed)))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
