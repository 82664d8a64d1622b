"""The set-up check (`platepipe doctor`): is everything a run needs installed and working?"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _version(module: str, dist: str | None = None) -> str:
    """Import the module (so a broken install shows) and return its distribution's version."""
    from importlib.metadata import version
    importlib.import_module(module)
    return version(dist or module)


def check_torch() -> str:
    import torch
    device = f"cuda x{torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return f"{torch.__version__}, {device}"


def check_mmcv_ops() -> str:
    """mmcv must be the full build with compiled ops: mmcv-lite cannot run a detector."""
    import torch
    try:
        from mmcv.ops import RoIAlign, batched_nms, nms  # noqa: F401
    except (ImportError, OSError) as exc:
        raise RuntimeError(
            f"mmcv's compiled ops are missing ({exc}). mmcv-lite or a wheel built for another torch is "
            "installed: run `make setup` again (it builds mmcv with ops and caches the wheel); if it "
            "persists delete ~/.cache/platepipe/wheels and .venv and re-run") from exc
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, 0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f"mmcv.ops.nms gave {keep.tolist()}, expected [0, 2]: the mmcv build is broken")
    import mmcv
    return f"{mmcv.__version__} with ops (nms, batched_nms, RoIAlign)"


def check_mmdet() -> str:
    return _version("mmdet.models", "mmdet")


def check_opencv() -> str:
    """OpenCV 4, the headless build: mmengine also pulls opencv-python, and both write the cv2 folder."""
    import cv2
    import numpy as np
    if not cv2.__version__.startswith("4."):
        raise RuntimeError(f"OpenCV {cv2.__version__} is active; platepipe needs 4.x: run `make setup` again "
                           "(it pins opencv-python and opencv-python-headless below 5)")
    img = np.zeros((20, 60, 3), np.uint8)
    cv2.putText(img, "12", (2, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    if not img.any():
        raise RuntimeError("cv2.putText drew nothing: the OpenCV install is broken; run `make setup` again")
    return cv2.__version__


def check_java() -> str:
    java = shutil.which("java")
    if not java:
        raise RuntimeError("java not found: TorchServe needs Java 11+ (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    match = re.search(r'version "(\d+)', out)
    major = int(match.group(1)) if match else 0
    if major < 11:
        raise RuntimeError(f"Java {major} found at {java}; TorchServe needs Java 11 or newer")
    return f"Java {major} ({java})"


CHECKS: list[tuple[str, Callable[[], str], bool]] = [
    ("torch", check_torch, True),
    ("opencv", check_opencv, True),
    ("mmengine", lambda: _version("mmengine"), True),
    ("mmcv", check_mmcv_ops, True),
    ("mmdet", check_mmdet, True),
    ("kfp", lambda: _version("kfp"), True),
    ("kubernetes", lambda: _version("kubernetes"), True),
    ("google-cloud-storage", lambda: _version("google.cloud.storage", "google-cloud-storage"), True),
    ("torchserve", lambda: _version("ts", "torchserve"), True),
    ("java (for TorchServe)", check_java, False),
]


def run_checks() -> list[Check]:
    results = []
    for name, fn, required in CHECKS:
        try:
            results.append(Check(name, True, fn(), required))
        except Exception as exc:  # every failure becomes a line of the report
            results.append(Check(name, False, f"{type(exc).__name__}: {exc}", required))
    return results


def report(results: list[Check]) -> str:
    width = max(len(c.name) for c in results)
    lines = []
    for c in results:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"  {mark}  {c.name:<{width}}  {c.detail}")
    return "\n".join(lines)


def healthy(results: list[Check]) -> bool:
    return all(c.ok for c in results if c.required)
