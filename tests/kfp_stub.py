"""A stub Kubeflow Pipelines API server (v2beta1 REST) on 127.0.0.1 for the KFP client tests.

    with KfpStub() as stub:
        kfp = connect(stub.url)                    # the real kfp.Client talks to it
        ...
        stub.requests                              # every request: method, path, query, headers, body, json, files

It speaks what kfp.Client uses to upload pipelines, start and follow runs and schedule them: healthz,
pipelines (list with a display_name filter, create, delete, multipart upload and upload_version, versions
list/get), experiments (list with filter, create), runs (create, get) and recurring runs (create, list, delete).
Objects are kept in memory with ids and timestamps; errors come back as grpc-gateway Status JSON
({"error", "code", "message"}) with the HTTP status the real server uses (404, 409, 400).

Knobs: `token` (requests without "Authorization: Bearer TOKEN" get 401), `forbidden` (403 to everything),
`multi_user` (healthz says so), `login_page` (an HTML login page, 200, for everything, as an auth proxy
answers), `run_states` (the states a run shows on its successive GETs, the last one
repeated), `run_error` (the error message of a FAILED run), `stall_s` (a server that stops answering).
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class KfpStub:
    def __init__(self, token: Optional[str] = None, multi_user: bool = False):
        self.token = token
        self.forbidden = False
        self.login_page = False
        self.multi_user = multi_user
        self.run_states: list[str] = ["PENDING", "RUNNING", "SUCCEEDED"]
        self.run_error = "task 'train' failed: exit code 1"
        self.stall_s = 0.0  # every request but healthz waits this long before its answer (a hung server)
        self.requests: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.run_gets: dict[str, int] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.follows_latest = True  # a recurring run may name the pipeline alone (KFP 2: its latest version)
        self.lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._connections: list[socket.socket] = []

    # -------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "KfpStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                stub._connections.append(self.connection)  # kept alive by the client: closed on exit

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if stub.stall_s and not self.path.startswith(API + "/healthz"):
                    time.sleep(stub.stall_s)
                status, payload = stub._handle(self.command, self.path, {k.title(): v for k, v in self.headers.items()}, body)
                ctype = "application/json"
                if stub.login_page:  # what an unauthenticated request meets behind Kubeflow's auth proxy
                    status, payload, ctype = 200, "<!DOCTYPE html><html><body>Log in to Kubeflow</body></html>", "text/html"
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            for conn in self._connections:  # the server is gone for clients holding a connection, too
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def calls(self, method: str, path: str) -> list[dict]:
        """The recorded requests with this method and path (under /apis/v2beta1)."""
        return [r for r in self.requests if r["method"] == method and r["path"] == API + path]

    # -------------------------------------------------------------------------------------------- dispatch

    def _handle(self, method: str, raw_path: str, headers: dict, body: bytes) -> tuple[int, Any]:
        """HEADERS with title-case names ("Authorization", "Content-Type")."""
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        record = {"method": method, "path": split.path, "query": query, "headers": headers, "body": body,
                  "json": None, "files": {}}
        ctype = headers.get("Content-Type", "")
        if body and ctype.startswith("application/json"):
            record["json"] = json.loads(body)
        elif body and ctype.startswith("multipart/form-data"):
            record["files"] = _multipart(ctype, body)
        with self.lock:
            self.requests.append(record)
            try:
                if self.forbidden:
                    raise ApiError(403, "User 'system:anonymous' is not allowed to access this resource")
                if self.token and headers.get("Authorization") != f"Bearer {self.token}":
                    raise ApiError(401, "Unauthenticated: request has no valid bearer token")
                return 200, self._route(method, split.path, query, record)
            except ApiError as exc:
                return exc.status, {"error": exc.message, "code": GRPC_CODES.get(exc.status, 2),
                                    "message": exc.message, "details": []}

    def _route(self, method: str, path: str, query: dict, record: dict) -> Any:
        parts = path[len(API):].strip("/").split("/") if path.startswith(API) else []
        body = record["json"] or {}
        match (method, parts):
            case ("GET", ["healthz"]):
                return {"multi_user": self.multi_user, "pipeline_store": "database"}
            case ("GET", ["pipelines"]):
                return self._list("pipelines", self.pipelines.values(), query)
            case ("POST", ["pipelines"]):
                return self._new_pipeline(body.get("display_name"), body.get("description"), body.get("namespace"))
            case ("POST", ["pipelines", "upload"]):
                spec = self._spec(record)
                pipeline = self._new_pipeline(query.get("name"), query.get("description"), query.get("namespace"))
                self._new_version(pipeline["pipeline_id"], pipeline["display_name"], query.get("description"), spec)
                return pipeline
            case ("POST", ["pipelines", "upload_version"]):
                spec = self._spec(record)
                pid = query.get("pipelineid")
                if pid not in self.pipelines:
                    raise ApiError(404, f"Failed to upload a pipeline version: pipeline {pid} not found")
                return self._new_version(pid, query.get("name"), query.get("description"), spec)
            case ("DELETE", ["pipelines", pid]):
                self._get(self.pipelines, pid, "pipeline")
                del self.pipelines[pid]
                return {}
            case ("GET", ["pipelines", pid, "versions"]):
                self._get(self.pipelines, pid, "pipeline")
                versions = [v for v in self.versions.values() if v["pipeline_id"] == pid]
                return self._list("pipeline_versions", versions, query)
            case ("GET", ["pipelines", pid, "versions", vid]):
                return self._get(self.versions, vid, "pipeline version")
            case ("GET", ["experiments"]):
                return self._list("experiments", self.experiments.values(), query)
            case ("POST", ["experiments"]):
                if self._named(self.experiments.values(), body.get("display_name"), body.get("namespace")):
                    raise ApiError(409, f"Failed to create a new experiment: experiment {body.get('display_name')} "
                                        f"already exists")
                eid = str(uuid.uuid4())
                self.experiments[eid] = {**body, "experiment_id": eid, "created_at": _now(),
                                         "storage_state": "AVAILABLE"}
                return self.experiments[eid]
            case ("POST", ["runs"]):
                self._check_source(body)
                rid = str(uuid.uuid4())
                self.runs[rid] = {**body, "run_id": rid, "created_at": _now(), "state": self.run_states[0]}
                return self.runs[rid]
            case ("GET", ["runs", rid]):
                run = self._get(self.runs, rid, "run")
                n = self.run_gets[rid] = self.run_gets.get(rid, 0) + 1
                run["state"] = self.run_states[min(n - 1, len(self.run_states) - 1)]
                out = copy.deepcopy(run)
                out["run_details"] = {"task_details": self._tasks(run["state"])}
                if run["state"] == "FAILED":
                    out["error"] = {"code": 2, "message": self.run_error}
                return out
            case ("POST", ["recurringruns"]):
                self._check_source(body)
                if not (body.get("trigger") or {}).get("cron_schedule", {}).get("cron") and \
                        not (body.get("trigger") or {}).get("periodic_schedule"):
                    raise ApiError(400, "Invalid input error: a trigger is required")
                rid = str(uuid.uuid4())
                self.recurring_runs[rid] = {**body, "recurring_run_id": rid, "created_at": _now(),
                                            "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"}
                return self.recurring_runs[rid]
            case ("GET", ["recurringruns"]):
                runs = [r for r in self.recurring_runs.values()
                        if not query.get("experiment_id") or r.get("experiment_id") == query["experiment_id"]]
                return self._list("recurringRuns", runs, query)  # this one field's JSON name is camelCase
            case ("DELETE", ["recurringruns", rid]):
                self._get(self.recurring_runs, rid, "recurring run")
                del self.recurring_runs[rid]
                return {}
        raise ApiError(404, f"Not Found: {method} {path}")

    # -------------------------------------------------------------------------------------------- helpers

    @staticmethod
    def _get(table: dict, key: str, what: str) -> dict:
        if key not in table:
            raise ApiError(404, f"NotFoundError: {what} {key} not found")
        return table[key]

    @staticmethod
    def _named(items: Any, name: Optional[str], namespace: Optional[str] = None) -> list:
        return [i for i in items if i.get("display_name") == name and (i.get("namespace") or "") == (namespace or "")]

    def _list(self, key: str, items: Any, query: dict) -> dict:
        items = list(items)
        if query.get("filter"):
            for p in json.loads(query["filter"]).get("predicates", []):
                assert p.get("operation") in (1, "EQUALS"), p
                value = p.get("stringValue", p.get("string_value"))
                items = [i for i in items if i.get(p["key"]) == value]
        if query.get("namespace"):
            items = [i for i in items if "namespace" not in i or i.get("namespace") in (None, "", query["namespace"])]
        if query.get("sort_by", "").endswith("desc"):
            items.reverse()  # insertion order is creation order
        size = int(query.get("page_size") or 0) or len(items)
        return {key: copy.deepcopy(items[:size]), "total_size": len(items)}

    def _new_pipeline(self, name: Optional[str], description: Optional[str], namespace: Optional[str]) -> dict:
        if not name:
            raise ApiError(400, "Invalid input error: pipeline name is empty")
        if self._named(self.pipelines.values(), name, namespace):
            raise ApiError(409, f"Failed to create a pipeline: AlreadyExistsError: pipeline with name {name} "
                                f"already exists")
        pid = str(uuid.uuid4())
        self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "description": description,
                               "namespace": namespace or "", "created_at": _now()}
        return self.pipelines[pid]

    def _new_version(self, pid: str, name: Optional[str], description: Optional[str], spec: dict) -> dict:
        if any(v["pipeline_id"] == pid and v["display_name"] == name for v in self.versions.values()):
            raise ApiError(409, f"Failed to create a pipeline version: AlreadyExistsError: version {name} already "
                                f"exists")
        vid = str(uuid.uuid4())
        self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name,
                              "description": description, "created_at": _now(), "pipeline_spec": spec}
        return self.versions[vid]

    @staticmethod
    def _spec(record: dict) -> dict:
        import yaml
        upload = record["files"].get("uploadfile")
        if not upload:
            raise ApiError(400, "Invalid input error: failed to read the uploaded file (uploadfile missing)")
        docs = list(yaml.safe_load_all(upload["content"]))
        if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0]:
            raise ApiError(400, "Invalid input error: the file is not a pipeline spec")
        return docs[0]

    def _check_source(self, body: dict) -> None:
        if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
            raise ApiError(404, f"NotFoundError: experiment {body['experiment_id']} not found")
        ref = body.get("pipeline_version_reference")
        if ref and not ref.get("pipeline_version_id"):
            if ref.get("pipeline_id") not in self.pipelines:
                raise ApiError(404, "NotFoundError: pipeline not found")
            if not self.follows_latest:  # an older server: it pins the latest version now
                ref["pipeline_version_id"] = max((v for v in self.versions.values()
                                                  if v["pipeline_id"] == ref["pipeline_id"]),
                                                 key=lambda v: v["created_at"])["pipeline_version_id"]
        elif ref:
            version = self.versions.get(ref.get("pipeline_version_id"))
            if not version or version["pipeline_id"] != ref.get("pipeline_id"):
                raise ApiError(404, "NotFoundError: pipeline version not found")
        elif not body.get("pipeline_spec"):
            raise ApiError(400, "Invalid input error: a pipeline spec or a pipeline version is required")

    @staticmethod
    def _tasks(state: str) -> list[dict]:
        if state == "PENDING":
            return []
        if state == "RUNNING":
            return [{"display_name": "data", "state": "SUCCEEDED"}, {"display_name": "train", "state": "RUNNING"}]
        last = {"SUCCEEDED": "SUCCEEDED", "FAILED": "FAILED"}.get(state, state)
        return [{"display_name": "data", "state": "SUCCEEDED"}, {"display_name": "train", "state": last}]


def _multipart(ctype: str, body: bytes) -> dict[str, dict]:
    """{field: {"filename", "content"}} of a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    out = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = {"filename": part.get_filename(), "content": part.get_payload(decode=True),
                     "content_type": part.get_content_type()}
    return out
