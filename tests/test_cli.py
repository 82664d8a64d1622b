"""The platepipe command as a user runs it: a real process from the installed console script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLATEPIPE = Path(sys.executable).with_name("platepipe")


def platepipe(*args, cwd=None, timeout=300):
    return subprocess.run([str(PLATEPIPE), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_help_lists_every_command():
    out = platepipe("--help")
    assert out.returncode == 0
    for command in ("data", "run", "config", "doctor"):
        assert command in out.stdout


@pytest.mark.parametrize("command", ["data", "run", "config", "doctor"])
def test_each_command_explains_itself(command):
    out = platepipe(command, "--help")
    assert out.returncode == 0 and "usage: platepipe " + command in out.stdout
    assert len(out.stdout.splitlines()) > 4


def test_no_command_prints_help_and_fails():
    out = platepipe()
    assert out.returncode == 2 and "COMMAND" in out.stdout


def test_doctor_checks_the_real_setup():
    out = platepipe("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mmcv" in out.stdout and "with ops" in out.stdout and "set-up ok" in out.stdout


def test_data_command_writes_a_set_and_preview(tmp_path):
    out = platepipe("data", "--out", str(tmp_path / "d"), "--n", "6", "--seed", "5", "--preview",
                    "--set", "data.min_size=320", "--set", "data.max_size=400")
    assert out.returncode == 0, out.stderr
    assert "wrote 6 images" in out.stdout
    summary = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert summary["seed"] == 5 and summary["n_images"] == 6 and summary["spec"]["max_size"] == 400
    assert (tmp_path / "d" / "preview.png").stat().st_size > 1000
    # --preview on an existing set only redraws the sheet
    (tmp_path / "d" / "preview.png").unlink()
    again = platepipe("data", "--out", str(tmp_path / "d"), "--preview")
    assert again.returncode == 0 and (tmp_path / "d" / "preview.png").exists()


def test_bad_input_is_a_clear_error(tmp_path):
    out = platepipe("data", "--out", str(tmp_path / "d"), "--n", "2", "--set", "data.n_imagez=3")
    assert out.returncode == 2 and "data.n_imagez" in out.stderr and "Traceback" not in out.stderr
    out = platepipe("data", "--out", str(tmp_path / "d"), "--n", "2", "--backgrounds", str(tmp_path / "none"))
    assert out.returncode == 2 and "backgrounds folder not found" in out.stderr
    assert not (tmp_path / "d").exists()


def test_config_prints_effective_yaml(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("data:\n  n_images: 77\n")
    out = platepipe("config", "--config", str(user), "--set", "data.seed=9")
    assert out.returncode == 0, out.stderr
    assert "n_images: 77" in out.stdout and "seed: 9" in out.stdout


def test_doctor_names_missing_mmcv_ops(tmp_path):
    """With mmcv-lite (no compiled ops) first on the path, the check fails and says what to do."""
    lite = tmp_path / "mmcv"
    (lite / "ops").mkdir(parents=True)
    (lite / "__init__.py").write_text("__version__ = '2.1.0'\n")
    (lite / "ops" / "__init__.py").write_text("from ._ext import nms  # the compiled part mmcv-lite lacks\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = subprocess.run([str(PLATEPIPE), "doctor"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "FAIL  mmcv" in out.stdout and "make setup" in out.stdout
