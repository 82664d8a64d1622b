"""Both stages trained at once on a CPU (components.train._train_at_once): the detector in a child process, the
reader here; what they export, a failing detector, and a parent killed mid-way (no training left behind)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from platepipe.components.export import load_pipeline
from platepipe.pipeline.config import settings
from platepipe.components.train import cpu_cores, parallel, train
from platepipe.pipeline.local_run import descendants, running


def spec(**changes) -> tuple:
    """The tiny model's sections, trained at once (parallel on) unless changes say otherwise."""
    return settings("model", preset="tiny"), settings("train", **{**dict(max_iters=4, val_interval=2, workers=0,
                                                                           parallel="on"), **changes})


def test_both_stages_train_at_once_and_export_one_file(data_dir, tmp_path, capsys):
    before = torch.get_num_threads()
    pth = train(data_dir, tmp_path, *spec())
    out = capsys.readouterr().out
    assert "training both stages at once: the detector on" in out
    # the child's own lines reach this process's stdout (the step's log), stage by stage
    assert "detector: iter 4/4" in out and "reader: iter 4/4" in out
    # the negatives are mined part-way through the detector's training (MINE_AT), for the reader to take up
    assert out.index("mining the reader's negatives") < out.index("detector: iter 4/4") and "mined " in out
    payload = load_pipeline(pth)
    assert set(payload["metrics"]) == {"detector", "reader"} and "plate/eir" in payload["metrics"]["reader"]
    assert json.loads((tmp_path / "negatives.json").read_text()) is not None
    assert torch.get_num_threads() == before  # the reader's thread count is given back
    assert not descendants(os.getpid())  # the detector's process is gone


def test_one_after_the_other_when_asked(data_dir, tmp_path, capsys):
    pth = train(data_dir, tmp_path, *spec(parallel="off"))
    out = capsys.readouterr().out
    assert "at once" not in out and out.index("training detector") < out.index("training reader")
    assert load_pipeline(pth)["reader"]["state_dict"]


def test_a_failing_detector_stops_the_reader(data_dir, tmp_path, capsys):
    (tmp_path / "detector").write_text("not a folder")  # the detector's work folder cannot be made
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="training the detector failed"):
        train(data_dir, tmp_path, *spec(max_iters=100000))  # the reader alone would train for hours
    assert time.monotonic() - started < 120
    assert "FileExistsError" in capsys.readouterr().err  # the child's traceback is passed on
    assert not (tmp_path / "pipeline.pth").exists() and not descendants(os.getpid())


def test_the_detector_stops_when_its_parent_is_killed(data_dir, tmp_path):
    """kill -9 of the training process (no clean-up runs there) still leaves no detector training on."""
    script = textwrap.dedent(f"""
        from platepipe.components.train import train
        from platepipe.pipeline.config import settings
        train({str(data_dir)!r}, {str(tmp_path)!r}, settings("model", preset="tiny"), settings("train", max_iters=100000, val_interval=100000,
              workers=0, parallel="on"))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (children := descendants(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert children, "the detector's process never started"
        while not (tmp_path / "detector").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)  # it is training
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while any(running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in children if running(pid)]
        assert not left, f"the detector's process {left} outlived its parent"
    finally:
        for pid in [parent.pid] + descendants(parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("files, expected", [
    ({}, None),                                                               # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, None),                                     # v2, no limit
    ({"cpu.max": "150000 100000\n"}, 2),                                     # v2, a 1.5 CPU limit
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
])
def test_cpu_cores_follow_a_containers_cpu_limit(tmp_path, monkeypatch, files, expected):
    """A Kubernetes CPU limit on a node with many cores: the two stages share the limit, not the node's cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a 64-core node
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_cores(tmp_path) == (expected or 64)


def test_one_cpu_trains_one_stage_after_the_other(monkeypatch):
    from platepipe.components import train as train_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "cpu_cores", lambda: 1)
    assert not parallel(settings("train", parallel="auto"))
    assert parallel(settings("train", parallel="on"))
    monkeypatch.setattr(train_module, "cpu_cores", lambda: 2)
    assert parallel(settings("train", parallel="auto"))
