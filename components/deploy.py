"""Deploy step: the KServe InferenceService that serves the archive layout, created or updated, waited for.

    result = deploy(cfg.deploy, "gs://bucket/platepipe/v1")  # create or update, wait for Ready, roll back on failure
    result.url, result.host                    # where to send requests, and the Host header to send

The manifest is a `serving.kserve.io/v1beta1` InferenceService whose `predictor.model` names our runtime
(components/runtime.py: the serving image, made or checked before the service), its model format and the
storage URI of the layout `platepipe archive` writes (model-store/ + config/). Nothing is created without a
usable serving image and every permission the deploy needs (a SelfSubjectAccessReview each). An existing service is replaced in place (PUT with its resourceVersion, so a
concurrent change is noticed, not overwritten); when the new generation does not become Ready (the controller
reports a failure, or the timeout passes) the previous spec is put back, or what was created is deleted.

The Kubernetes connection is the real `kubernetes` client: a kubeconfig file (--kubeconfig, $KUBECONFIG,
~/.kube/config) or the pod's service account inside a cluster. API errors come back as one sentence
(`DeployError`): RBAC refusals name the verb, the resource and the namespace, and what to grant.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from platepipe.pipeline.config import DeployConfig

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"
RESOURCE = f"{PLURAL}.{GROUP}"
MODEL_FORMAT = {"name": "platepipe", "version": "1"}  # the layout `platepipe archive` writes; our runtime serves it
ISTIO_INJECT = "sidecar.istio.io/inject"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODES = {"serverless": "Serverless", "raw": "RawDeployment"}
MANAGED_BY = {"app.kubernetes.io/managed-by": "platepipe"}
RBAC_VERBS = ("get", "list", "create", "update", "patch", "delete")
STORAGE_SCHEMES = ("gs", "s3", "pvc", "https", "http")

POLL_S = 2.0              # seconds between status reads while waiting for Ready
REQUEST_TIMEOUT_S = 30    # per API request
CONFLICT_RETRIES = 3      # 409 Conflict on update: read again and retry this many times
# False conditions that a healthy rollout goes through (raw deployment mode while pods start): keep waiting
TRANSIENT_REASONS = frozenset({"MinimumReplicasUnavailable", "RevisionMissing", "Deploying", "ReplicaSetUpdated",
                               "NewReplicaSetCreated", "FoundNewReplicaSet"})
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


class DeployError(RuntimeError):
    """A deploy problem, said in one sentence (with what to do about it). status: the API server's HTTP status
    when it answered; transient: worth retrying (5xx, 429, no connection); missing: the object is not there
    (404 naming it, as opposed to a cluster without KServe)."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False, missing: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.missing = missing


# ---------------------------------------------------------------------------------------------- the manifest

def check_storage_uri(storage_uri: str) -> str:
    scheme, sep, rest = storage_uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES or not rest.strip("/"):
        raise ValueError(f"storage URI {storage_uri!r}: expected the archive folder as gs://BUCKET/PATH "
                         f"(or {', '.join(s + '://' for s in STORAGE_SCHEMES[1:])}...)")
    return storage_uri


def manifest(spec: DeployConfig, storage_uri: str, canary: int | None = None) -> dict:
    """The InferenceService of the `deploy` settings serving storage_uri, as the API server takes it; canary:
    the share of traffic (percent) for this revision while the previous one keeps the rest."""
    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request}
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    if spec.gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpu)
    model: dict[str, Any] = {"modelFormat": dict(MODEL_FORMAT), "runtime": spec.runtime,
                             "protocolVersion": spec.protocol, "storageUri": check_storage_uri(storage_uri),
                             "resources": {"requests": requests, "limits": limits}}
    predictor: dict[str, Any] = {"model": model, "minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas,
                                 "scaleMetric": spec.scale_metric, "scaleTarget": spec.scale_target}
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    annotations = {ISTIO_INJECT: "false"}
    if spec.canary_steps:  # each revision's own URL (latest-..., prev-...), for the canary's smoke test
        annotations[TAG_ROUTING] = "true"
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(MANAGED_BY),
                     # no Istio sidecar in the serving pod (the original's "isdecar.istio.is/inject" did nothing)
                     "annotations": annotations},
        "spec": {"predictor": predictor},
    }


def to_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------- the cluster

def api_client(kubeconfig: str | os.PathLike | None = None, context: str | None = None):
    """A kubernetes ApiClient: the kubeconfig given, else $KUBECONFIG or ~/.kube/config, else the pod's
    service account (inside a cluster)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig is not None:
        path = str(kubeconfig)
        if not Path(path).is_file():
            raise DeployError(f"kubeconfig {path} not found: pass the file your cluster's credentials are in")
    elif os.environ.get("KUBECONFIG"):
        path = os.environ["KUBECONFIG"]
    elif Path("~/.kube/config").expanduser().is_file():
        path = str(Path("~/.kube/config").expanduser())
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        conf = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=conf)
        except ConfigException as exc:
            raise DeployError(f"inside the cluster, but the pod's service account cannot be used: {exc}") from None
        return client.ApiClient(configuration=conf)
    else:
        raise DeployError("no Kubernetes configuration: there is no ~/.kube/config, $KUBECONFIG is not set and this "
                          "is not a pod in a cluster; get credentials (e.g. `gcloud container clusters "
                          "get-credentials CLUSTER`) or pass --kubeconfig FILE")
    try:
        return config.new_client_from_config(config_file=path, context=context, persist_config=False)
    except ConfigException as exc:
        raise DeployError(f"cannot use the kubeconfig {path}: {exc}") from None


def _status_body(exc: Any) -> dict:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def explain(exc: Exception, verb: str, namespace: str | None, name: str | None = None, server: str = "",
            kind: str = KIND, resource: str = RESOURCE) -> DeployError:
    """One sentence for a failed API call (kubernetes ApiException or a connection error). namespace None: a
    cluster-scoped kind."""
    from kubernetes.client.exceptions import ApiException

    if namespace is None:
        what = f"{kind} {name}" if name else f"{kind}s"
    else:
        what = f"{kind} {namespace}/{name}" if name else f"{kind}s in namespace {namespace!r}"
    where = f"in namespace {namespace!r}" if namespace is not None else "cluster-wide"
    if not isinstance(exc, ApiException):
        reason = str(getattr(exc, "reason", None) or exc)
        errno = re.search(r"\[Errno[^\]]*\].*$", reason)  # urllib3 wraps it in its connection's repr
        return DeployError(f"cannot reach the Kubernetes API server {server}: "
                           f"{errno.group(0) if errno else reason}".replace("  ", " "))
    body = _status_body(exc)
    message = str(body.get("message") or exc.reason or "").strip()
    if exc.status == 401:
        return DeployError(f"the Kubernetes API server {server} refused the credentials (401 Unauthorized): "
                           f"refresh them (e.g. `gcloud container clusters get-credentials CLUSTER`) or check the "
                           f"user in your kubeconfig".replace("  ", " "))
    if exc.status == 403 and "admission webhook" in message:
        return DeployError(f"an admission webhook rejected {what}: {message}")
    if exc.status == 403:
        user = re.search(r'User "([^"]+)"', message)
        who = f" as {user.group(1)}" if user else ""
        grant = (f"grant it a Role with the verbs {', '.join(RBAC_VERBS)} on {resource} in {namespace!r}, bound "
                 f"with a RoleBinding (k8s/rbac.yaml)") if namespace is not None else \
            f"ask a cluster admin to apply it, or to grant a ClusterRole with those verbs on {resource}"
        return DeployError(f"not allowed to {verb} {resource} {where}{who} (403 Forbidden): {grant}")
    if exc.status == 404 and not (body.get("details") or {}).get("name"):
        return DeployError(f"the cluster does not know {resource} (404 on its API path): install KServe, or point "
                           f"--kubeconfig at the cluster that has it")
    if exc.status == 404:
        return DeployError(f"{what} not found: check the name and namespace (platepipe deploy --status lists it)")
    if exc.status == 409:
        return DeployError(f"{what} was changed by someone else at the same time ({message}): run the command again")
    if exc.status in (400, 415, 422):
        return DeployError(f"the API server rejected {what} ({exc.status} {exc.reason}): {message}")
    return DeployError(f"{verb} {what} failed: {exc.status} {exc.reason}: {message}")


def _transient(exc: Exception) -> bool:
    from kubernetes.client.exceptions import ApiException
    return not isinstance(exc, ApiException) or (exc.status or 0) >= 500 or exc.status == 429


class CustomObjects:
    """The objects of one custom resource in one namespace (None: a cluster-scoped kind), through
    CustomObjectsApi; errors become DeployError."""

    def __init__(self, client, namespace: str | None, plural: str = PLURAL, version: str = VERSION, kind: str = KIND):
        from kubernetes import client as k8s
        self.api = k8s.CustomObjectsApi(client)
        self.namespace, self.plural, self.version, self.kind = namespace, plural, version, kind
        self.server = getattr(client.configuration, "host", "")

    def _call(self, verb: str, name: str | None, fn: str, *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        scope = (f"{fn}_namespaced_custom_object", (self.namespace,)) if self.namespace is not None \
            else (f"{fn}_cluster_custom_object", ())
        try:
            return getattr(self.api, scope[0])(GROUP, self.version, *scope[1], self.plural, *args,
                                               _request_timeout=REQUEST_TIMEOUT_S)
        except (ApiException, HTTPError, OSError) as exc:
            status = getattr(exc, "status", None)
            missing = status == 404 and bool((_status_body(exc).get("details") or {}).get("name"))
            raise DeployError(str(explain(exc, verb, self.namespace, name, self.server, self.kind,
                                          f"{self.plural}.{GROUP}")), status, _transient(exc), missing) from None

    def get(self, name: str) -> dict | None:
        """The object, or None when there is none of that name."""
        try:
            return self._call("get", name, "get", name)
        except DeployError as exc:
            if exc.missing:
                return None
            raise

    def list(self) -> list[dict]:
        return self._call("list", None, "list")["items"]

    def create(self, body: dict) -> dict:
        return self._call("create", body["metadata"]["name"], "create", body)

    def replace(self, body: dict) -> dict:
        name = body["metadata"]["name"]
        return self._call("update", name, "replace", name, body)

    def delete(self, name: str) -> bool:
        """Delete it; False when there was none."""
        try:
            self._call("delete", name, "delete", name)
        except DeployError as exc:
            if exc.missing:
                return False
            raise
        return True



def _client(client=None, kubeconfig=None):
    return client if client is not None else api_client(kubeconfig)


def _services(namespace: str, client=None, kubeconfig=None) -> CustomObjects:
    return CustomObjects(_client(client, kubeconfig), namespace)


# ---------------------------------------------------------------------------------------------- status

def _conditions(status: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def is_ready(isvc: dict) -> bool:
    status = isvc.get("status") or {}
    return _conditions(status).get("Ready", {}).get("status") == "True" and _current(isvc)


def _current(isvc: dict) -> bool:
    """Whether the status speaks of the spec as it is now (the controller has seen this generation)."""
    observed = (isvc.get("status") or {}).get("observedGeneration")
    generation = isvc.get("metadata", {}).get("generation")
    return observed is None or generation is None or observed >= generation


def failure(status: dict) -> str | None:
    """The controller's reason and message when it reports that the service cannot become Ready."""
    conditions = _conditions(status)
    failed = [c for c in conditions.values() if c.get("status") == "False" and (c.get("reason") or c.get("message"))
              and c.get("reason") not in TRANSIENT_REASONS]
    failed.sort(key=lambda c: (c.get("type") != "Ready", not c.get("message")))
    model = status.get("modelStatus") or {}
    info = model.get("lastFailureInfo") or {}
    parts = []
    if failed:
        c = failed[0]
        parts.append(f"{c.get('type')} is False: {c.get('reason') or 'no reason given'}"
                     + (f": {c['message'].strip()}" if c.get("message") else ""))
    if model.get("transitionStatus") in FAILED_TRANSITIONS or (failed and info):
        said = " ".join(parts)
        detail = ": ".join(str(info[k]).strip() for k in ("reason", "message")
                           if info.get(k) and str(info[k]).strip() not in said)
        parts.append(f"model {model.get('transitionStatus') or 'failed'}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts) or None


def _progress(isvc: dict) -> str:
    status = isvc.get("status") or {}
    if not _current(isvc):
        return f"waiting for the controller to pick up generation {isvc['metadata'].get('generation')}"
    conditions = _conditions(status)
    if not conditions:
        return "no status yet"
    out = []
    for kind in ["Ready"] + sorted(k for k in conditions if k != "Ready"):
        c = conditions.get(kind)
        if c:
            reason = f" ({c['reason']})" if c.get("reason") else ""
            out.append(f"{kind} {c.get('status')}{reason}")
    ready = conditions.get("Ready", {})
    message = f": {ready['message'].strip()[:160]}" if ready.get("message") and ready.get("status") != "True" else ""
    return ", ".join(out) + message


def resolve_endpoint(isvc_status: dict, ingress_host: str | None = None,
                     ingress_port: int | None = None) -> tuple[str, str]:
    """(base URL to send requests to, Host header) from an InferenceService's status (or the whole object).

    Without an override that is status.url (or status.address.url, the cluster-local address) and its
    hostname. With ingress_host (a port-forward to the ingress gateway, or its external address) requests
    go to http://INGRESS_HOST[:INGRESS_PORT] and the Host header carries the service's hostname, which is
    how the gateway routes them."""
    status = isvc_status or {}
    if "status" in status and "apiVersion" in status:
        status = status.get("status") or {}
    url = status.get("url") or (status.get("address") or {}).get("url")
    if not url:
        raise DeployError("the InferenceService has no URL yet (status.url and status.address.url are empty): "
                          "wait until it is Ready (platepipe deploy --status)")
    host = urlparse(url).hostname or ""
    if ingress_host:
        base = ingress_host if "://" in ingress_host else f"http://{ingress_host}"
        if ingress_port:
            base = f"{base.rstrip('/')}:{ingress_port}"
        return base.rstrip("/"), host
    return url.rstrip("/"), host


def find(name: str, namespace: str, api_client=None, kubeconfig=None) -> dict | None:
    """The InferenceService, or None when there is none of that name."""
    return _services(namespace, api_client, kubeconfig).get(name)


def get(name: str, namespace: str, api_client=None, kubeconfig=None) -> dict:
    """The InferenceService; DeployError when there is none."""
    isvc = find(name, namespace, api_client, kubeconfig)
    if isvc is None:
        raise DeployError(f"there is no InferenceService {namespace}/{name}: deploy it with `platepipe deploy "
                          f"--storage-uri gs://...`, or check --name and --namespace")
    return isvc


def endpoint_for(name: str, namespace: str, api_client=None, kubeconfig=None, ingress_host: str | None = None,
                 ingress_port: int | None = None) -> tuple[str, str]:
    """(URL, Host header) of the InferenceService name in namespace, read from the cluster."""
    return resolve_endpoint(get(name, namespace, api_client, kubeconfig).get("status") or {},
                            ingress_host, ingress_port)


def format_status(isvc: dict, ingress_host: str | None = None, ingress_port: int | None = None) -> str:
    """Conditions, URL, Host header and traffic split, for people."""
    meta, status = isvc.get("metadata", {}), isvc.get("status") or {}
    model = isvc.get("spec", {}).get("predictor", {}).get("model", {})
    lines = [f"InferenceService {meta.get('namespace')}/{meta.get('name')}: "
             f"{'Ready' if is_ready(isvc) else 'NOT Ready'} (generation {meta.get('generation')}, "
             f"observed {status.get('observedGeneration', '-')})",
             f"  storage      {model.get('storageUri', '-')} (protocol {model.get('protocolVersion', '-')})"]
    for kind, c in sorted(_conditions(status).items(), key=lambda kv: (kv[0] != "Ready", kv[0])):
        detail = ": ".join(x for x in (c.get("reason"), (c.get("message") or "").strip()) if x)
        lines.append(f"  {kind:<20} {c.get('status')}" + (f"  {detail}" if detail else ""))
    try:
        url, host = resolve_endpoint(status, ingress_host, ingress_port)
        lines += [f"  URL          {url}", f"  Host header  {host}"]
    except DeployError:
        lines.append("  URL          (none yet)")
    for component, info in sorted((status.get("components") or {}).items()):
        for t in info.get("traffic") or []:
            tags = [x for x in (t.get("tag"), "latest" if t.get("latestRevision") else None) if x]
            lines.append(f"  traffic      {component}: {t.get('percent', 0)}% to {t.get('revisionName', '?')}"
                         + (f" ({', '.join(dict.fromkeys(tags))})" if tags else ""))
    why = failure(status)
    if why and _current(isvc):
        lines.append(f"  failure      {why}")
    return "\n".join(lines)


def delete(name: str, namespace: str, api_client=None, kubeconfig=None) -> bool:
    """Delete the InferenceService; False when there was none."""
    return _services(namespace, api_client, kubeconfig).delete(name)


# ---------------------------------------------------------------------------------------------- deploy

@dataclass
class DeployResult:
    name: str
    namespace: str
    url: str
    host: str
    created: bool        # False: an existing service was updated
    generation: int
    isvc: dict
    previous: dict | None = None  # the service before this deploy (None: it was new), for roll_back
    mode: str = "Serverless"      # KServe's deployment mode: Serverless or RawDeployment
    canary: bool = False          # the new revision has 0% of traffic; url/host are its own (tagged) address


def deployment_mode(spec: DeployConfig, current: dict | None, client) -> str:
    """Serverless or RawDeployment: deploy.mode when set; else what the InferenceService says (its status, its
    annotation); else the cluster's: Serverless where Knative Serving is installed (KServe's default)."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    if spec.mode != "auto":
        return MODES[spec.mode]
    if current:
        said = (current.get("status") or {}).get("deploymentMode") or \
            ((current.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION)
        if said in MODES.values():
            return said
    try:
        groups = {g.name for g in k8s.ApisApi(client).get_api_versions(_request_timeout=REQUEST_TIMEOUT_S).groups}
    except (ApiException, OSError) as exc:
        raise DeployError(f"cannot tell KServe's deployment mode (listing API groups: {exc}): set deploy.mode to "
                          f"serverless or raw") from None
    return "Serverless" if "serving.knative.dev" in groups else "RawDeployment"


def tagged_endpoint(isvc: dict, tag: str, ingress_host: str | None, ingress_port: int | None) -> tuple[str, str]:
    """(URL, Host header) of the revision tagged `tag` (latest, prev) under KServe's tag routing."""
    traffic = ((isvc.get("status") or {}).get("components") or {}).get("predictor", {}).get("traffic") or []
    url = next((t.get("url") for t in traffic if t.get("tag") == tag and t.get("url")), None)
    if not url:
        raise DeployError(f"the InferenceService shows no '{tag}' URL in status.components.predictor.traffic: tag "
                          f"routing ({TAG_ROUTING}) is off on this cluster; set deploy.canary_steps: [] to replace "
                          f"the serving model at once")
    return resolve_endpoint({"url": url}, ingress_host, ingress_port)


class _NotReady(Exception):
    pass


def deploy(spec: DeployConfig, storage_uri: str, *, api_client=None, kubeconfig=None, poll_s: float | None = None,
           ingress_host: str | None = None, ingress_port: int | None = None, canary: bool = True,
           log: Callable[[str], None] = logging.getLogger(__name__).info) -> DeployResult:
    """Create or update the InferenceService of the `deploy` settings serving storage_uri, wait until it is
    Ready and return its endpoint. When it does not
    become Ready, put the previous spec back (or delete what was created) and raise DeployError. First the
    image, the permissions and the runtime (components.runtime.prepare). canary: where the mode allows it and a
    model serves already, bring the new one up at 0% of traffic on its own URL (ramp moves traffic to it)."""
    from platepipe.components import runtime

    check_storage_uri(storage_uri)  # before anything is asked of the cluster
    client = _client(api_client, kubeconfig)
    runtime.prepare(spec, client, log)
    isvcs = _services(spec.namespace, client)
    where = f"{spec.namespace}/{spec.name}"
    previous = isvcs.get(spec.name)
    mode = deployment_mode(spec, previous, client)
    if mode == "RawDeployment" and spec.scale_metric in ("concurrency", "rps"):
        raise DeployError(f"deploy.scale_metric {spec.scale_metric} needs Knative (Serverless mode); {where} deploys "
                          f"in RawDeployment mode: set deploy.scale_metric to cpu or memory")
    canary = canary and previous is not None and mode == "Serverless" and bool(spec.canary_steps)
    wanted = manifest(spec, storage_uri, canary=0 if canary else None)
    created = previous is None
    if created:
        try:
            current = isvcs.create(wanted)
        except DeployError as exc:
            if exc.status != 409:
                raise
            previous = isvcs.get(spec.name)  # created meanwhile by someone else: update it instead
            created = previous is None
            if created:
                raise
    if not created:
        current = _update(isvcs, previous, wanted)
    generation = current["metadata"].get("generation")
    log(f"{'created' if created else 'updated'} InferenceService {where} (generation {generation}, {mode}"
        f"{', the new model at 0% of traffic' if canary else ''}); waiting up to {spec.timeout_s:g} s for Ready")
    try:
        ready = _wait(isvcs, spec.name, generation, spec.timeout_s, POLL_S if poll_s is None else poll_s, log)
    except _NotReady as exc:
        undone = _roll_back(isvcs, spec.name, previous)
        raise DeployError(f"InferenceService {where} {exc}; {undone}") from None
    except DeployError as exc:  # the API server failed for good while waiting: do not leave the new spec
        undone = _roll_back(isvcs, spec.name, previous)
        raise DeployError(f"{exc} (while waiting for {where} to become Ready); {undone}") from None
    except KeyboardInterrupt:  # Ctrl-C: leave the service as it was before, then stop
        log(f"interrupted while waiting for {where} to become Ready: {_roll_back(isvcs, spec.name, previous)}")
        raise
    if canary:
        try:
            url, host = tagged_endpoint(ready, "latest", ingress_host, ingress_port)
        except DeployError as exc:
            raise DeployError(f"{exc}; {_roll_back(isvcs, spec.name, previous)}") from None
    else:
        url, host = resolve_endpoint(ready.get("status") or {}, ingress_host, ingress_port)
    return DeployResult(spec.name, spec.namespace, url, host, created, generation, ready, previous, mode, canary)


def ramp(spec: DeployConfig, previous: dict | None, check: Callable[[str, str], None], *, api_client=None,
         kubeconfig=None, poll_s: float | None = None, ingress_host: str | None = None,
         ingress_port: int | None = None, log: Callable[[str], None] = logging.getLogger(__name__).info) -> str:
    """Move traffic to the canary in deploy.canary_steps, check(url, host) (the smoke test) on the service's own
    address after each; any failure puts the previous service back at 100% and raises DeployError. At 100 the
    canary share is dropped: the new revision is rolled out."""
    isvcs = _services(spec.namespace, api_client, kubeconfig)
    where = f"{spec.namespace}/{spec.name}"
    for share in spec.canary_steps:
        current = isvcs.get(spec.name)
        if current is None:
            raise DeployError(f"InferenceService {where} is gone while its canary ramped up")
        wanted = {"metadata": {"name": spec.name, "labels": {}, "annotations": {}},
                  "spec": copy.deepcopy(current["spec"])}
        predictor = wanted["spec"].setdefault("predictor", {})
        if share >= 100:
            predictor.pop("canaryTrafficPercent", None)
        else:
            predictor["canaryTrafficPercent"] = share
        try:
            generation = _update(isvcs, current, wanted)["metadata"].get("generation")
            ready = _wait(isvcs, spec.name, generation, spec.timeout_s, POLL_S if poll_s is None else poll_s, log)
            url, host = resolve_endpoint(ready.get("status") or {}, ingress_host, ingress_port)
            log(f"canary at {share}% of traffic: checking {where}")
            check(url, host)
        except (Exception, KeyboardInterrupt) as exc:
            undone = _roll_back(isvcs, spec.name, previous)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise DeployError(f"the canary failed at {share}% of traffic ({exc}); {undone}") from None
    return f"rolled out: the new model has 100% of traffic ({' -> '.join(f'{s}%' for s in spec.canary_steps)})"


def roll_back(name: str, namespace: str, previous: dict | None, api_client=None, kubeconfig=None) -> str:
    """Put back the service as it was before a deploy (delete it when previous is None, i.e. it was new); used
    when the smoke test fails on a service that became Ready. Returns what was done, in a sentence."""
    return _roll_back(_services(namespace, api_client, kubeconfig), name, previous)


def _replaced(current: dict, spec: dict, labels: dict | None, annotations: dict | None) -> dict:
    """current (with its resourceVersion, finalizers, ...) carrying spec, labels and annotations."""
    body = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
    meta = body.setdefault("metadata", {})
    meta.pop("managedFields", None)
    for key, value in (("labels", labels), ("annotations", annotations)):
        if value:
            meta[key] = dict(value)
        else:
            meta.pop(key, None)
    body["spec"] = copy.deepcopy(spec)
    return body


def _update(isvcs: CustomObjects, previous: dict, wanted: dict) -> dict:
    name = wanted["metadata"]["name"]
    current = previous
    for attempt in range(CONFLICT_RETRIES + 1):
        meta = current.get("metadata", {})
        body = _replaced(current, wanted["spec"], {**(meta.get("labels") or {}), **wanted["metadata"]["labels"]},
                         {**(meta.get("annotations") or {}), **wanted["metadata"]["annotations"]})
        try:
            return isvcs.replace(body)
        except DeployError as exc:
            if exc.status != 409 or attempt == CONFLICT_RETRIES:
                raise
        current = isvcs.get(name)
        if current is None:
            raise DeployError(f"InferenceService {isvcs.namespace}/{name} was deleted while it was being updated: "
                              f"run the command again")
    raise AssertionError("unreachable")


def _wait(isvcs: CustomObjects, name: str, generation: int, timeout_s: float, poll_s: float,
          log: Callable[[str], None]) -> dict:
    started = time.monotonic()
    deadline = started + timeout_s
    last = None
    while True:
        try:
            isvc = isvcs.get(name)
        except DeployError as exc:
            if not exc.transient or time.monotonic() >= deadline:
                raise
            line = f"API server trouble, retrying: {exc}"
        else:
            if isvc is None:
                raise _NotReady("was deleted while waiting for it to become Ready")
            if is_ready(isvc) and (isvc["metadata"].get("generation") or 0) >= (generation or 0):
                log(f"  {time.monotonic() - started:5.1f} s  Ready")
                return isvc
            why = failure(isvc.get("status") or {}) if _current(isvc) else None
            if why:
                raise _NotReady(f"failed: the KServe controller reports {why}")
            line = _progress(isvc)
        if line != last:
            log(f"  {time.monotonic() - started:5.1f} s  {line}")
            last = line
        if time.monotonic() >= deadline:
            raise _NotReady(f"did not become Ready within {timeout_s:g} s (last state: {line})")
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def _roll_back(isvcs: CustomObjects, name: str, previous: dict | None) -> str:
    """Undo the change; a sentence saying what was done."""
    try:
        if previous is None:
            isvcs.delete(name)
            return "deleted it again (it was new)"
        meta = previous.get("metadata", {})
        for attempt in range(CONFLICT_RETRIES + 1):
            current = isvcs.get(name)
            if current is None:
                return "it is gone, so the previous spec could not be restored"
            try:
                isvcs.replace(_replaced(current, previous.get("spec", {}), meta.get("labels"), meta.get("annotations")))
                return "restored the previous spec"
            except DeployError as exc:
                if exc.status != 409 or attempt == CONFLICT_RETRIES:
                    raise
    except DeployError as exc:
        return f"rolling back failed too: {exc}"
    raise AssertionError("unreachable")
