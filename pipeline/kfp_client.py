"""Talk to a Kubeflow Pipelines (KFP 2.x) API server: upload the compiled pipeline, start runs, schedule them.

Plain functions over the real `kfp.Client` (which speaks the v2beta1 REST API):

    kfp = connect("http://localhost:8080")                       # or KF_PIPELINES_ENDPOINT / the kube config
    upload_pipeline(kfp, "pipeline.yaml", "platepipe", version="v2")
    submit(kfp, "pipeline.yaml", {"n_images": 500}, experiment="platepipe", wait=True)
    schedule(kfp, find_version(kfp, "platepipe", "latest"), "0 3 * * 0", experiment="platepipe",
             name="weekly")

A pipeline source is either a compiled package (a path or a `Package`: its spec travels inside the run) or
a `PipelineVersion` already uploaded (the run refers to it by id). Parameters are checked against the
pipeline's own (root.inputDefinitions.parameters) and converted to their types before anything is sent.
Every failure is raised as one `KfpError` sentence that says what to do: the server unreachable, 401/403,
a pipeline that already exists, an unknown parameter, a bad cron expression.

Authentication: a bearer token (`token=` or KF_PIPELINES_TOKEN, e.g. a Kubernetes service-account token on
Kubeflow 1.9+), else whatever kfp.Client finds itself: the in-cluster service account, the kube config
(through the API server's proxy to ml-pipeline), the IAP variables KF_PIPELINES_IAP_OAUTH2_CLIENT_ID etc.,
and ~/.config/kfp/context.json (namespace, client_authentication_cookie).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import yaml

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
PORT_FORWARD = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED", "ERROR")
DEFAULT_TIMEOUT_S = 6 * 3600
REQUEST_TIMEOUT_S = 120.0  # one API request (an upload included); a server that stops answering is an error


class KfpError(RuntimeError):
    """A KFP call failed; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- connection

@dataclasses.dataclass
class Kfp:
    """A connected kfp.Client and what we know about where it points."""

    client: Any                       # kfp.Client
    host: Optional[str]               # API base URL; None when kfp.Client found it (in-cluster, kube config)
    namespace: Optional[str] = None   # Kubeflow profile namespace (multi-user); None on single-user KFP
    ui: Optional[str] = None          # UI base URL for links
    multi_user: Optional[bool] = None

    @property
    def where(self) -> str:
        return self.host or "the KFP API"

    def link(self, fragment: str) -> str:
        return f"{self.ui.rstrip('/')}/#/{fragment}" if self.ui else f"(Kubeflow UI) #/{fragment}"


def normalise_host(host: str) -> str:
    """`localhost:8080` -> http://localhost:8080 (a port-forward); other hosts without a scheme get https://."""
    host = host.strip().rstrip("/")
    if not re.match(r"^https?://", host):
        local = re.match(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?(/|$)", host)
        host = ("http://" if local else "https://") + host
    return host


def connect(host: Optional[str] = None, namespace: Optional[str] = None, token: Optional[str] = None, *,
            timeout_s: float = 15.0, request_timeout_s: float = REQUEST_TIMEOUT_S) -> Kfp:
    """A kfp.Client for HOST (else KF_PIPELINES_ENDPOINT, else the in-cluster service or the kube config),
    with bearer TOKEN (else KF_PIPELINES_TOKEN) and NAMESPACE (multi-user Kubeflow). The server is asked
    for /apis/v2beta1/healthz first, so that a wrong host or missing credentials fail at once, clearly; every
    later request gives up after request_timeout_s."""
    host = host or os.environ.get(ENDPOINT_ENV) or None
    token = token or os.environ.get(TOKEN_ENV) or None
    health: dict = {}
    if host:
        host = normalise_host(host)
        health = _healthz(host, token, timeout_s)
    elif not (os.environ.get("KUBERNETES_SERVICE_HOST") or _kubeconfig_exists()):
        raise KfpError(f"no KFP host: pass --host URL, set kfp.host, or export {ENDPOINT_ENV} "
                       f"(e.g. http://localhost:8080 after `{PORT_FORWARD}`)")
    import kfp
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        try:
            # kfp.Client's namespace is where KFP itself runs (in-cluster DNS name, kube proxy path): leave it
            # at "kubeflow"; the profile namespace goes with each call that takes one.
            client = kfp.Client(host=host, existing_token=token)
        except TimeoutError as exc:  # kfp.Client's own healthz, tried 5 times
            raise KfpError(f"{host or 'the KFP API'} did not answer /apis/v2beta1/healthz ({exc}): check the host "
                           f"and its credentials (--token, --namespace)") from None
        except Exception as exc:  # kube config, TLS: all about reaching the server
            raise _translate(exc, host, "connecting") from None
    _limit_requests(client, timeout_s, request_timeout_s)
    namespace = namespace or client.get_user_namespace() or None
    multi_user = health.get("multi_user")
    if multi_user and not namespace:
        raise KfpError(f"{host} is a multi-user Kubeflow: pass --namespace with your profile namespace "
                       f"(e.g. kubeflow-user-example-com)")
    ui = os.environ.get(UI_ENV) or host
    return Kfp(client=client, host=host, namespace=namespace, ui=normalise_host(ui) if ui else None,
               multi_user=multi_user)


def _limit_requests(client: Any, connect_s: float, read_s: float) -> None:
    """kfp.Client sends every request with no timeout: a server that accepts and never answers would hang
    the command. Give each request of its REST client (shared by all its APIs) a connect and read limit."""
    rest = client._run_api.api_client.rest_client
    original = rest.request

    def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return original(*args, _request_timeout=_request_timeout or (connect_s, read_s), **kwargs)

    rest.request = request


def _kubeconfig_exists() -> bool:
    paths = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return any(p and os.path.isfile(p) for p in paths.split(os.pathsep))


def _auth_hint() -> str:
    return (f"authenticate with --token TOKEN or {TOKEN_ENV} (on Kubeflow, e.g. `kubectl create token "
            f"default-editor -n YOUR_NAMESPACE`) and pass your profile namespace with --namespace")


def _unreachable(host: Optional[str], why: str) -> KfpError:
    return KfpError(f"cannot reach the KFP API at {host or '(kube config)'} ({why}): check --host, kfp.host or "
                    f"{ENDPOINT_ENV}; without an ingress, run `{PORT_FORWARD}` and use --host http://localhost:8080")


def _healthz(host: str, token: Optional[str], timeout_s: float) -> dict:
    url = f"{host}/apis/v2beta1/healthz"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            body, ctype = resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        message = _message_of(exc.read())
        if exc.code in (401, 403):
            raise KfpError(f"{host} refused the request ({exc.code} {exc.reason}"
                           f"{': ' + message if message else ''}): {_auth_hint()}") from None
        if exc.code == 404:
            raise KfpError(f"{url} answered 404: {host} is not a KFP 2.x API; point --host at the "
                           f"ml-pipeline-ui service or at https://YOUR-KUBEFLOW/pipeline") from None
        raise KfpError(f"{url} answered {exc.code} {exc.reason}{': ' + message if message else ''}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError):
            raise KfpError(f"TLS to {host} failed ({reason}): use the right https:// URL, or http:// for a "
                           f"port-forward") from None
        raise _unreachable(host, _why(reason)) from None
    except (TimeoutError, socket.timeout):
        raise _unreachable(host, f"no answer within {timeout_s:g} s") from None
    except (OSError, ValueError) as exc:
        raise _unreachable(host, _why(exc)) from None
    try:
        health = json.loads(body)
        if not isinstance(health, dict):
            raise ValueError
    except ValueError:
        page = "a web page (a login page?)" if "html" in ctype or body.lstrip()[:1] == b"<" else "something else"
        raise KfpError(f"{host} answered with {page} instead of the KFP API: {_auth_hint()}") from None
    return health


def _why(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host name"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    text = str(getattr(reason, "reason", None) or reason)
    if "refused" in text.lower():
        return "connection refused"
    return text.split("\n")[0][:200]


def _message_of(body: Any) -> str:
    """The server's own words from an error body: grpc-gateway {"error", "code", "message"} or the upload
    handler's {"error_message", "error_details"}; plain text as it is."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return "" if body.lstrip().startswith("<") else body.strip()[:300]
    if isinstance(data, dict):
        for key in ("message", "error_message", "error", "error_details"):
            if data.get(key):
                return str(data[key]).strip()[:300]
    return ""


def _translate(exc: BaseException, host: Optional[str], doing: str, conflict: str = "") -> Exception:
    """One clear KfpError for whatever kfp.Client raised."""
    import kfp_server_api
    import urllib3
    if isinstance(exc, KfpError):
        return exc
    if isinstance(exc, kfp_server_api.ApiException):
        status, message = exc.status, _message_of(getattr(exc, "body", None))
        where = host or "the KFP API"
        if status in (401, 403):
            return KfpError(f"{doing}: {where} refused the request ({status} {exc.reason}"
                            f"{': ' + message if message else ''}): {_auth_hint()}")
        if not status:  # TLS failure or a request the client could not build
            return KfpError(f"{doing}: cannot talk to {where}: {str(exc.reason).splitlines()[0]}")
        if status == 409 or "already exist" in message.lower():
            return KfpError(f"{doing}: {message or 'it already exists'}{'; ' + conflict if conflict else ''}")
        return KfpError(f"{doing}: {where} answered {status} {exc.reason}{': ' + message if message else ''}")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return _unreachable(host, _why(getattr(exc, "reason", None) or exc))
    if isinstance(exc, (OSError, TimeoutError)):
        return _unreachable(host, _why(exc))
    return KfpError(f"{doing}: {exc}")


def _call(kfp: Kfp, doing: str, fn: Callable, *args: Any, conflict: str = "", **kwargs: Any) -> Any:
    """Call a kfp.Client method quietly (it prints links of its own) with its errors translated."""
    import kfp_server_api
    import urllib3
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _translate(exc, kfp.host, doing, conflict) from None


def _name_filter(name: str) -> str:
    """A v2beta1 filter on display_name, written as kfp.Client writes its own."""
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})


# ---------------------------------------------------------------------------------------------- packages

PARAMETER_TYPES = {"STRING": "a string", "NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
                   "BOOLEAN": "true or false", "LIST": "a JSON list", "STRUCT": "a JSON object"}


@dataclasses.dataclass
class Package:
    """A compiled pipeline YAML: its path and its (first) document, the PipelineSpec."""

    path: Path
    spec: dict

    @property
    def name(self) -> str:
        return self.spec.get("pipelineInfo", {}).get("name", "")

    @property
    def description(self) -> Optional[str]:
        return self.spec.get("pipelineInfo", {}).get("description") or None

    @property
    def parameters(self) -> dict:
        return pipeline_parameters(self.spec)


@dataclasses.dataclass
class PipelineVersion:
    """A pipeline version on the server."""

    pipeline_id: str
    version_id: str
    pipeline_name: str
    version_name: str
    spec: dict

    @property
    def parameters(self) -> dict:
        return pipeline_parameters(self.spec)


Source = Union[Package, PipelineVersion, str, Path]


def load_package(path: Union[str, Path]) -> Package:
    """Read a compiled pipeline YAML (from `platepipe compile` or kfp.compiler.Compiler)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise KfpError(f"{path}: expected a compiled pipeline .yaml (platepipe compile -o pipeline.yaml)")
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise KfpError(f"pipeline package not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KfpError(f"{path}: not a readable pipeline YAML ({str(exc).splitlines()[0]})") from None
    spec = docs[0] if docs else None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise KfpError(f"{path}: not a compiled KFP pipeline (no pipelineInfo/root); "
                       f"compile one with platepipe compile -o {path.name}")
    return Package(path, spec)


def pipeline_parameters(spec: Mapping) -> dict:
    """{name: {"parameterType": ..., "defaultValue"?: ..., "isOptional"?: ...}} of a PipelineSpec (or of the
    {"pipeline_spec": ..., "platform_spec": ...} pair the server keeps when there is a platform spec)."""
    if "pipeline_spec" in spec and "root" not in spec:
        spec = spec["pipeline_spec"]
    return dict(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {})


def describe_parameters(parameters: Mapping[str, Mapping]) -> str:
    if not parameters:
        return "(none)"
    parts = []
    for name, p in sorted(parameters.items()):
        kind = p.get("parameterType", "?")
        if kind == "NUMBER_INTEGER" and isinstance(p.get("defaultValue"), float) and p["defaultValue"].is_integer():
            p = {**p, "defaultValue": int(p["defaultValue"])}  # the spec keeps every number as a double
        default = json.dumps(p.get("defaultValue"))
        if len(default) > 40:  # e.g. the whole configuration
            default = default[:36] + "...}" if default.startswith("{") else default[:36] + "..."
        parts.append(f"{name} ({kind}, default {default})" if "defaultValue" in p else f"{name} ({kind}, required)")
    return ", ".join(parts)


def parse_param_args(pairs: Sequence[str]) -> dict[str, str]:
    """--param key=value (repeatable) -> {key: "value"}; the value is converted later, by the parameter's type."""
    out: dict[str, str] = {}
    for text in pairs:
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise KfpError(f"--param {text}: expected NAME=VALUE, e.g. --param n_images=500")
        out[key.strip()] = value
    return out


def check_params(parameters: Mapping[str, Mapping], params: Optional[Mapping[str, Any]]) -> dict:
    """Check PARAMS against the pipeline's PARAMETERS and convert them: strings (from --param) are read as the
    parameter's type; typed values must already be of it. Unknown and missing required names fail here,
    before the server is asked."""
    params = dict(params or {})
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in parameters:
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KfpError(f"unknown pipeline parameter '{name}'{hint}; the pipeline's parameters are: "
                           f"{describe_parameters(parameters)}")
        out[name] = _convert_param(name, value, parameters[name].get("parameterType", "STRING"))
    missing = [n for n, p in parameters.items()
               if n not in out and "defaultValue" not in p and not p.get("isOptional")]
    if missing:
        raise KfpError(f"missing pipeline parameter{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(missing)} (no default): pass --param {missing[0]}=VALUE")
    return out


def _convert_param(name: str, value: Any, kind: str) -> Any:
    bad = KfpError(f"parameter {name}: expected {PARAMETER_TYPES.get(kind, kind)} ({kind}), got {value!r}")
    if isinstance(value, str) and kind != "STRING":
        text = value.strip()
        try:
            if kind == "NUMBER_INTEGER":
                return int(text)
            if kind == "NUMBER_DOUBLE":
                return float(text)
            if kind == "BOOLEAN":
                lowered = text.lower()
                if lowered in ("true", "1", "yes", "on"):
                    return True
                if lowered in ("false", "0", "no", "off"):
                    return False
                raise bad
            if kind in ("LIST", "STRUCT"):
                value = json.loads(text)
        except ValueError:
            raise bad from None
    if kind == "STRING":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "LIST" and not isinstance(value, list) or kind == "STRUCT" and not isinstance(value, dict):
        raise bad
    return value


def _source(source: Source) -> Union[Package, PipelineVersion]:
    return load_package(source) if isinstance(source, (str, Path)) else source


def _source_kwargs(source: Union[Package, PipelineVersion]) -> dict:
    if isinstance(source, Package):
        return {"pipeline_package_path": str(source.path)}
    return {"pipeline_id": source.pipeline_id, "version_id": source.version_id}

# ---------------------------------------------------------------------------------------------- pipelines

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

# ---------------------------------------------------------------------------------------------- runs

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
           poll_s: float = 10.0, enable_caching: Optional[bool] = None,
           echo: Callable[[str], None] = print) -> dict:
    """Start a run of SOURCE with PARAMS in EXPERIMENT (created if missing); with WAIT, follow it until it
    ends (or TIMEOUT_S passes: KfpError). Returns run_id, url, experiment_id, parameters (and state)."""
    source = _source(source)
    values = check_params(source.parameters, params)
    exp_id, created = experiment_id(kfp, experiment)
    if created:
        echo(f"created experiment '{experiment}'")
    name = run_name or f"{_pipeline_name(source)} {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}"
    run = _call(kfp, f"starting run '{name}'", kfp.client.run_pipeline, experiment_id=exp_id, job_name=name,
                params=values, enable_caching=enable_caching, **_source_kwargs(source))
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
                 echo: Callable[[str], None] = print, report_every_s: float = 60.0) -> dict:
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

# ---------------------------------------------------------------------------------------------- schedules

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
             enable_caching: Optional[bool] = None, description: Optional[str] = None) -> dict:
    """Create the recurring run NAME of SOURCE on CRON (5 or 6 fields, see kfp_cron) in EXPERIMENT (created
    if missing). A recurring run of the same name already in the experiment is an error."""
    cron6 = kfp_cron(cron)
    check_max_concurrency(max_concurrency)
    source = _source(source)
    values = check_params(source.parameters, params)
    exp_id, _ = experiment_id(kfp, experiment)
    if _recurring_runs(kfp, exp_id, name):
        raise KfpError(f"experiment '{experiment}' already has a recurring run named '{name}': choose another "
                       f"--name, or remove it first with platepipe schedule --delete '{name}'")
    made = _call(kfp, f"creating recurring run '{name}'", kfp.client.create_recurring_run, experiment_id=exp_id,
                 job_name=name, description=description, cron_expression=cron6,
                 max_concurrency=int(max_concurrency), no_catchup=bool(no_catchup), params=values,
                 enable_caching=enable_caching, **_source_kwargs(source))
    return {"recurring_run_id": made.recurring_run_id, "name": name, "cron": cron6, "experiment_id": exp_id,
            "experiment": experiment, "parameters": values, "max_concurrency": int(max_concurrency),
            "no_catchup": bool(no_catchup), "url": kfp.link(f"recurringrun/details/{made.recurring_run_id}")}


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
