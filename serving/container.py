"""The serving container's entrypoint: TorchServe on the archive that KServe's storage initializer put in
/mnt/models, answering KServe v1, v2 and TorchServe's own API on one port, with no wrapper in between.

    serving/entrypoint.sh [torchserve --start] --model-store=DIR --ts-config=FILE    serve (the runtime's args)
    serving/entrypoint.sh ready                                                      readiness probe

Serve: reads the archive's config.properties (read-only, as mounted), writes the settings TorchServe runs with
to a state folder, and runs TorchServe in the foreground until SIGTERM, which stops it and its workers.

  inference (v1 /v1/models/M:predict, v2 /v2/models/M/infer, /predictions/M)  BIND:$PORT (8080, what KServe calls)
  metrics (Prometheus)                                                         BIND:$PLATEPIPE_METRICS_PORT (8082)
  management, gRPC                                                             127.0.0.1 only (the probe's)

Token authorisation is off (the endpoint sits behind KServe's ingress; management answers inside the pod
only), TorchServe's model API is off and TS_* environment variables are ignored (enable_envvars_config=false),
so the TS_SERVICE_ENVELOPE that KServe's TorchServe runtime sets cannot switch on a stock envelope: the
handler speaks v1 and v2 itself, batch-safe.

Ready: exit 0 when every worker of the model is READY (TorchServe's /ping answers before that), else 1.

Environment: PORT (Knative sets it; default 8080), PLATEPIPE_BIND_ADDRESS (0.0.0.0), PLATEPIPE_METRICS_PORT
(8082), PLATEPIPE_MANAGEMENT_PORT (8081), PLATEPIPE_GRPC_INFERENCE_PORT (7070), PLATEPIPE_GRPC_MANAGEMENT_PORT
(7071), PLATEPIPE_STATE_DIR (writable folder for settings, logs and temp files; /tmp/platepipe-serving).
This module imports no torch: the probe runs it every few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HTTP_PORT = 8080          # KServe sends a predictor's traffic to its container's port, 8080 unless declared
METRICS_PORT = 8082
MANAGEMENT_PORT = 8081
GRPC_PORTS = (7070, 7071)
STATE_DIR = "/tmp/platepipe-serving"
STATE = "serving.json"
STOP_GRACE_S = 20         # SIGTERM to TorchServe, then SIGKILL; inside Kubernetes' 30 s grace period

USAGE = ("usage: entrypoint.sh [torchserve --start] --model-store=DIR --ts-config=FILE\n"
         "       entrypoint.sh ready")


class ContainerError(RuntimeError):
    """Why the container cannot start, in a sentence with the fix (the entrypoint exits 2)."""


def parse_args(argv: list[str]) -> tuple[Path, Path]:
    """(model store, config file) from the runtime's args; KServe's TorchServe form `torchserve --start` too."""
    args = list(argv)
    while args and args[0] in ("torchserve", "--start", "--foreground"):
        args.pop(0)
    found: dict[str, str] = {}
    while args:
        arg = args.pop(0)
        name, sep, value = arg.partition("=")
        if name not in ("--model-store", "--ts-config"):
            raise ContainerError(f"unknown argument {arg!r}\n{USAGE}")
        if not sep:
            if not args:
                raise ContainerError(f"{name} needs a value\n{USAGE}")
            value = args.pop(0)
        found[name] = value
    missing = [name for name in ("--model-store", "--ts-config") if name not in found]
    if missing:
        raise ContainerError(f"missing {' and '.join(missing)}: the ServingRuntime's args name the folders the "
                             f"storage initializer writes\n{USAGE}")
    return Path(found["--model-store"]), Path(found["--ts-config"])


def _port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ContainerError(f"{name}={value!r}: expected a port number (1-65535)")
    return int(value)


def settings() -> dict:
    """Addresses and folders from the environment (see the module's docstring)."""
    return {"bind": os.environ.get("PLATEPIPE_BIND_ADDRESS", "").strip() or "0.0.0.0",
            "http_port": _port("PORT", HTTP_PORT), "metrics_port": _port("PLATEPIPE_METRICS_PORT", METRICS_PORT),
            "management_port": _port("PLATEPIPE_MANAGEMENT_PORT", MANAGEMENT_PORT),
            "grpc_inference_port": _port("PLATEPIPE_GRPC_INFERENCE_PORT", GRPC_PORTS[0]),
            "grpc_management_port": _port("PLATEPIPE_GRPC_MANAGEMENT_PORT", GRPC_PORTS[1]),
            "state_dir": Path(os.environ.get("PLATEPIPE_STATE_DIR", "").strip() or STATE_DIR)}


def with_settings(text: str, changes: dict[str, str]) -> str:
    """config.properties text with these keys set (replaced where present, appended where not)."""
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in changes:
            line = f"{key}={changes[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen]
    return "\n".join(lines) + "\n"


def model_name(props: str, model_store: Path) -> str:
    for line in props.splitlines():
        if line.startswith("model_snapshot="):
            try:
                return next(iter(json.loads(line.partition("=")[2])["models"]))
            except (ValueError, KeyError, StopIteration, TypeError):
                raise ContainerError("config.properties: model_snapshot is not TorchServe's JSON with one model: "
                                     "re-make the layout with `platepipe archive`") from None
    raise ContainerError("config.properties has no model_snapshot, so TorchServe would serve nothing: re-make the "
                         "layout with `platepipe archive`")


def prepare(model_store: Path, ts_config: Path, env: dict) -> dict:
    """Check the layout and write the settings TorchServe runs with; return what the probe needs."""
    where = ("the storage initializer lays out the InferenceService's storageUri here: point it at the folder "
             "`platepipe upload` wrote (model-store/ and config/)")
    if not ts_config.is_file():
        raise ContainerError(f"{ts_config} not found: {where}")
    if not model_store.is_dir():
        raise ContainerError(f"{model_store} not found: {where}")
    props = ts_config.read_text()
    name = model_name(props, model_store)
    if not (model_store / f"{name}.mar").is_file():
        raise ContainerError(f"{model_store / (name + '.mar')} not found (config.properties serves {name!r}; the "
                             f"store holds {sorted(p.name for p in model_store.iterdir()) or 'nothing'}): {where}")
    state = env["state_dir"]
    try:
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(exist_ok=True)
    except OSError as exc:
        raise ContainerError(f"cannot write the state folder {state} ({exc.strerror}): set PLATEPIPE_STATE_DIR to "
                             f"a writable folder") from None
    management = f"http://127.0.0.1:{env['management_port']}"
    (state / "config.properties").write_text(with_settings(props, {
        "inference_address": f"http://{env['bind']}:{env['http_port']}",
        "management_address": management,
        "metrics_address": f"http://{env['bind']}:{env['metrics_port']}",
        "grpc_inference_address": "127.0.0.1", "grpc_inference_port": str(env["grpc_inference_port"]),
        "grpc_management_address": "127.0.0.1", "grpc_management_port": str(env["grpc_management_port"]),
        "disable_token_authorization": "true", "enable_model_api": "false", "enable_envvars_config": "false",
        "decode_input_request": "false",
        "model_store": str(model_store)}))
    info = {"model": name, "management_url": management, "inference_url": f"http://{env['bind']}:{env['http_port']}"}
    (state / STATE).write_text(json.dumps(info))
    return info


def serve(argv: list[str]) -> int:
    model_store, ts_config = parse_args(argv)
    env = settings()
    info = prepare(model_store, ts_config, env)
    if not shutil.which("java"):
        raise ContainerError("java not found on PATH: TorchServe needs Java 11+ (the image installs openjdk-17)")
    torchserve = torchserve_command()
    if not torchserve:
        raise ContainerError("torchserve not found next to this Python or on PATH: the image's set-up did not run")
    state = env["state_dir"]
    run_env = torchserve_env(state)
    print(f"platepipe serving: model {info['model']} from {model_store}, KServe v1/v2 and /predictions on "
          f"{info['inference_url']}, metrics on port {env['metrics_port']}", flush=True)
    proc = subprocess.Popen([torchserve, "--start", "--foreground", "--ncs", "--model-store", str(model_store),
                             "--ts-config", str(state / "config.properties")],
                            cwd=state, env=run_env, start_new_session=True)
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        _signal_group(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = proc.wait()
    if stopping:
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(proc.pid, signal.SIGKILL)
        print(f"platepipe serving: stopped ({signal.Signals(stopping[0]).name})", flush=True)
        return 0
    _signal_group(proc.pid, signal.SIGKILL)  # the frontend died: take its workers with it
    print(f"platepipe serving: TorchServe exited with {code}; see {state / 'logs'}", file=sys.stderr, flush=True)
    return code or 1


def torchserve_command() -> str | None:
    """The torchserve launcher beside this Python (the venv's), else the one on PATH."""
    return shutil.which("torchserve", path=str(Path(sys.executable).parent)) or shutil.which("torchserve")


def torchserve_env(state: Path) -> dict:
    """The environment TorchServe runs in: temp files (its pid file, sockets) and logs inside state."""
    return {**os.environ, "TMPDIR": str(state / "tmp"), "TEMP": str(state / "tmp"), "TMP": str(state / "tmp"),
            "LOG_LOCATION": str(state / "logs"), "METRICS_LOCATION": str(state / "logs")}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def worker_states(management_url: str, model: str, headers: dict | None = None, timeout: float = 2.0) -> list[str]:
    """The status of each worker of the model (READY, UNLOADING, ...), from TorchServe's management API."""
    req = urllib.request.Request(f"{management_url}/models/{model}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        described = json.loads(resp.read())
    return [w.get("status", "?") for entry in described for w in entry.get("workers", [])]


def ready() -> int:
    """Readiness probe: 0 when every worker of the model is READY, 1 otherwise (with the reason on stderr)."""
    state = settings()["state_dir"] / STATE
    try:
        info = json.loads(state.read_text())
        states = worker_states(info["management_url"], info["model"])
    except FileNotFoundError:
        print("not ready: the server has not started yet", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    if states and all(s == "READY" for s in states):
        return 0
    print(f"not ready: workers {states or 'not started'}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ready"]:
        return ready()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\n" + USAGE)
        return 0 if argv else 2
    try:
        return serve(argv)
    except ContainerError as exc:
        print(f"platepipe serving: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
