"""Recurring runs: cron expressions checked as KFP reads them (6 fields, seconds first), create, list, delete."""

from __future__ import annotations

from typing import Any, Mapping, Optional


from platepipe.pipeline.kfp_connection import Kfp, KfpError, _call, _name_filter
from platepipe.pipeline.kfp_packages import PipelineVersion, Source, _source, _source_kwargs, check_params
from platepipe.pipeline.kfp_runs import experiment_id


CRON_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31),
               ("month", 1, 12), ("day-of-week", 0, 6))
MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
WEEKDAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_HELP = ("5 fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * 0' = Sundays 03:00; "
             "or KFP's 6 with seconds first")


def kfp_cron(expression: str) -> str:
    """A cron expression as KFP wants it: 6 fields, seconds first. The usual 5 fields get "0 " in front;
    6 fields and @daily-style descriptors are kept. Every field is checked (KfpError naming the bad one)."""
    text = " ".join(str(expression).split())
    if text.startswith("@"):
        if text.lower() not in DESCRIPTORS:
            raise KfpError(f"bad cron expression '{expression}': unknown descriptor (known: "
                           f"{', '.join(DESCRIPTORS)}; {CRON_HELP})")
        return text.lower()
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise KfpError(f"bad cron expression '{expression}': {len(fields)} field{'s' if len(fields) != 1 else ''}"
                       f", expected {CRON_HELP}")
    for value, (name, low, high) in zip(fields, CRON_FIELDS):
        problem = _cron_field_problem(value, name, low, high)
        if problem:
            raise KfpError(f"bad cron expression '{expression}': {name} '{value}' {problem} ({CRON_HELP})")
    return " ".join(fields)


def _cron_field_problem(value: str, name: str, low: int, high: int) -> Optional[str]:
    names = MONTHS if name == "month" else WEEKDAYS if name == "day-of-week" else {}

    def number(text: str) -> int:
        if text.upper() in names:
            return names[text.upper()]
        if not text.isdigit():
            raise ValueError(f"is not a number{' or a name (' + ', '.join(names) + ')' if names else ''}")
        n = int(text)
        if not low <= n <= high:
            raise ValueError(f"is out of range {low}-{high}")
        return n

    for part in value.split(","):
        try:
            if not part:
                raise ValueError("has an empty list item")
            span, slash, step = part.partition("/")
            if slash and (not step.isdigit() or int(step) < 1):
                raise ValueError(f"has a bad step '/{step}' (a positive number)")
            if span == "?" and name in ("day-of-month", "day-of-week") and not slash:
                continue
            if span == "*":
                continue
            first, dash, last = span.partition("-")
            a = number(first)
            if dash and a > number(last):
                raise ValueError(f"has a backwards range {span}")
        except ValueError as exc:
            return str(exc)
    return None


def check_max_concurrency(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise KfpError(f"--max-concurrency {n}: KFP allows 1 to 10 runs at a time")
    return n


def schedule(kfp: Kfp, source: Source, cron: str, experiment: str, name: str,
             params: Optional[Mapping[str, Any]] = None, max_concurrency: int = 1, no_catchup: bool = False,
             enable_caching: Optional[bool] = None, description: Optional[str] = None,
             service_account: Optional[str] = None, follow_latest: bool = False) -> dict:
    """Create the recurring run NAME of SOURCE on CRON (5 or 6 fields, see kfp_cron) in EXPERIMENT (created
    if missing). A recurring run of the same name already in the experiment is an error. follow_latest (SOURCE an
    uploaded PipelineVersion): each run takes the pipeline's latest version, where the server allows it."""
    cron6 = kfp_cron(cron)
    check_max_concurrency(max_concurrency)
    source = _source(source)
    values = check_params(source.parameters, params)
    exp_id, _ = experiment_id(kfp, experiment)
    if _recurring_runs(kfp, exp_id, name):
        raise KfpError(f"experiment '{experiment}' already has a recurring run named '{name}': choose another "
                       f"--name, or remove it first with platepipe schedule --delete '{name}'")
    if follow_latest:
        return _follow_latest(kfp, source, name, description, cron6, max_concurrency, no_catchup, values, exp_id,
                              experiment, service_account)
    made = _call(kfp, f"creating recurring run '{name}'", kfp.client.create_recurring_run, experiment_id=exp_id,
                 job_name=name, description=description, cron_expression=cron6,
                 max_concurrency=int(max_concurrency), no_catchup=bool(no_catchup), params=values,
                 enable_caching=enable_caching, service_account=service_account, **_source_kwargs(source))
    return {"recurring_run_id": made.recurring_run_id, "name": name, "cron": cron6, "experiment_id": exp_id,
            "experiment": experiment, "parameters": values, "max_concurrency": int(max_concurrency),
            "no_catchup": bool(no_catchup), "url": kfp.link(f"recurringrun/details/{made.recurring_run_id}")}


def _follow_latest(kfp: Kfp, source: Any, name: str, description: Optional[str], cron6: str, max_concurrency: int,
                   no_catchup: bool, values: dict, exp_id: str, experiment: str,
                   service_account: Optional[str]) -> dict:
    """The recurring run names only the pipeline, not a version: KFP 2 servers then run its latest version each
    time (kfp.Client always pins one, so the request goes through the client's public generated API)."""
    import kfp_server_api

    if not isinstance(source, PipelineVersion):
        raise KfpError("--follow-latest needs an uploaded pipeline (platepipe upload-pipeline), not a package: "
                       "add --pipeline-version latest")
    body = kfp_server_api.V2beta1RecurringRun(
        display_name=name, description=description, experiment_id=exp_id, mode="ENABLE",
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(pipeline_id=source.pipeline_id),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=values),
        trigger=kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=cron6)),
        max_concurrency=str(int(max_concurrency)), no_catchup=bool(no_catchup), service_account=service_account)
    made = _call(kfp, f"creating recurring run '{name}' on the latest version of '{source.pipeline_name}'",
                 kfp.client.recurring_runs.recurring_run_service_create_recurring_run, recurring_run=body,
                 conflict="choose another --name")
    ref = made.pipeline_version_reference
    if ref is not None and ref.pipeline_version_id:  # the server pinned a version: it does not follow
        _call(kfp, "removing it again", kfp.client.delete_recurring_run, made.recurring_run_id)
        raise KfpError(f"this KFP server pins recurring runs to one version (it chose {ref.pipeline_version_id}): "
                       f"schedule without --follow-latest, and schedule again after each upload-pipeline")
    return {"recurring_run_id": made.recurring_run_id, "name": name, "cron": cron6, "experiment_id": exp_id,
            "experiment": experiment, "parameters": values, "max_concurrency": int(max_concurrency),
            "no_catchup": bool(no_catchup), "follows": source.pipeline_name,
            "url": kfp.link(f"recurringrun/details/{made.recurring_run_id}")}


def _recurring_runs(kfp: Kfp, exp_id: str, name: Optional[str] = None) -> list:
    out, token = [], ""
    while True:
        page = _call(kfp, "listing recurring runs", kfp.client.list_recurring_runs, experiment_id=exp_id,
                     page_size=100, page_token=token, filter=_name_filter(name) if name else None)
        out += [r for r in (page.recurring_runs or []) if name is None or r.display_name == name]
        token = page.next_page_token
        if not token:
            return out


def _describe_recurring(r: Any) -> dict:
    cron = getattr(getattr(r.trigger, "cron_schedule", None), "cron", None) if r.trigger else None
    every = getattr(getattr(r.trigger, "periodic_schedule", None), "interval_second", None) if r.trigger else None
    return {"name": r.display_name, "recurring_run_id": r.recurring_run_id,
            "schedule": cron or (f"every {every} s" if every else "?"), "status": r.status or r.mode,
            "max_concurrency": r.max_concurrency, "no_catchup": bool(r.no_catchup)}


def list_schedules(kfp: Kfp, experiment: str) -> list[dict]:
    """The recurring runs of EXPERIMENT (none when the experiment does not exist)."""
    exp_id, _ = experiment_id(kfp, experiment, create=False)
    return [] if exp_id is None else [_describe_recurring(r) for r in _recurring_runs(kfp, exp_id)]


def delete_schedule(kfp: Kfp, experiment: str, name: str) -> dict:
    """Delete the recurring run NAME (or with that id) of EXPERIMENT."""
    exp_id, _ = experiment_id(kfp, experiment, create=False)
    runs = [] if exp_id is None else _recurring_runs(kfp, exp_id)
    matches = [r for r in runs if name in (r.display_name, r.recurring_run_id)]
    if not matches:
        known = ", ".join(r.display_name for r in runs) or "(none)"
        raise KfpError(f"no recurring run named '{name}' in experiment '{experiment}'; its recurring runs: {known}")
    if len(matches) > 1:
        raise KfpError(f"{len(matches)} recurring runs are named '{name}': delete one by its id "
                       f"({', '.join(r.recurring_run_id for r in matches)})")
    run = matches[0]
    _call(kfp, f"deleting recurring run '{name}'", kfp.client.delete_recurring_run, run.recurring_run_id)
    return _describe_recurring(run)
