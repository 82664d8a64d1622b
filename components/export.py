"""Export step: pipeline.pth, the one file serving needs.

It holds, for each stage, the weights and the full MMDetection model config, plus the class order, the
plate format, metrics, the data fingerprint and library versions. Only tensors, dicts, lists, strings and
numbers: it loads with torch.load(weights_only=True), since a model file can come from anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from platepipe.serving.labels import CLASSES, LETTERS, MAIN_PATTERN, SUB_PATTERN
from platepipe.serving.reader import FORMAT, STAGES, check_pipeline, load_pipeline, weights_digest

SOURCE_COMMIT_ENV = "PLATEPIPE_SOURCE_COMMIT"  # set in the images by `make images`


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "mmcv", "mmdet", "mmengine", "platepipe"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def data_fingerprint(data_dir: Path | None) -> str | None:
    if data_dir is None:
        return None
    manifest = Path(data_dir) / "dataset.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("fingerprint")
    h = hashlib.sha256()
    for name in ("train.json", "val.json", "test.json"):
        if (Path(data_dir) / name).is_file():
            h.update((Path(data_dir) / name).read_bytes())
    return h.hexdigest()[:16]


def _plain(obj):
    """Config values as plain JSON-like data (tuples become lists)."""
    return json.loads(json.dumps(obj))


def export(path: str | Path, stages: dict, thresholds: dict[str, float], metrics: dict | None = None,
           data_dir: Path | None = None, train_spec: dict | None = None) -> Path:
    """Write pipeline.pth from {stage: (model config dict, mmengine checkpoint path)} and the scores the model
    reads at (model.thresholds); return the path."""
    import torch

    payload = {"format": FORMAT, "classes": list(CLASSES),
               "plate_format": {"sub_text": list(SUB_PATTERN), "main_text": list(MAIN_PATTERN), "letters": list(LETTERS),
                                "example": "38D4831"},
               "metrics": _plain(metrics or {}), "data_fingerprint": data_fingerprint(data_dir),
               "thresholds": {k: float(v) for k, v in thresholds.items()},
               "train": _plain(train_spec or {}), "versions": _versions(),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for stage in STAGES:
        cfg, ckpt = stages[stage]
        weights = checkpoint_weights(ckpt)
        payload[stage] = {"config": _plain(cfg), "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
                          "checkpoint": Path(ckpt).name}
    payload["digest"] = weights_digest(payload)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    try:
        check_pipeline(tmp)  # never leave a file that serving cannot read
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def source_commit() -> str | None:
    """The git commit of the code that exports: PLATEPIPE_SOURCE_COMMIT (the images are built with it), else the
    checkout platepipe runs from, else None."""
    import subprocess

    if os.environ.get(SOURCE_COMMIT_ENV, "unknown") != "unknown":
        return os.environ[SOURCE_COMMIT_ENV]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def stamp(source: str | Path, dest: str | Path, evaluation: dict, run: str | None = None) -> Path:
    """The export step after the gate: the same model, with the evaluation that let it through, the source commit
    and the pipeline run written into it."""
    import torch

    payload = load_pipeline(source)
    payload["evaluation"] = _plain(evaluation)
    payload["source"] = {"commit": source_commit(), "run": run or None}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    torch.save(payload, tmp)
    load_pipeline(tmp)
    os.replace(tmp, dest)
    return dest


@contextlib.contextmanager
def trusted_checkpoints():
    """mmengine's checkpoints hold optimiser state and logs that torch's weights_only loader refuses. Training
    reads (resumes from, exports) only checkpoints it wrote itself, so allow full loading while it does,
    then restore."""
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


def checkpoint_weights(ckpt: str | Path) -> dict:
    """The model weights in one of our own mmengine training checkpoints."""
    import torch

    with trusted_checkpoints():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return state.get("state_dict", state)


def fetch(source: str, out_dir: str | Path) -> Path:
    """Fetch step: take an existing pipeline.pth (local path or gs://) into out_dir, checked (digest, both
    stages built) before anything is written there: a refused file leaves nothing behind."""
    import tempfile

    out = Path(out_dir) / "pipeline.pth"
    with tempfile.TemporaryDirectory(prefix="platepipe-fetch-") as tmp:
        if source.startswith("gs://"):
            from platepipe.components.gcs import download
            checked = download(source, Path(tmp) / "pipeline.pth")
        elif not Path(source).is_file():
            raise FileNotFoundError(f"model file not found: {source}")
        else:
            checked = Path(source)
        check_pipeline(checked)
        if checked.resolve() != out.resolve():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checked, out.with_name(out.name + ".partial"))
            os.replace(out.with_name(out.name + ".partial"), out)
    return out
