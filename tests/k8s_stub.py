"""A stub Kubernetes API server on 127.0.0.1 for the deploy tests: InferenceServices kept in memory, and a
scripted KServe controller.

    with K8sStub(controller=ready(after_gets=3)) as stub:
        kubeconfig = stub.kubeconfig(tmp_path / "kubeconfig")   # the real kubernetes client loads this
        ...

It speaks enough of the API server for the real `kubernetes` client: GET (one object or the list), POST,
PUT (resourceVersion required and checked: 409 Conflict when stale), PATCH (application/merge-patch+json and
application/json-patch+json; strategic merge is refused with 415, as for any custom resource) and DELETE on
/apis/serving.kserve.io/v1beta1/namespaces/NS/inferenceservices[/NAME]. It assigns uid, resourceVersion
(bumped by every write, status updates included) and generation (bumped when the spec changes), keeps
status apart from the spec (the CRD's status subresource: writes to the object ignore status), checks the
bearer token (401), and answers errors with Kubernetes Status objects (401, 403, 404, 409, 415, 422).

Beside InferenceServices it keeps ServingRuntimes (namespaced) and ClusterServingRuntimes (`runtimes`,
keyed (plural, namespace or "", name); get, list, create, update with the resourceVersion check, delete), and
answers what `platepipe doctor --cluster` and the deploy's pre-flight ask: API discovery (/apis, the KServe
group's versions), SelfSubjectAccessReviews (allowed unless (verb, resource) is in `denied`, or `forbidden`),
nodes (`nodes`: name -> allocatable nvidia.com/gpu) and service accounts (`service_accounts`).

The "controller" acts when an object is read (GET), as the real one acts in the background: the first read
after a write still shows the old status (the controller has not seen the new generation yet); then the
Controller script decides: Ready (status.url, address.url, Ready/PredictorReady/IngressReady True,
observedGeneration, traffic) after a number of reads or seconds, a failure (Ready False with a reason and
message), or forever in progress (Ready Unknown). `forbidden = True` answers 403 to everything (RBAC).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional, Union

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
KIND_NAME = "InferenceService"
PATH = re.compile(rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/([^/]+)/{PLURAL}(?:/([^/]+))?/?$")
RUNTIME_PATH = re.compile(rf"^/apis/{re.escape(GROUP)}/v1alpha1(?:/namespaces/([^/]+))?/"
                          rf"(servingruntimes|clusterservingruntimes)(?:/([^/]+))?/?$")
RUNTIME_KINDS = {"servingruntimes": "ServingRuntime", "clusterservingruntimes": "ClusterServingRuntime"}
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass
class Controller:
    """What the fake KServe controller makes of each new generation."""

    outcome: str = "ready"          # ready | fail | never
    after_gets: int = 2             # the outcome shows on this read after the write (reads before: in progress)
    after_s: Optional[float] = None  # or once this many seconds have passed since the write
    reason: str = "RevisionFailed"
    message: str = ('Revision "platepipe-predictor-00001" failed with message: Container failed with: '
                    'torchserve: model pipeline failed to load.')


def ready(after_gets: int = 2, after_s: float | None = None) -> Controller:
    return Controller("ready", after_gets, after_s)


def failing(reason: str = "RevisionFailed", message: str | None = None, after_gets: int = 2) -> Controller:
    return Controller("fail", after_gets, None, reason, message or Controller.message)


def never() -> Controller:
    return Controller("never")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str | None = None, message: str | None = None) -> dict:
    c = {"type": kind, "status": status, "lastTransitionTime": _now()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class PatchError(ValueError):
    pass


def json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902: add, remove, replace, test, copy, move."""
    doc = copy.deepcopy(doc)

    def walk(pointer: str) -> tuple[Any, str]:
        if not pointer.startswith("/"):
            raise PatchError(f"bad JSON pointer {pointer!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
        node = doc
        for part in parts[:-1]:
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError):
                raise PatchError(f"path {pointer} does not exist") from None
        return node, parts[-1]

    def read(pointer: str) -> Any:
        node, key = walk(pointer)
        try:
            return node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError):
            raise PatchError(f"path {pointer} does not exist") from None

    def add(pointer: str, value: Any) -> None:
        node, key = walk(pointer)
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else int(key), value)
        elif isinstance(node, dict):
            node[key] = value
        else:
            raise PatchError(f"cannot add at {pointer}")

    def remove(pointer: str) -> Any:
        value = read(pointer)
        node, key = walk(pointer)
        if isinstance(node, list):
            del node[int(key)]
        else:
            del node[key]
        return value

    if not isinstance(ops, list):
        raise PatchError("a JSON patch is a list of operations")
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            add(path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            remove(path)
        elif kind == "replace":
            remove(path)
            add(path, copy.deepcopy(op["value"]))
        elif kind == "test":
            if read(path) != op["value"]:
                raise PatchError(f"test failed at {path}")
        elif kind == "copy":
            add(path, copy.deepcopy(read(op["from"])))
        elif kind == "move":
            add(path, remove(op["from"]))
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


class K8sStub:
    """The server; see the module docstring. Tests may change `controller`, `forbidden`, `conflicts`
    (the next N updates find the object changed by someone else) and `kserve_installed` at any time."""

    def __init__(self, controller: Union[Controller, Callable[[dict], Controller], None] = None,
                 token: str = "stub-token", user: str = "system:serviceaccount:ml:deployer"):
        self.controller = controller or ready()
        self.token = token
        self.user = user
        self.forbidden = False
        self.kserve_installed = True
        self.knative = True  # Knative Serving installed: KServe's Serverless mode is the default
        self.conflicts = 0
        self.objects: dict[tuple[str, str], dict] = {}
        self.revisions: dict[tuple[str, str], tuple] = {}  # (namespace, name) -> (template, revision, previous)
        self.runtimes: dict[tuple[str, str, str], dict] = {}
        self.denied: set[tuple[str, str]] = set()           # (verb, resource) a SelfSubjectAccessReview refuses
        self.nodes: dict[str, int] = {"cpu-node": 0, "gpu-node": 1}
        self.service_accounts: dict[tuple[str, str], dict] = {}  # (namespace, name) -> {"annotations", "secrets"}
        self.requests: list[tuple[str, str, str, Any]] = []  # (method, path, content type, body)
        self.lock = threading.RLock()
        self._rv = 100
        self._since_write: dict[tuple[str, str], tuple[int, float]] = {}  # reads since the last write, its time
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> "K8sStub":
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "K8sStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: str | Path, namespace: str = "default", token: str | None = None) -> Path:
        """A kubeconfig file pointing at this server with a bearer token."""
        path = Path(path)
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub", "preferences": {},
            "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token or self.token}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "tester", "namespace": namespace}}],
        }))
        return path

    # -- helpers for tests

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def calls(self, method: str | None = None, every: bool = False) -> list[tuple[str, str, str, Any]]:
        """The requests on InferenceServices (every: all requests), in order."""
        with self.lock:
            return [r for r in self.requests if (method is None or r[0] == method) and (every or PATH.match(r[1]))]

    # -- the controller

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _written(self, key: tuple[str, str]) -> None:
        self._since_write[key] = (0, time.monotonic())

    def _reconcile(self, key: tuple[str, str]) -> None:
        obj = self.objects[key]
        reads, written = self._since_write.get(key, (0, time.monotonic()))
        reads += 1
        self._since_write[key] = (reads, written)
        if reads == 1:
            return  # not seen yet: the old status stays
        old = obj.get("status") or {}
        if old.get("observedGeneration") == obj["metadata"]["generation"] and any(
                c["type"] == "Ready" and c["status"] != "Unknown" for c in old.get("conditions", [])):
            return  # this generation is settled (Ready or failed)
        script = self.controller(obj) if callable(self.controller) else self.controller
        due = (time.monotonic() - written >= script.after_s) if script.after_s is not None \
            else reads >= script.after_gets
        if script.outcome == "ready" and due:
            status = self._ready_status(obj)
        elif script.outcome == "fail" and due:
            status = self._failed_status(obj, script)
        else:
            status = self._progress_status(obj)
        if status != obj.get("status"):
            obj["status"] = status
            obj["metadata"]["resourceVersion"] = self._next_rv()

    @staticmethod
    def _kept(obj: dict) -> dict:
        """What the controller keeps of the old status while a new generation rolls out."""
        old = obj.get("status") or {}
        return {k: copy.deepcopy(old[k]) for k in ("url", "address", "components") if k in old}

    def _progress_status(self, obj: dict) -> dict:
        name = obj["metadata"]["name"]
        message = f'Configuration "{name}-predictor" is waiting for a Revision to become ready.'
        status = self._kept(obj)
        status.update({"observedGeneration": obj["metadata"]["generation"], "deploymentMode": "Serverless",
                       "conditions": [_condition("PredictorReady", "Unknown", "RevisionMissing", message),
                                      _condition("Ready", "Unknown", "RevisionMissing", message)],
                       "modelStatus": {"transitionStatus": "InProgress",
                                       "states": {"activeModelState": "Pending", "targetModelState": "Loading"}}})
        return status

    def _failed_status(self, obj: dict, script: Controller) -> dict:
        status = self._kept(obj)
        status.update({"observedGeneration": obj["metadata"]["generation"], "deploymentMode": "Serverless",
                       "conditions": [_condition("PredictorReady", "False", script.reason, script.message),
                                      _condition("Ready", "False", script.reason, script.message)],
                       "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                                       "states": {"activeModelState": "FailedToLoad",
                                                  "targetModelState": "FailedToLoad"},
                                       "lastFailureInfo": {"reason": "ModelLoadFailed", "message": script.message}}})
        return status

    def _mode(self, obj: dict) -> str:
        said = (obj["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode")
        return said or ("Serverless" if self.knative else "RawDeployment")

    def _ready_status(self, obj: dict) -> dict:
        meta, generation = obj["metadata"], obj["metadata"]["generation"]
        name, ns = meta["name"], meta["namespace"]
        predictor = obj["spec"].get("predictor", {})
        # as Knative does: a new revision only when the template changes, not for a change of traffic alone
        template = json.dumps({k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}, sort_keys=True)
        kept_template, revision, previous = self.revisions.get((ns, name), (None, None, None))
        if template != kept_template:
            previous, revision = revision, f"{name}-predictor-{generation:05d}"
            self.revisions[(ns, name)] = (template, revision, previous)
        canary = predictor.get("canaryTrafficPercent")
        tags = (meta.get("annotations") or {}).get("serving.kserve.io/enable-tag-routing") == "true" and \
            self._mode(obj) == "Serverless"
        if canary is not None and previous:
            traffic = [{"revisionName": revision, "percent": canary, "latestRevision": True, "tag": "latest"},
                       {"revisionName": previous, "percent": 100 - canary, "latestRevision": False, "tag": "prev"}]
        else:
            traffic = [{"revisionName": revision, "percent": 100, "latestRevision": True}]
            if tags:
                traffic[0]["tag"] = "latest"
        if tags:
            for entry in traffic:
                if entry.get("tag"):
                    entry["url"] = f"http://{entry['tag']}-{name}-predictor.{ns}.example.com"
        url = f"http://{name}.{ns}.example.com"
        return {
            "observedGeneration": generation,
            "url": url,
            "address": {"url": f"http://{name}.{ns}.svc.cluster.local"},
            "deploymentMode": self._mode(obj),
            "conditions": [_condition("IngressReady", "True"), _condition("PredictorConfigurationReady", "True"),
                           _condition("PredictorReady", "True"), _condition("PredictorRouteReady", "True"),
                           _condition("Ready", "True")],
            "components": {"predictor": {"url": f"http://{name}-predictor.{ns}.example.com",
                                         "latestCreatedRevision": revision, "latestReadyRevision": revision,
                                         "previousRolledoutRevision": previous or "",
                                         "latestRolledoutRevision": revision, "traffic": traffic}},
            "modelStatus": {"transitionStatus": "UpToDate", "copies": {"failedCopies": 0, "totalCopies": 1},
                            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}},
        }


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


_VERBS = {("GET", True): "get", ("GET", False): "list", ("POST", False): "create", ("PUT", True): "update",
          ("PATCH", True): "patch", ("DELETE", True): "delete"}


class _Handler(BaseHTTPRequestHandler):
    stub: K8sStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        stub = self.stub
        path = self.path.split("?", 1)[0]
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            body = self._body()
        except ValueError:
            return self._send(400, _status(400, "BadRequest", "the request body is not JSON"))
        with stub.lock:
            stub.requests.append((method, path, content_type, copy.deepcopy(body)))
        if self.headers.get("Authorization") != f"Bearer {stub.token}":
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        other = self._other(stub, method, path, body)
        if other is not None:
            return self._send(*other)
        match = PATH.match(path)
        if not match or not stub.kserve_installed:
            return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        namespace, name = match.groups()
        verb = _VERBS.get((method, name is not None))
        if verb is None:
            return self._send(405, _status(405, "MethodNotAllowed", f"{method} is not supported here"))
        if stub.forbidden:
            what = f'{PLURAL}.{GROUP} "{name}"' if name else f"{PLURAL}.{GROUP}"
            return self._send(403, _status(
                403, "Forbidden", f'{what} is forbidden: User "{stub.user}" cannot {verb} resource "{PLURAL}" in '
                                  f'API group "{GROUP}" in the namespace "{namespace}"',
                {"name": name or "", "group": GROUP, "kind": PLURAL}))
        with stub.lock:
            code, answer = getattr(self, f"_{verb}")(stub, namespace, name, body, content_type)
        self._send(code, answer)

    # -- everything but InferenceServices

    def _other(self, stub: K8sStub, method: str, path: str, body: Any) -> tuple[int, dict] | None:
        kserve = stub.kserve_installed
        if method == "GET" and path.rstrip("/") == "/apis":
            groups = [{"name": GROUP, "versions": [{"groupVersion": f"{GROUP}/{v}", "version": v}
                                                   for v in ("v1beta1", "v1alpha1")],
                       "preferredVersion": {"groupVersion": f"{GROUP}/v1beta1", "version": "v1beta1"}}] if kserve else []
            if stub.knative:
                groups.append({"name": "serving.knative.dev", "versions": [
                    {"groupVersion": "serving.knative.dev/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "serving.knative.dev/v1", "version": "v1"}})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        found = re.match(rf"^/apis/{re.escape(GROUP)}/(v1beta1|v1alpha1)/?$", path)
        if method == "GET" and found:
            if not kserve:
                return 404, _status(404, "NotFound", "the server could not find the requested resource")
            names = {"v1beta1": [(PLURAL, True, KIND_NAME)],
                     "v1alpha1": [("servingruntimes", True, "ServingRuntime"),
                                  ("clusterservingruntimes", False, "ClusterServingRuntime")]}[found.group(1)]
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{found.group(1)}",
                         "resources": [{"name": n, "singularName": "", "namespaced": ns, "kind": k,
                                        "verbs": list(set(_VERBS.values()))} for n, ns, k in names]}
        if method == "POST" and path == SSAR:
            attrs = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
            refused = stub.forbidden or (attrs.get("verb"), attrs.get("resource")) in stub.denied
            return 201, {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                         "metadata": {}, "spec": body.get("spec"),
                         "status": {"allowed": not refused, **({"reason": "no RBAC rule allows it"} if refused else
                                                               {"reason": "allowed by RoleBinding"})}}
        if method == "GET" and path == "/api/v1/nodes":
            return 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                         "items": [{"metadata": {"name": n}, "status": {"allocatable": {
                             "cpu": "8", **({"nvidia.com/gpu": str(g)} if g else {})}}} for n, g in stub.nodes.items()]}
        found = re.match(r"^/api/v1/namespaces/([^/]+)/serviceaccounts/([^/]+)$", path)
        if method == "GET" and found:
            sa = stub.service_accounts.get(found.groups())
            if sa is None:
                return 404, _status(404, "NotFound", f'serviceaccounts "{found.group(2)}" not found',
                                    {"name": found.group(2), "kind": "serviceaccounts"})
            return 200, {"kind": "ServiceAccount", "apiVersion": "v1",
                         "metadata": {"name": found.group(2), "namespace": found.group(1),
                                      "annotations": sa.get("annotations") or {}},
                         "secrets": [{"name": n} for n in sa.get("secrets") or []]}
        found = RUNTIME_PATH.match(path)
        if found:
            namespace, plural, name = found.groups()
            if not kserve:
                return 404, _status(404, "NotFound", "the server could not find the requested resource")
            verb = _VERBS.get((method, name is not None))
            if stub.forbidden or (verb, plural) in stub.denied:
                return 403, _status(403, "Forbidden", f'{plural}.{GROUP} is forbidden: User "{stub.user}" cannot '
                                                      f'{verb} resource "{plural}" in API group "{GROUP}"',
                                    {"name": name or "", "group": GROUP, "kind": plural})
            with stub.lock:
                return self._runtime(stub, verb, plural, namespace or "", name, body)
        return None

    @staticmethod
    def _runtime(stub: K8sStub, verb: str | None, plural: str, namespace: str, name: str | None,
                 body: Any) -> tuple[int, dict]:
        def missing(n: str) -> tuple[int, dict]:
            return 404, _status(404, "NotFound", f'{plural}.{GROUP} "{n}" not found',
                                {"name": n, "group": GROUP, "kind": plural})

        key = (plural, namespace, name or (body or {}).get("metadata", {}).get("name", ""))
        if verb == "list":
            return 200, {"apiVersion": f"{GROUP}/v1alpha1", "kind": RUNTIME_KINDS[plural] + "List", "metadata": {},
                         "items": [copy.deepcopy(o) for (p, ns, _), o in sorted(stub.runtimes.items())
                                   if p == plural and ns == namespace]}
        if verb == "get":
            return (200, copy.deepcopy(stub.runtimes[key])) if key in stub.runtimes else missing(name)
        if verb == "create":
            if key in stub.runtimes:
                return 409, _status(409, "AlreadyExists", f'{plural}.{GROUP} "{key[2]}" already exists',
                                    {"name": key[2], "group": GROUP, "kind": plural})
            obj = copy.deepcopy(body)
            obj["metadata"].update({"uid": str(uuid.uuid4()), "generation": 1, "resourceVersion": stub._next_rv()})
            if namespace:
                obj["metadata"]["namespace"] = namespace
            stub.runtimes[key] = obj
            return 201, copy.deepcopy(obj)
        if verb == "update":
            if key not in stub.runtimes:
                return missing(name)
            old = stub.runtimes[key]
            if (body.get("metadata") or {}).get("resourceVersion") != old["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on {plural}.{GROUP} "{name}"',
                                    {"name": name, "group": GROUP, "kind": plural})
            obj = copy.deepcopy(body)
            obj["metadata"]["generation"] = old["metadata"]["generation"] + (obj.get("spec") != old.get("spec"))
            obj["metadata"]["resourceVersion"] = stub._next_rv()
            stub.runtimes[key] = obj
            return 200, copy.deepcopy(obj)
        if verb == "delete":
            return (200, stub.runtimes.pop(key)) if key in stub.runtimes else missing(name)
        return 405, _status(405, "MethodNotAllowed", "not supported here")

    # -- verbs (called with the stub's lock held)

    @staticmethod
    def _not_found(name: str) -> tuple[int, dict]:
        return 404, _status(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found',
                            {"name": name, "group": GROUP, "kind": PLURAL})

    def _get(self, stub: K8sStub, namespace: str, name: str, body: Any, content_type: str) -> tuple[int, dict]:
        key = (namespace, name)
        if key not in stub.objects:
            return self._not_found(name)
        stub._reconcile(key)
        return 200, copy.deepcopy(stub.objects[key])

    def _list(self, stub: K8sStub, namespace: str, name: None, body: Any, content_type: str) -> tuple[int, dict]:
        items = [copy.deepcopy(o) for (ns, _), o in sorted(stub.objects.items()) if ns == namespace]
        return 200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceServiceList",
                     "metadata": {"resourceVersion": str(stub._rv)}, "items": items}

    def _create(self, stub: K8sStub, namespace: str, name: None, body: Any, content_type: str) -> tuple[int, dict]:
        if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
            return 422, _status(422, "Invalid", "metadata.name: Required value: name is required")
        meta = body["metadata"]
        if meta.get("namespace", namespace) != namespace:
            return 400, _status(400, "BadRequest", "the namespace of the provided object does not match the "
                                                   "namespace sent on the request")
        key = (namespace, meta["name"])
        if key in stub.objects:
            return 409, _status(409, "AlreadyExists", f'{PLURAL}.{GROUP} "{meta["name"]}" already exists',
                                {"name": meta["name"], "group": GROUP, "kind": PLURAL})
        obj = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
        obj["metadata"].update({"namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1,
                                "resourceVersion": stub._next_rv(), "creationTimestamp": _now()})
        stub.objects[key] = obj
        stub._written(key)
        return 201, copy.deepcopy(obj)

    def _store(self, stub: K8sStub, key: tuple[str, str], new: dict) -> tuple[int, dict]:
        """Write new over the stored object: status, uid, creation time and generation are the server's."""
        old = stub.objects[key]
        obj = {k: copy.deepcopy(v) for k, v in new.items() if k != "status"}
        meta = obj.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name"):
            meta[field] = old["metadata"][field]
        changed = obj.get("spec") != old.get("spec")
        meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
        meta["resourceVersion"] = stub._next_rv()
        if "status" in old:
            obj["status"] = copy.deepcopy(old["status"])
        stub.objects[key] = obj
        if changed:
            stub._written(key)
        return 200, copy.deepcopy(obj)

    def _conflict(self, name: str) -> tuple[int, dict]:
        return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "{name}": the '
                                             f'object has been modified; please apply your changes to the latest '
                                             f'version and try again', {"name": name, "group": GROUP, "kind": PLURAL})

    def _interfere(self, stub: K8sStub, key: tuple[str, str]) -> None:
        """Someone else wrote the object just before this request (tests: stub.conflicts)."""
        if stub.conflicts > 0:
            stub.conflicts -= 1
            stub.objects[key]["metadata"]["resourceVersion"] = stub._next_rv()

    def _update(self, stub: K8sStub, namespace: str, name: str, body: Any, content_type: str) -> tuple[int, dict]:
        key = (namespace, name)
        if key not in stub.objects:
            return self._not_found(name)
        if not isinstance(body, dict) or (body.get("metadata") or {}).get("name") != name:
            return 400, _status(400, "BadRequest", "the name of the object does not match the name on the URL")
        rv = body["metadata"].get("resourceVersion")
        if not rv:
            return 422, _status(422, "Invalid", f'{KIND_NAME} "{name}" is invalid: metadata.resourceVersion: '
                                                f'Invalid value: 0x0: must be specified for an update',
                                {"name": name, "group": GROUP, "kind": KIND_NAME})
        self._interfere(stub, key)
        if rv != stub.objects[key]["metadata"]["resourceVersion"]:
            return self._conflict(name)
        return self._store(stub, key, body)

    def _patch(self, stub: K8sStub, namespace: str, name: str, body: Any, content_type: str) -> tuple[int, dict]:
        key = (namespace, name)
        if key not in stub.objects:
            return self._not_found(name)
        self._interfere(stub, key)
        current = stub.objects[key]
        if content_type == MERGE_PATCH:
            if not isinstance(body, dict):
                return 400, _status(400, "BadRequest", "a merge patch is a JSON object")
            patched = merge_patch(current, body)
        elif content_type == JSON_PATCH:
            try:
                patched = json_patch(current, body)
            except (PatchError, KeyError, TypeError) as exc:
                return 422, _status(422, "Invalid", f"the JSON patch cannot be applied: {exc}")
        else:
            return 415, _status(415, "UnsupportedMediaType",
                                f"the body of the request was in an unknown format - accepted media types include: "
                                f"{JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml")
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            return self._conflict(name)
        return self._store(stub, key, patched)

    def _delete(self, stub: K8sStub, namespace: str, name: str, body: Any, content_type: str) -> tuple[int, dict]:
        key = (namespace, name)
        if key not in stub.objects:
            return self._not_found(name)
        obj = stub.objects.pop(key)
        stub._since_write.pop(key, None)
        obj["metadata"]["resourceVersion"] = stub._next_rv()
        return 200, obj

