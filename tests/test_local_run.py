"""`platepipe run --local`: the whole pipeline through kfp.local, as a user runs it (a real process), with
fake-gcs-server as the bucket and a real local TorchServe as the endpoint. The tiny preset reads no plate,
so the smoke test must fail, say why, and roll the deploy back; the gate must stop a model below min_eir."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platepipe.pipeline.local_run import cmdline, descendants, running
from platepipe.components import local_server as server

PLATEPIPE = Path(sys.executable).with_name("platepipe")
TINY = ["--set", "data.n_images=8", "--set", "data.min_size=320", "--set", "data.max_size=400",
        "--set", "model.preset=tiny", "--set", "train.workers=0", "--set", "smoke.n_images=3",
        "--set", "data.ood_images=3"]


def run(tmp_path, *extra, out="run", ports=None):
    """`platepipe run --local` as a user types it, with its own state folder (what the local deploy serves)."""
    ports = ports or [server.free_port() for _ in range(3)]
    args = [str(PLATEPIPE), "run", "--local", "--out", str(tmp_path / out), *TINY,
            "--set", f"serving.inference_port={ports[0]}", "--set", f"serving.management_port={ports[1]}",
            "--set", f"serving.metrics_port={ports[2]}", *extra]
    env = dict(os.environ, PLATEPIPE_CACHE=str(tmp_path / "state"))
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


def java_serving(folder: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "java" in line and str(folder) in line]


@pytest.mark.timeout(600)
def test_whole_pipeline_runs_and_a_failing_smoke_test_rolls_back(tmp_path):
    out = run(tmp_path, "--set", "evaluate.min_eir=0")
    log = out.stdout + out.stderr
    assert out.returncode == 1, log
    steps = ["settings", "data", "train or fetch", "evaluate", "against the serving model", "export", "archive",
             "upload", "deploy"]
    for i, name in enumerate(steps, 1):
        assert re.search(rf"^\[{i}\] {name} ok in \d+\.\d s$", out.stdout, re.M), log
    assert re.search(r"^\[10\] smoke test FAILED in", out.stdout, re.M), log
    assert "first deploy: no model serves yet" in out.stdout, log
    # the smoke test's table, and the rollback
    assert re.search(r"image\s+expected\s+got\s+problems", out.stdout), log
    assert "missing" in out.stdout and "rolled back: stopped the local TorchServe" in out.stdout
    # the table keeps its columns in the step list: every labelled plate under "expected"
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if re.search(r"image\s+expected\s+got\s+problems", line))
    body = lines[head + 2:lines.index(next(line for line in lines[head:] if "report:" in line))]
    plates = [re.search(r"[rl]_board \d\d[A-E]\d{4}", line) for line in body]
    assert len([p for p in plates if p]) >= 2 and len(body) > sum(1 for line in body if ".jpg" in line), log
    assert {p.start() for p in plates if p} == {lines[head].index("expected")}, log
    run_dir = tmp_path / "run"
    # the upload went to the bucket (fake-gcs-server keeps it under RUN/gcs) in KServe's layout
    marker = json.loads((run_dir / "steps" / "upload.json").read_text())
    version = marker["version"]
    bucket = run_dir / "gcs" / "platepipe-local"
    stored = {p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()}
    assert {f"platepipe/{version}/model-store/pipeline.mar", f"platepipe/{version}/config/config.properties"} <= stored
    # the deploy step served what it downloaded from the bucket
    assert (run_dir / "serving" / "model-store" / "pipeline.mar").is_file()
    assert json.loads((run_dir / "steps" / "deploy.json").read_text())["url"].startswith("http://127.0.0.1:")
    # reports a person opens
    smoke = json.loads((run_dir / "steps" / "smoke-test.json").read_text())
    assert smoke["passed"] is False and Path(smoke["artifact"]).is_file()
    assert "<table" in Path(smoke["artifact"]).read_text()
    assert Path(json.loads((run_dir / "steps" / "evaluate.json").read_text())["artifact"]).is_file()
    assert "summary" in out.stdout and "FAILED in" in out.stdout
    # nothing left running
    assert server.running(run_dir / "serving") is None
    assert java_serving(run_dir) == []
    assert "fake-gcs-server" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


SERVES = ["--set", "evaluate.min_eir=0", "--set", "smoke.n_images=0"]  # the plate-free scene: the tiny model passes


def serving_layout(tmp_path) -> str | None:
    return json.loads((tmp_path / "state" / "local-serving.json").read_text()).get("layout")


@pytest.mark.timeout(900)
def test_a_second_run_keeps_the_serving_model_unless_the_new_one_is_not_worse(tmp_path):
    """`--keep-serving` twice: the second run evaluates the model the first one serves on its own data. The same
    model, where a model must read better (a negative margin), is kept out: the run succeeds and serving stays;
    --force-promotion replaces it through deploy and smoke test."""
    ports = [server.free_port() for _ in range(3)]
    try:
        first = run(tmp_path, "--keep-serving", *SERVES, out="first", ports=ports)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "first deploy: no model serves yet" in first.stdout
        layout = serving_layout(tmp_path)
        assert layout == str(tmp_path / "first" / "serving") and server.serving(layout)

        (model,) = (tmp_path / "first" / "kfp").glob("*/train-step/model")
        again = [*SERVES, "--set", f"model.pretrained={model}", "--set", "evaluate.champion_margin=-0.01"]
        second = run(tmp_path, "--keep-serving", *again, out="second", ports=ports)
        log = second.stdout + second.stderr
        assert second.returncode == 0, log
        assert re.search(r"^\[5\] against the serving model ok", second.stdout, re.M), log
        assert re.search(r"^\[6\] kept the serving model ok", second.stdout, re.M), log
        assert "kept the serving model: the new one reads worse" in second.stdout, log
        assert not (tmp_path / "second" / "steps" / "upload.json").exists()
        assert serving_layout(tmp_path) == layout and server.serving(layout)  # the first run's model serves on
        report = json.loads((tmp_path / "second" / "steps" / "compare.json").read_text())
        assert report["promote"] is False and report["rows"]
        page = Path(report["artifact"]).read_text()
        assert "Kept the serving model" in page and "evaluation, on the same data" in page

        third = run(tmp_path, "--keep-serving", "--force-promotion", *again, out="third", ports=ports)
        log = third.stdout + third.stderr
        assert third.returncode == 0, log
        assert "promoted by force_promotion, although it reads worse" in third.stdout, log
        assert re.search(r"^\[10\] smoke test ok", third.stdout, re.M), log
        assert serving_layout(tmp_path) == str(tmp_path / "third" / "serving")
        assert server.serving(tmp_path / "third" / "serving") and not server.serving(layout)
    finally:
        for name in ("first", "second", "third"):
            server.stop(tmp_path / name / "serving")
    assert java_serving(tmp_path) == []


@pytest.mark.timeout(600)
def test_gate_stops_a_weak_model_before_export(tmp_path):
    out = run(tmp_path, "--set", "evaluate.min_eir=0.99")
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"^\[4\] evaluate ok", out.stdout, re.M)
    assert re.search(r"^\[5\] gate failed FAILED", out.stdout, re.M)
    assert "EIR gate failed: EIR 0.0000 < min_eir 0.99" in out.stdout
    assert "upload" not in out.stdout.split("summary")[1]
    assert not (tmp_path / "run" / "steps" / "upload.json").exists()


def test_existing_run_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    out = run(tmp_path)
    assert out.returncode == 2
    assert "exists and is not empty" in out.stderr
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


@pytest.mark.timeout(300)
def test_sigterm_stops_the_run_and_everything_it_started(tmp_path):
    """`kill PID` mid-training (as a job scheduler or `timeout` does) stops the training step and
    fake-gcs-server too, and says so."""
    ports = [server.free_port() for _ in range(3)]
    args = [str(PLATEPIPE), "run", "--local", "--out", str(tmp_path / "run"), *TINY, "--set", "train.max_iters=100000",
            "--set", f"serving.inference_port={ports[0]}", "--set", f"serving.management_port={ports[1]}",
            "--set", f"serving.metrics_port={ports[2]}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("[3] train or fetch ..."):
                break
        else:
            pytest.fail("the run ended before training: " + proc.stderr.read())
        started = set()
        for _ in range(100):  # the training step and fake-gcs-server
            started = set(descendants(proc.pid))
            names = [cmdline(p) for p in started]
            if any(b"fake-gcs-server" in n for n in names) and any(b"executor_main" in n for n in names):
                break
            time.sleep(0.1)
        assert len(started) >= 2, started
        time.sleep(2)  # training under way
        proc.terminate()
        assert proc.wait(timeout=60) == 130
        assert "platepipe run: interrupted" in proc.stderr.read()
        alive = [p for p in started if running(p)]
        assert alive == [], alive
    finally:
        proc.kill()
        proc.wait()
