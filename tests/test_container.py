"""The serving container's start, proven without Docker: the file the Dockerfile makes the image's
ENTRYPOINT, run with exactly the args and env of the ServingRuntime `platepipe deploy` creates, on a
/mnt/models that KServe's storage initializer (the kserve-storage package, in an environment of its own as in
its own container) downloaded from the version `platepipe upload` wrote to fake-gcs-server; as uid 1000 when
the test runs as root; probed with the runtime's readiness command; then original, v1 and v2 requests from
4 concurrent clients (the real client), batched, on the port the runtime declares.

What differs from the cluster, and why: /mnt/models is a temporary folder (the runtime's paths are rewritten
to it), and the test adds the variables a pod would not need, to stay on loopback with free ports:
PORT (Knative sets it to the declared containerPort; here a free port), PLATEPIPE_BIND_ADDRESS=127.0.0.1,
PLATEPIPE_METRICS/MANAGEMENT/GRPC_*_PORT and PLATEPIPE_STATE_DIR. TS_SERVICE_ENVELOPE is set as KServe's
TorchServe runtime sets it for v1 (kserve) and v2 (kservev2), to show it cannot switch on a stock envelope.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from platepipe.components.archive import archive
from platepipe.pipeline.config import settings
from platepipe.components.runtime import MODEL_DIR, runtime_manifest
from platepipe.pipeline.cli import main
from platepipe.pipeline.config import load_config
from platepipe.pipeline.fake_gcs import FakeGcs
from platepipe.components import local_server as server
from platepipe.components.client import Endpoint, request
from platepipe.serving.images import load_image
from platepipe.serving.reader import PlateReader
from test_dockerfile import ROOT, instruction, stages

STORAGE_PYTHON = Path(sys.executable).parents[1] / "storage-initializer" / "bin" / "python"
IMAGE = "registry.example.com/ml/platepipe-serving:0.1.0"
USER_ID = 1000

pytestmark = pytest.mark.timeout(600)


def image_file(path_in_image: str) -> Path:
    """The repository file that the Dockerfile's final stage copies to path_in_image."""
    final = stages()[-1]
    for line in instruction(final, "COPY"):
        *sources, dest = line.split()
        if dest == path_in_image:
            assert not any(s.startswith("--from=") for s in sources), (
                f"{path_in_image} comes from another image ({line}), not from this repository: it cannot be run "
                f"here, and it is not what this project tests")
            (source,) = sources
            return ROOT / source
    raise AssertionError(f"the Dockerfile's final stage copies nothing to {path_in_image}")


def entrypoint() -> Path:
    (entry,) = json.loads(instruction(stages()[-1], "ENTRYPOINT")[0])
    return image_file(entry)


def runtime() -> dict:
    return runtime_manifest(settings("deploy", namespace="ml", image=IMAGE))["spec"]["containers"][0]


def in_image(command: list[str]) -> list[str]:
    """A runtime command with the image's paths made this machine's (the entrypoint's file)."""
    return [str(image_file(part)) if part.startswith("/usr/local/bin/") else part for part in command]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def mnt(model, tmp_path_factory):
    """/mnt/models as the storage initializer lays it out from the uploaded version (a world-readable folder,
    so that uid 1000 can read it, as the pod's volume)."""
    _, pth = model
    root = tmp_path_factory.mktemp("container")
    # the archive step's settings; a batch waits up to 1 s to fill, so the 4 clients' requests meet in one batch
    spec = settings("serving", max_batch_delay_ms=1000)
    layout = archive(pth, root / "layout", spec)
    base = Path(tempfile.mkdtemp(prefix="platepipe-pod-"))
    base.chmod(0o755)
    try:
        with FakeGcs(root=root / "gcs") as gcs:
            env = {"STORAGE_EMULATOR_HOST": gcs.url}
            old = {k: os.environ.get(k) for k in (*env, "GOOGLE_APPLICATION_CREDENTIALS")}
            os.environ.update(env)
            os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
            try:
                from google.auth.credentials import AnonymousCredentials
                from google.cloud import storage
                storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("models")
                assert main(["upload", str(layout), "--to", "gs://models/pp", "--version", "v1"]) == 0
            finally:
                for k, v in old.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            assert STORAGE_PYTHON.is_file(), f"{STORAGE_PYTHON} missing: run `make setup`"
            dest = base / MODEL_DIR.lstrip("/")
            script = ("import sys\nfrom kserve_storage import Storage\n"
                      "print(Storage.download(sys.argv[1], sys.argv[2]))")
            done = subprocess.run([str(STORAGE_PYTHON), "-c", script, "gs://models/pp/v1", str(dest)],
                                  env={"PATH": os.environ["PATH"], "HOME": str(base), **env},
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr[-2000:]
        for path in [dest, *dest.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        assert (dest / "model-store" / "pipeline.mar").read_bytes() == (layout / "model-store" / "pipeline.mar").read_bytes()
        assert (dest / "config" / "config.properties").read_text() == (layout / "config" / "config.properties").read_text()
        yield base, dest, pth
    finally:
        shutil.rmtree(base, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _pod_user() -> tuple[bool, str]:
    """(whether children can run as uid 1000, who they run as): root drops to uid 1000 where that user can run
    this Python (a venv whose interpreter sits under a private home cannot be)."""
    if os.geteuid() != 0:
        return False, f"{pwd.getpwuid(os.geteuid()).pw_name} (not root)"
    try:
        probe = subprocess.run([sys.executable, "-c", "import platepipe.serving.container"], preexec_fn=_drop, cwd="/",
                               capture_output=True, text=True, timeout=60)
        why = probe.stderr.strip()[-200:]
    except PermissionError as exc:
        probe, why = None, str(exc)
    if probe is not None and probe.returncode == 0:
        return True, f"uid {USER_ID}"
    return False, f"root: uid {USER_ID} cannot run {sys.executable} ({why})"


def _drop() -> None:
    os.setgid(USER_ID)
    os.setgroups([])
    os.setuid(USER_ID)


def as_pod_user() -> tuple[dict, str]:
    """Popen arguments that run the child as uid 1000 where the test can, and who it runs as."""
    can, who = _pod_user()
    return ({"preexec_fn": _drop} if can else {}), who


@contextmanager
def container(base: Path, envelope: str):
    """The entrypoint, started as the runtime says; yields (process, env, state dir, port)."""
    spec = runtime()
    args = [a.replace(MODEL_DIR, str(base / MODEL_DIR.lstrip("/"))) for a in spec["args"]]
    state = base / f"state-{envelope}"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, USER_ID, USER_ID)
    port = server.free_port()
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(state), "LANG": "C.UTF-8",
           **{e["name"]: e["value"] for e in spec.get("env", [])},
           "TS_SERVICE_ENVELOPE": envelope, "PORT": str(port), "PLATEPIPE_BIND_ADDRESS": "127.0.0.1",
           "PLATEPIPE_METRICS_PORT": str(server.free_port()), "PLATEPIPE_MANAGEMENT_PORT": str(server.free_port()),
           "PLATEPIPE_GRPC_INFERENCE_PORT": str(server.free_port()),
           "PLATEPIPE_GRPC_MANAGEMENT_PORT": str(server.free_port()), "PLATEPIPE_STATE_DIR": str(state)}
    user, _ = as_pod_user()
    log = open(base / f"container-{envelope}.log", "wb")
    proc = subprocess.Popen([str(entrypoint()), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, **user)
    try:
        yield proc, env, state, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of it outlives the test
        except ProcessLookupError:
            pass
        log.close()


def wait_ready(proc, env: dict, base: Path, envelope: str, timeout: float = 300) -> int:
    """Run the runtime's readiness probe until it passes; the number of probes that failed first."""
    probe = runtime()["readinessProbe"]["exec"]["command"]
    user, _ = as_pod_user()
    failed, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (base / f"container-{envelope}.log").read_text()[-3000:]
        if subprocess.run(in_image(probe), env=env, capture_output=True, timeout=30, **user).returncode == 0:
            return failed
        failed += 1
        time.sleep(1)
    raise AssertionError(f"not ready after {timeout} s: " + (base / f"container-{envelope}.log").read_text()[-3000:])


@pytest.mark.parametrize("envelope", ["kserve", "kservev2"])
def test_the_container_starts_as_the_runtime_says_and_serves_every_protocol_batched(mnt, model, envelope):
    base, dest, pth = mnt
    root, _ = model
    images = [p.read_bytes() for p in sorted((root / "data" / "images").iterdir())[:3]]
    expected = PlateReader.from_file(pth, device="cpu").predict([load_image(i) for i in images])
    want = [[(p["type"], p["main_text"], p["sub_text"]) for p in r.plates] for r in expected]
    with container(base, envelope) as (proc, env, state, port):
        wait_ready(proc, env, base, envelope)
        # the port the runtime declares is where KServe sends traffic; Knative passes it as PORT
        assert runtime()["ports"][0]["containerPort"] == 8080 and env["PORT"] == str(port)
        start = threading.Barrier(4)

        def client(i: int):
            protocol = ("original", "v1", "v2", "v1")[i]
            batch = images[:1] if protocol == "original" else images
            start.wait()
            return protocol, batch, request(Endpoint(f"http://127.0.0.1:{port}", protocol=protocol), batch)

        for _ in range(2):
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(client, range(4)))
            for protocol, batch, plates in answers:
                assert len(plates) == len(batch), protocol
                got = [[(p["type"], p["main_text"], p["sub_text"]) for p in image] for image in plates]
                assert got == want[:len(batch)], protocol
        log = (state / "logs" / "model_log.log").read_text()
        sizes = [int(s.split()[0]) for s in log.split("batch of ")[1:]]
        assert max(sizes) > 1, "TorchServe never batched the clients' requests together"
        # management and gRPC answer inside the pod only; inference and metrics on the bind address
        props = (state / "config.properties").read_text()
        assert "management_address=http://127.0.0.1:" in props and "grpc_inference_address=127.0.0.1" in props
        assert "disable_token_authorization=true" in props and "enable_envvars_config=false" in props
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends
        assert proc.wait(timeout=60) == 0
    assert server._port_free(port)
    text = (base / f"container-{envelope}.log").read_text()
    assert "platepipe serving: stopped (SIGTERM)" in text and "Traceback" not in text


def test_runs_as_uid_1000_when_the_test_can():
    can, who = _pod_user()
    probe = subprocess.run(["id", "-u"], capture_output=True, text=True, **as_pod_user()[0])
    assert probe.stdout.strip() == (str(USER_ID) if can else str(os.geteuid())), who
    assert runtime()["securityContext"]["runAsUser"] == USER_ID and runtime()["securityContext"]["runAsNonRoot"]
    print(f"the container's processes run as {who}")


def test_a_missing_layout_stops_the_container_with_the_fix(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PLATEPIPE_STATE_DIR": str(tmp_path / "s")}
    args = [a.replace(MODEL_DIR, str(tmp_path / "empty")) for a in runtime()["args"]]
    done = subprocess.run([str(entrypoint()), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "config.properties not found" in done.stderr and "storageUri" in done.stderr
    done = subprocess.run([str(entrypoint()), "--model-store"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--model-store needs a value" in done.stderr


class _Management(BaseHTTPRequestHandler):
    states: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/models/pipeline":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps([{"modelName": "pipeline", "workers": [{"id": str(i), "status": s}
                                                                 for i, s in enumerate(self.states)]}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_readiness_probe_passes_only_when_every_worker_is_ready(tmp_path):
    """`ready` asks TorchServe's management API for the model's workers (TorchServe's /ping answers Healthy
    before they are loaded)."""
    probe = in_image(runtime()["readinessProbe"]["exec"]["command"])
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PLATEPIPE_STATE_DIR": str(tmp_path)}
    done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "has not started yet" in done.stderr
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Management)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        (tmp_path / "serving.json").write_text(json.dumps(
            {"model": "pipeline", "management_url": f"http://127.0.0.1:{httpd.server_address[1]}"}))
        for states, code in ((["UNLOADING"], 1), (["READY", "UNLOADING"], 1), ([], 1), (["READY", "READY"], 0)):
            _Management.states = states
            done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == code, (states, done.stderr)
    finally:
        httpd.shutdown()
        httpd.server_close()
