"""Archive step: pipeline.pth + our handler -> model-store/pipeline.mar, and config/config.properties.

    OUT/model-store/pipeline.mar
    OUT/config/config.properties

the layout KServe's pytorch predictor mounts at /mnt/models. The .mar carries the whole serving package
(as `platepipe_serving`, a name nothing installed claims) and a one-line top-level handler module that
TorchServe loads, so the handler runs the code it was archived with.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from platepipe.pipeline.config import ServingConfig, settings
from platepipe.serving.handler import LIMITS_FILE  # what one request may ask of the worker (handler.Limits)

ARCHIVED_PACKAGE = "platepipe_serving"
HANDLER_MODULE = f"from {ARCHIVED_PACKAGE}.handler import handle  # noqa: F401  TorchServe calls handle(data, context)\n"
MODEL_STORE = "/mnt/models/model-store"  # where KServe's storage initializer puts the .mar


def config_properties(spec: ServingConfig, model_store: str = MODEL_STORE) -> str:
    """TorchServe's config.properties for the `serving` settings, serving the .mar from model_store."""
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {spec.model_name: {"1.0": {
        "defaultVersion": True, "marName": f"{spec.model_name}.mar", "minWorkers": spec.workers_per_model,
        "maxWorkers": spec.workers_per_model, "batchSize": spec.batch_size, "maxBatchDelay": spec.max_batch_delay_ms,
        "responseTimeout": spec.response_timeout_s}}}}
    template = (files("platepipe.configs") / "config.properties").read_text()
    return template.format(
        bind_address=spec.bind_address, inference_port=spec.inference_port, management_port=spec.management_port,
        metrics_port=spec.metrics_port, grpc_inference_port=spec.inference_port + 1000 - 15,
        grpc_management_port=spec.inference_port + 1000 - 14, workers=spec.workers_per_model,
        response_timeout=spec.response_timeout_s, max_request_size=spec.max_request_size_mb * 1024 * 1024,
        number_of_gpu_line="" if spec.gpus is None else f"number_of_gpu={spec.gpus}\n",
        disable_token_authorization=str(not spec.token_auth).lower(), model_store=model_store,
        model_snapshot=json.dumps(snapshot, separators=(",", ":")))


def properties_keys(text: str) -> list[str]:
    return [line.split("=", 1)[0].strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and "=" in line]


def archive(model: str | Path, out_dir: str | Path, spec: ServingConfig | None = None, version: str = "1.0") -> Path:
    """Write OUT/model-store/<name>.mar and OUT/config/config.properties for the `serving` settings (default:
    configs/default.yaml's); return OUT. The layout is KServe's: TorchServe binds 0.0.0.0 without token
    authorisation, behind KServe's ingress (`platepipe serve` rewrites both for loopback)."""
    from platepipe.serving.reader import check_pipeline

    model, out_dir = Path(model), Path(out_dir)
    spec = dataclasses.replace(spec or settings("serving"), bind_address="0.0.0.0", token_auth=False)
    check_pipeline(model)  # refuse anything serving could not load (digest, both stages built)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: choose a new --out folder or delete it")
    archiver = shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent)) or shutil.which("torch-model-archiver")
    if not archiver:
        raise FileNotFoundError("torch-model-archiver not found: run `make setup` (it installs torch-model-archiver 0.12)")
    serving_dir = Path(files("platepipe.serving"))
    with tempfile.TemporaryDirectory(prefix="platepipe-archive-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(serving_dir, tmp / "extra" / ARCHIVED_PACKAGE,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tmp / "handler.py").write_text(HANDLER_MODULE)
        (tmp / "extra" / LIMITS_FILE).write_text(json.dumps({
            "images": spec.max_images_per_request, "pixels": spec.max_request_pixels,
            "decoded_mb": spec.max_request_decoded_mb}))
        shutil.copy2(model, tmp / "pipeline.pth")
        stage = tmp / "out"
        (stage / "model-store").mkdir(parents=True)
        (stage / "config").mkdir()
        cmd = [archiver, "--model-name", spec.model_name, "--version", version, "--handler", str(tmp / "handler.py"),
               "--serialized-file", str(tmp / "pipeline.pth"), "--extra-files", str(tmp / "extra"),
               "--export-path", str(stage / "model-store")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        (stage / "config" / "config.properties").write_text(config_properties(spec))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()
        shutil.move(str(stage), str(out_dir))
    return out_dir
