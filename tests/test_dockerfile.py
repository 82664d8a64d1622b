"""The serving image cannot be built here (no Docker engine); check what can be checked without one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_final_stage_is_cuda_runtime_non_root_without_build_tools():
    final = stages()[-1]
    assert re.match(r"FROM nvidia/cuda:\$\{CUDA_VERSION\}-cudnn-runtime-", final[0])
    assert "USER 1000" in final
    text = " ".join(final)
    for tool in ("g++", "gcc", "python3-dev", "build-essential", "-devel-"):
        assert tool not in text, f"{tool} in the final stage"
    assert "openjdk-17-jre-headless" in text  # TorchServe's frontend is Java


def test_build_stage_compiles_mmcv_with_cuda_ops_through_the_setup_script():
    build = next(s for s in stages() if s[0].endswith(" AS build"))
    assert "-cudnn-devel-" in build[0]
    text = " ".join(build)
    assert "scripts/setup.sh" in text and "PLATEPIPE_EDITABLE=0" in text and "TORCH_CUDA_ARCH_LIST" in text
    assert "mmcv.ops" in text and "python -c \"import " in text


def test_every_copied_source_exists():
    for stage in stages():
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                *sources, _dest = line.split()[1:]
                for src in sources:
                    assert list(ROOT.glob(src)), f"COPY {src}: not in the repository"


def instruction(stage: list[str], name: str) -> list[str]:
    return [line[len(name) + 1:] for line in stage if line.upper().startswith(name + " ")]


def test_serving_stage_runs_our_entrypoint_with_the_runtime_args_and_ports():
    """The image's start is serving/entrypoint.sh (what tests/test_container.py runs), with the runtime's args
    as CMD; nothing comes from another image (TorchServe's KServe wrapper needed kserve 0.13 and failed at
    import on kserve 0.21)."""
    import json

    from platepipe.components.runtime import ARGS, ENTRYPOINT
    from platepipe.serving.container import HTTP_PORT, METRICS_PORT

    final = stages()[-1]
    assert final[0].endswith(" AS serving")
    assert json.loads(instruction(final, "ENTRYPOINT")[0]) == [ENTRYPOINT]
    assert f"serving/entrypoint.sh {ENTRYPOINT}" in instruction(final, "COPY")
    assert json.loads(instruction(final, "CMD")[0]) == ARGS
    assert set(instruction(final, "EXPOSE")[0].split()) == {str(HTTP_PORT), str(METRICS_PORT)}
    froms = [line for stage in stages() for line in stage if "--from=" in line]
    assert froms and all("--from=build " in line for line in froms), froms
    assert "kserve_wrapper" not in DOCKERFILE.read_text() and "torchserve-kfs" not in DOCKERFILE.read_text()


def test_steps_stage_is_the_same_venv_without_java():
    steps = next(s for s in stages() if s[0].endswith(" AS steps"))
    text = " ".join(steps)
    assert "COPY --from=build /opt/platepipe /opt/platepipe" in text and "USER 1000" in steps
    assert "openjdk" not in text and "-devel-" not in text


def test_build_stage_imports_every_module_the_entrypoint_loads():
    build = " ".join(next(s for s in stages() if s[0].endswith(" AS build")))
    for module in ("platepipe.serving.container", "platepipe.serving.handler", "platepipe.serving.reader", "ts.model_server",
                   "ts.model_service_worker", "mmcv.ops", "mmdet"):
        assert module in build, module


def _engine(tmp_path, name: str, fail_push: bool = False) -> Path:
    """A stand-in for docker/podman that records its arguments: no engine can run here, so this checks what
    `make images` would ask of one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n"
                    + ('[ "$1" = push ] && exit 1\n' if fail_push else "") + "exit 0\n")
    tool.chmod(0o755)
    return bin_dir


def _images(tmp_path, *args, path: str) -> "subprocess.CompletedProcess":
    import subprocess
    return subprocess.run(["make", "-s", "-C", str(ROOT), "images", *args], capture_output=True, text=True,
                          env={"PATH": path, "HOME": str(tmp_path)}, timeout=60)


def test_make_images_builds_and_pushes_both_images_tagged_with_the_version(tmp_path):
    import configparser
    import os
    import shutil

    version = configparser.ConfigParser()
    version.read(ROOT / "setup.cfg")
    version = version["metadata"]["version"]
    system = "/usr/bin:/bin"
    done = _images(tmp_path, "REGISTRY=europe-docker.pkg.dev/p/r/", path=f"{_engine(tmp_path, 'podman')}:{system}")
    assert done.returncode == 0, done.stderr
    steps, serving = f"europe-docker.pkg.dev/p/r/platepipe:{version}", f"europe-docker.pkg.dev/p/r/platepipe-serving:{version}"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"build -f Dockerfile --target steps --build-arg SOURCE_COMMIT={commit or 'unknown'} -t {steps} .",
        f"build -f Dockerfile --target serving -t {serving} .",
        f"push {steps}", f"push {serving}"]
    assert f"--set kfp.image={steps} --set deploy.image={serving}" in done.stdout
    assert {s[0].split()[-1] for s in stages()} >= {"steps", "serving"}  # the targets exist
    os.remove(tmp_path / "calls")
    done = _images(tmp_path, "REGISTRY=localhost:5000/ml", "NO_PUSH=1", path=f"{_engine(tmp_path, 'docker')}:{system}")
    assert done.returncode == 0 and "push" not in (tmp_path / "calls").read_text()
    # what goes wrong is said, with the fix
    done = _images(tmp_path, path=f"{_engine(tmp_path, 'docker')}:{system}")
    assert done.returncode != 0 and "make images REGISTRY=" in done.stderr
    done = _images(tmp_path, "REGISTRY=reg.example.com/ml/platepipe:1", path=f"{_engine(tmp_path, 'docker')}:{system}")
    assert done.returncode != 0 and "no tag" in done.stderr
    bare = tmp_path / "bare"  # only what the script needs, no engine (even where the machine has one)
    bare.mkdir()
    for tool in ("make", "bash", "sed", "head", "dirname"):
        (bare / tool).symlink_to(shutil.which(tool))
    done = _images(tmp_path, "REGISTRY=reg.example.com/ml", path=str(bare))
    assert done.returncode != 0 and "neither docker nor podman is installed" in done.stderr
    (tmp_path / "refused").mkdir()
    done = _images(tmp_path / "refused", "REGISTRY=reg.example.com/ml",
                   path=f"{_engine(tmp_path / 'refused', 'docker', fail_push=True)}:{system}")
    assert done.returncode != 0 and "docker login reg.example.com" in done.stderr
