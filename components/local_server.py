"""A local TorchServe over an archive layout (DIR/model-store/*.mar, DIR/config/config.properties),
started the way KServe starts it, on 127.0.0.1. Used by `platepipe serve`, the local run and the tests.

TorchServe keeps runtime files (.model_server.pid, sockets) in the temp dir and key_file.json in its
working dir: each server gets its own state folder (DIR/.serve) for both, so servers never collide.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from platepipe.serving.container import torchserve_command, torchserve_env, with_settings, worker_states

_log = logging.getLogger(__name__)

STATE = "state.json"


class ServeError(RuntimeError):
    """TorchServe could not be started or reached; the message says why and what to do."""


@dataclass
class Server:
    layout: Path
    model_name: str
    inference_url: str
    management_url: str
    metrics_url: str
    state_dir: Path
    pid: int | None = None
    keys: dict = field(default_factory=dict)  # token auth keys ({} when token auth is off)

    @property
    def token_auth(self) -> bool:
        return bool(self.keys)

    def headers(self, api: str = "inference") -> dict:
        return {"Authorization": f"Bearer {self.keys[api]}"} if self.keys else {}

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_properties(text: str, layout: Path, ports: dict, token_auth: bool) -> str:
    """The archive's config.properties, bound to 127.0.0.1 on the given ports, with this machine's paths."""
    return with_settings(text, {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(layout / "model-store"),
        "disable_token_authorization": "false" if token_auth else "true",
    })


def _model_name(layout: Path, props: str) -> str:
    match = re.search(r'^model_snapshot=(.*)$', props, re.M)
    if match:
        return next(iter(json.loads(match.group(1))["models"]))
    mars = sorted((layout / "model-store").glob("*.mar"))
    if not mars:
        raise ServeError(f"no .mar in {layout / 'model-store'}: make one with `platepipe archive`")
    return mars[0].stem


def model_status(server: Server) -> list[str]:
    """Worker states of the model (READY, UNLOADING, ...), from the management API ([] while it answers no)."""
    try:
        return worker_states(server.management_url, server.model_name, server.headers("management"), timeout=5)
    except urllib.error.HTTPError:
        return []


def start(layout: str | Path, *, inference_port: int = 8085, management_port: int = 8081, metrics_port: int = 8082,
          token_auth: bool = True, timeout: float = 300, echo=_log.info, env: dict | None = None) -> Server:
    """Start TorchServe on the layout and wait until the model's workers are READY (not just /ping)."""
    layout = Path(layout).resolve()
    props_file = layout / "config" / "config.properties"
    if not props_file.is_file():
        raise ServeError(f"{props_file} not found: point `platepipe serve` at a folder made by `platepipe archive`")
    if not shutil.which("java"):
        raise ServeError("java not found: TorchServe needs Java 11+ (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)")
    torchserve = torchserve_command()
    if not torchserve:
        raise ServeError("torchserve not found: run `make setup`")
    ports = {"inference": inference_port, "management": management_port, "metrics": metrics_port,
             "grpc_inference": free_port(), "grpc_management": free_port()}
    busy = [f"{name} port {port}" for name, port in ports.items() if not name.startswith("grpc") and not _port_free(port)]
    if busy:
        raise ServeError(f"{', '.join(busy)} already in use (another TorchServe?): stop it with `platepipe serve "
                         "--stop`, or choose free ports with --set serving.inference_port=... etc.")
    state_dir = layout / ".serve"
    if (state_dir / STATE).exists():
        stop(layout)
    shutil.rmtree(state_dir, ignore_errors=True)
    (state_dir / "tmp").mkdir(parents=True)
    state_dir.chmod(0o700)  # the keys live here
    props = props_file.read_text()
    (state_dir / "config.properties").write_text(_local_properties(props, layout, ports, token_auth))
    server = Server(layout=layout, model_name=_model_name(layout, props),
                    inference_url=f"http://127.0.0.1:{ports['inference']}",
                    management_url=f"http://127.0.0.1:{ports['management']}",
                    metrics_url=f"http://127.0.0.1:{ports['metrics']}", state_dir=state_dir)
    env = {**torchserve_env(state_dir), **(env or {})}
    log = open(state_dir / "torchserve.out", "wb")
    subprocess.run([torchserve, "--start", "--ncs", "--model-store", str(layout / "model-store"),
                    "--ts-config", str(state_dir / "config.properties")],
                   cwd=state_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False)
    server.pid = _read_pid(state_dir)
    write_private(state_dir / STATE, json.dumps(server.to_json()))
    try:
        _wait_ready(server, timeout, echo)
    except BaseException:
        stop(layout)
        raise
    return server


def write_private(path: Path, text: str) -> None:
    """Write a file that holds a secret: readable by its owner only (0600) from its first byte, replaced whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_pid(state_dir: Path) -> int | None:
    pid_file = state_dir / "tmp" / ".model_server.pid"
    for _ in range(50):
        if pid_file.exists() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_ready(server: Server, timeout: float, echo) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not _alive(server.pid):
            raise ServeError(f"TorchServe exited while starting; see {server.state_dir / 'logs'}")
        key_file = server.state_dir / "key_file.json"
        if key_file.exists() and not server.keys:
            try:
                data = json.loads(key_file.read_text())
            except json.JSONDecodeError:
                data = {}  # TorchServe is still writing it: read it again on the next round
            server.keys = {api: data[api]["key"] for api in ("inference", "management") if api in data}
            if server.keys:
                write_private(server.state_dir / STATE, json.dumps(server.to_json()))
        try:
            states = model_status(server)
        except (urllib.error.URLError, OSError, json.JSONDecodeError):
            states = []
        if states and all(s == "READY" for s in states):
            return
        deaths, why = load_failures(server.state_dir / "logs")
        if deaths >= WORKER_DEATHS:
            raise ServeError(f"model {server.model_name} cannot load: its worker died {deaths} times while starting"
                             f"{f' ({why})' if why else ''}; see {server.state_dir / 'logs' / 'model_log.log'}")
        if states != last:
            echo(f"  waiting for {server.model_name}: workers {states or 'not registered yet'}")
            last = states
        time.sleep(0.5)
    raise ServeError(f"model {server.model_name} not READY after {timeout:.0f} s (workers {last}); "
                     f"see {server.state_dir / 'logs' / 'model_log.log'}")


WORKER_DEATHS = 3  # TorchServe restarts a dying worker for ever: after this many, starting has failed


def load_failures(logs: Path) -> tuple[int, str]:
    """How often the model's worker died (ts_log.log), and the last error its Python side logged."""
    try:
        deaths = (logs / "ts_log.log").read_text(errors="replace").count("Backend worker process died")
        lines = (logs / "model_log.log").read_text(errors="replace").splitlines()
    except OSError:
        return 0, ""
    errors = [m.group(1) for m in map(_ERROR.search, lines) if m]
    return deaths, errors[-1].strip()[:300] if errors else ""


_ERROR = re.compile(r"MODEL_LOG - ((?:\w+\.)*\w*(?:Error|Exception): .*)$")


def running(layout: str | Path) -> Server | None:
    state = Path(layout).resolve() / ".serve" / STATE
    if not state.exists():
        return None
    data = json.loads(state.read_text())
    data["layout"], data["state_dir"] = Path(data["layout"]), Path(data["state_dir"])
    return Server(**data)


def serving(layout: str | Path) -> Server | None:
    """The TorchServe started on this layout when its process is still alive, else None."""
    server = running(layout)
    return server if server is not None and _alive(server.pid) else None


def stop(layout: str | Path, timeout: float = 60) -> bool:
    """Stop the TorchServe started on this layout, its Java frontend and Python workers; True if one ran."""
    server = running(layout)
    if server is None:
        return False
    torchserve = torchserve_command()
    if torchserve and _alive(server.pid):
        subprocess.run([torchserve, "--stop"], cwd=server.state_dir, env=torchserve_env(server.state_dir),
                       capture_output=True, timeout=timeout, check=False)
    deadline = time.monotonic() + timeout
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(server.pid):
        os.kill(server.pid, signal.SIGKILL)
    for pid in _workers_of(server.state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (server.state_dir / STATE).unlink(missing_ok=True)
    return True


def _workers_of(state_dir: Path) -> list[int]:
    """Python workers still holding this server's sockets (they live in its temp dir)."""
    pids = []
    marker = str(state_dir / "tmp")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "model_service_worker" in cmd and marker in cmd:
            pids.append(int(proc.name))
    return pids
