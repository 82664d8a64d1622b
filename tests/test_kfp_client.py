"""upload-pipeline, submit and schedule against a stub KFP API server, through the real kfp.Client.

The stub (tests/kfp_stub.py) records every request; the tests check what went over the wire: the uploaded
package bytes, the run's typed runtime parameters, the experiment, the recurring run's 6-field cron, and the
error messages a user gets (unknown parameter, bad cron, 401/403, login page, server down).
"""

import socket
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from kfp_stub import KfpStub
from platepipe.pipeline import kfp_client
from platepipe.pipeline.cli import main
from platepipe.pipeline.kfp_client import KfpError, connect

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------- fixtures

def _compile_tiny(path: Path) -> Path:
    """A throwaway two-step pipeline with parameters of every kind (one without a default)."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def make_data(n_images: int, preset: str, tags: list, out: dsl.Output[dsl.Dataset]):
        out.metadata["n"] = n_images

    @dsl.component(base_image="python:3.11-slim")
    def train(data: dsl.Input[dsl.Dataset], lr: float, use_gpu: bool, bucket: str, extra: dict) -> str:
        return bucket

    @dsl.pipeline(name="platepipe-test", description="tiny throwaway pipeline")
    def tiny(bucket: str, n_images: int = 100, lr: float = 0.01, preset: str = "quick", use_gpu: bool = False,
             tags: list = ["a"], extra: dict = {"k": 1}):
        data = make_data(n_images=n_images, preset=preset, tags=tags)
        train(data=data.outputs["out"], lr=lr, use_gpu=use_gpu, bucket=bucket, extra=extra)

    compiler.Compiler().compile(tiny, str(path))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return _compile_tiny(tmp_path_factory.mktemp("package") / "pipeline.yaml")


@pytest.fixture(autouse=True)
def hermetic_kfp(monkeypatch, tmp_path):
    """No KFP settings from this machine: no env endpoint/token, no ~/.config/kfp/context.json, no proxy."""
    import kfp
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_UI_ENDPOINT",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                 "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


@pytest.fixture
def stub():
    with KfpStub() as server:
        yield server


@pytest.fixture
def dead_url():
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def only(calls):
    assert len(calls) == 1, calls
    return calls[0]

# ---------------------------------------------------------------------------------------------- upload

def test_upload_new_pipeline_sends_the_package(stub, package):
    kfp = connect(stub.url)
    out = kfp_client.upload_pipeline(kfp, package, "platepipe")

    upload = only(stub.calls("POST", "/pipelines/upload"))
    assert upload["headers"]["Content-Type"].startswith("multipart/form-data")
    assert upload["files"]["uploadfile"]["content"] == package.read_bytes()
    assert upload["files"]["uploadfile"]["filename"] == "pipeline.yaml"
    assert upload["query"]["name"] == "platepipe"
    assert upload["query"]["description"] == "tiny throwaway pipeline"  # the package's own
    (pid,) = stub.pipelines
    (version,) = stub.versions.values()
    assert out == {"pipeline": "platepipe", "pipeline_id": pid, "version": "platepipe",
                   "version_id": version["pipeline_version_id"], "created": True,
                   "url": f"{stub.url}/#/pipelines/details/{pid}/version/{version['pipeline_version_id']}"}
    assert not stub.calls("POST", "/pipelines/upload_version")


def test_existing_pipeline_without_version_suggests_one(stub, package):
    kfp = connect(stub.url)
    kfp_client.upload_pipeline(kfp, package, "platepipe")
    with pytest.raises(KfpError, match=r"a pipeline named 'platepipe' already exists on http://127\.0\.0\.1:\d+: "
                                       r"upload a new version of it with --version V"):
        kfp_client.upload_pipeline(kfp, package, "platepipe")
    assert len(stub.calls("POST", "/pipelines/upload")) == 1


def test_new_version_of_an_existing_pipeline_goes_to_upload_version(stub, package, capsys):
    code, out, _ = run_cli(capsys, "upload-pipeline", "--host", stub.url, "--package", str(package))
    assert code == 0 and "uploaded new pipeline 'platepipe'" in out
    (pid,) = stub.pipelines

    code, out, err = run_cli(capsys, "upload-pipeline", "--host", stub.url, "--package", str(package),
                             "--version", "v2", "--description", "second")
    assert code == 0, err
    upload = only(stub.calls("POST", "/pipelines/upload_version"))
    assert upload["query"] == {"name": "v2", "pipelineid": pid, "description": "second"}
    assert upload["files"]["uploadfile"]["content"] == package.read_bytes()
    vid = next(v["pipeline_version_id"] for v in stub.versions.values() if v["display_name"] == "v2")
    assert f"uploaded a new version of pipeline 'platepipe', version 'v2'" in out
    assert f"{stub.url}/#/pipelines/details/{pid}/version/{vid}" in out
    assert "Pipeline details" not in out  # kfp.Client's own prints are not passed on

    code, _, err = run_cli(capsys, "upload-pipeline", "--host", stub.url, "--package", str(package),
                           "--version", "v2")
    assert code == 2
    assert "platepipe upload-pipeline: error: pipeline 'platepipe' already has a version 'v2': choose another " \
           "--version" in err
    assert len(stub.calls("POST", "/pipelines/upload_version")) == 1


def test_version_of_a_new_pipeline_creates_it_and_names_the_version(stub, package):
    kfp = connect(stub.url)
    out = kfp_client.upload_pipeline(kfp, package, "plates", version="v1")
    created = only(stub.calls("POST", "/pipelines"))
    assert created["json"]["display_name"] == "plates"
    upload = only(stub.calls("POST", "/pipelines/upload_version"))
    assert upload["query"]["name"] == "v1" and upload["query"]["pipelineid"] == out["pipeline_id"]
    assert out["created"] and out["version"] == "v1"
    assert not stub.calls("POST", "/pipelines/upload")


def test_config_and_env_give_the_host(stub, package, capsys, monkeypatch):
    code, _, err = run_cli(capsys, "upload-pipeline", "--set", f"kfp.host={stub.url}",
                           "--set", "kfp.pipeline_name=from-config", "--package", str(package))
    assert code == 0, err
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", stub.url)
    code, _, err = run_cli(capsys, "upload-pipeline", "--package", str(package), "--version", "v2",
                           "--set", "kfp.pipeline_name=from-config")
    assert code == 0, err
    assert [v["display_name"] for v in stub.versions.values()] == ["from-config", "v2"]


def test_without_package_the_pipeline_is_compiled_from_the_configuration(stub, capsys, monkeypatch):
    seen = []

    def compile_pipeline(cfg, path):
        seen.append((cfg.kfp.pipeline_name, Path(path).suffix))
        return _compile_tiny(Path(path))

    from platepipe.pipeline import pipeline as real
    monkeypatch.setitem(sys.modules, "platepipe.pipeline.pipeline", types.SimpleNamespace(
        compile_pipeline=compile_pipeline, check_images=real.check_images, package_images=real.package_images))
    code, _, err = run_cli(capsys, "upload-pipeline", "--host", stub.url, "--set", "kfp.pipeline_name=compiled")
    assert code == 2 and "kfp.image is 'platepipe:latest', a local placeholder" in err and "deploy.image is not set" in err
    assert seen == [] and stub.requests == []  # nothing compiled, nothing sent
    code, _, err = run_cli(capsys, "upload-pipeline", "--host", stub.url, "--set", "kfp.pipeline_name=compiled",
                           "--set", "kfp.image=reg.example.com/platepipe:0.1.0",
                           "--set", "deploy.image=reg.example.com/platepipe-serving:0.1.0")
    assert code == 0, err
    assert seen == [("compiled", ".yaml")]
    upload = only(stub.calls("POST", "/pipelines/upload"))
    assert yaml.safe_load(upload["files"]["uploadfile"]["content"])["pipelineInfo"]["name"] == "platepipe-test"

# ---------------------------------------------------------------------------------------------- submit

def test_submit_sends_typed_parameters_in_the_experiment(stub, package, capsys):
    code, out, err = run_cli(capsys, "submit", "--host", stub.url, "--package", str(package),
                             "--param", "bucket=my-bucket", "--param", "n_images=500", "--param", "lr=1",
                             "--param", "use_gpu=true", "--param", 'tags=["x", "y"]', "--param", "preset=42",
                             "--run-name", "first")
    assert code == 0, err
    experiment = only(stub.calls("POST", "/experiments"))["json"]
    assert experiment["display_name"] == "platepipe"  # kfp.experiment, created because it was missing
    (exp_id,) = stub.experiments
    run = only(stub.calls("POST", "/runs"))["json"]
    assert run["experiment_id"] == exp_id and run["display_name"] == "first"
    params = run["runtime_config"]["parameters"]
    assert params == {"bucket": "my-bucket", "n_images": 500, "lr": 1.0, "use_gpu": True, "tags": ["x", "y"],
                      "preset": "42"}
    assert type(params["n_images"]) is int and type(params["lr"]) is float and type(params["preset"]) is str
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "platepipe-test"
    assert "pipeline_version_reference" not in run
    (run_id,) = stub.runs
    assert f"started run 'first' (id {run_id}) in experiment 'platepipe': {stub.url}/#/runs/details/{run_id}" in out
    assert "Experiment details" not in out and "Run details" not in out

    code, _, err = run_cli(capsys, "submit", "--host", stub.url, "--package", str(package),
                           "--param", "bucket=b", "--no-cache")
    assert code == 0, err
    assert len(stub.calls("POST", "/experiments")) == 1  # found this time, not created again
    second = stub.calls("POST", "/runs")[1]["json"]
    assert second["experiment_id"] == exp_id
    assert second["runtime_config"]["parameters"] == {"bucket": "b"}
    def caching(run):
        return {name: t.get("cachingOptions", {}).get("enableCache", False)
                for name, t in run["pipeline_spec"]["root"]["dag"]["tasks"].items()}
    assert caching(run) == {"make-data": True, "train": True}
    assert caching(second) == {"make-data": False, "train": False}


def test_submit_an_uploaded_version_refers_to_it(stub, package):
    kfp = connect(stub.url)
    kfp_client.upload_pipeline(kfp, package, "platepipe")
    v2 = kfp_client.upload_pipeline(kfp, package, "platepipe", version="v2")
    version = kfp_client.find_version(kfp, "platepipe", "latest")
    assert (version.version_id, version.version_name) == (v2["version_id"], "v2")
    assert "bucket" in version.parameters

    out = kfp_client.submit(kfp, version, {"bucket": "b", "n_images": 7}, experiment="nightly", echo=lambda _: None)
    run = only(stub.calls("POST", "/runs"))["json"]
    assert run["pipeline_version_reference"] == {"pipeline_id": v2["pipeline_id"],
                                                 "pipeline_version_id": v2["version_id"]}
    assert "pipeline_spec" not in run
    assert run["runtime_config"]["parameters"] == {"bucket": "b", "n_images": 7}
    assert out["experiment_id"] == run["experiment_id"] == next(iter(stub.experiments))

    with pytest.raises(KfpError, match="pipeline 'platepipe' has no version 'v9'; its versions: v2, platepipe"):
        kfp_client.find_version(kfp, "platepipe", "v9")
    with pytest.raises(KfpError, match="no pipeline named 'other'.*upload it first"):
        kfp_client.find_version(kfp, "other")


def test_wait_follows_the_run_until_it_succeeds(stub, package, capsys):
    stub.run_states = ["PENDING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    code, out, err = run_cli(capsys, "submit", "--host", stub.url, "--package", str(package), "--param", "bucket=b",
                             "--wait", "--poll", "0.01")
    assert code == 0, err
    (run_id,) = stub.runs
    assert len([r for r in stub.requests if r["path"].endswith(f"/runs/{run_id}")]) == 5
    assert f"run {run_id}: PENDING" in out
    assert f"run {run_id}: RUNNING, tasks: 1 running, 1 succeeded" in out
    assert out.count("RUNNING, tasks") == 1  # a line per change, not per poll
    assert f"run {run_id} SUCCEEDED" in out


def test_failed_run_exits_nonzero_and_names_the_state(stub, package, capsys):
    stub.run_states = ["RUNNING", "FAILED"]
    code, out, err = run_cli(capsys, "submit", "--host", stub.url, "--package", str(package), "--param", "bucket=b",
                             "--wait", "--poll", "0.01")
    assert code == 1
    (run_id,) = stub.runs
    assert f"run {run_id} ended FAILED: task 'train' failed: exit code 1; failed tasks: train" in err
    assert f"{stub.url}/#/runs/details/{run_id}" in err


def test_wait_gives_up_after_the_timeout(stub, package):
    stub.run_states = ["RUNNING"]
    kfp = connect(stub.url)
    lines = []
    started = time.monotonic()
    with pytest.raises(KfpError, match=r"run \S+ is still RUNNING after 0s; it goes on on the cluster: http"):
        kfp_client.submit(kfp, package, {"bucket": "b"}, experiment="e", wait=True, timeout_s=0.3, poll_s=0.05,
                          echo=lines.append)
    assert time.monotonic() - started < 5
    assert len(stub.calls("POST", "/runs")) == 1 and lines


@pytest.mark.parametrize("params, message", [
    (["n_imges=5", "bucket=b"], "unknown pipeline parameter 'n_imges' (did you mean 'n_images'?); the pipeline's "
                                "parameters are: bucket (STRING, required), extra (STRUCT, default {\"k\": 1.0}), "
                                "lr (NUMBER_DOUBLE, default 0.01), n_images (NUMBER_INTEGER, default 100)"),
    (["n_images=5"], "missing pipeline parameter bucket (no default): pass --param bucket=VALUE"),
    (["bucket=b", "n_images=many"], "parameter n_images: expected an integer (NUMBER_INTEGER), got 'many'"),
    (["bucket=b", "use_gpu=maybe"], "parameter use_gpu: expected true or false (BOOLEAN), got 'maybe'"),
    (["bucket=b", "tags=[1,"], "parameter tags: expected a JSON list (LIST), got '[1,'"),
    (["bucket"], "--param bucket: expected NAME=VALUE"),
])
def test_bad_parameters_fail_before_the_server_is_asked(stub, package, capsys, params, message):
    argv = ["submit", "--host", stub.url, "--package", str(package)]
    for p in params:
        argv += ["--param", p]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("platepipe submit: error: ") and message in err
    assert stub.requests == []


def test_typed_parameters_are_checked_too(package):
    parameters = kfp_client.load_package(package).parameters
    assert kfp_client.check_params(parameters, {"bucket": "b", "lr": 2, "extra": {"a": [1]}}) == \
        {"bucket": "b", "lr": 2.0, "extra": {"a": [1]}}
    with pytest.raises(KfpError, match=r"parameter n_images: expected an integer \(NUMBER_INTEGER\), got True"):
        kfp_client.check_params(parameters, {"bucket": "b", "n_images": True})
    with pytest.raises(KfpError, match=r"parameter bucket: expected a string \(STRING\), got 3"):
        kfp_client.check_params(parameters, {"bucket": 3})


def test_a_file_that_is_not_a_compiled_pipeline_is_named(tmp_path, capsys):
    other = tmp_path / "values.yaml"
    other.write_text("a: 1\n")
    code, _, err = run_cli(capsys, "submit", "--host", "http://127.0.0.1:9", "--package", str(other))
    assert code == 2 and f"{other}: not a compiled KFP pipeline (no pipelineInfo/root)" in err
    code, _, err = run_cli(capsys, "submit", "--package", str(tmp_path / "missing.yaml"))
    assert code == 2 and "pipeline package not found" in err

# ---------------------------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("given, kfp_form", [
    ("0 3 * * 0", "0 0 3 * * 0"),
    ("  */15   * * * *", "0 */15 * * * *"),
    ("30 0 3 * * 0", "30 0 3 * * 0"),
    ("0 9 1-15/2 jan-mar MON-FRI", "0 0 9 1-15/2 jan-mar MON-FRI"),
    ("0 0 12 ? * 1,3,5", "0 0 12 ? * 1,3,5"),
    ("@weekly", "@weekly"),
])
def test_cron_becomes_kfp_six_fields(given, kfp_form):
    assert kfp_client.kfp_cron(given) == kfp_form


@pytest.mark.parametrize("given, problem", [
    ("0 3 * *", "4 fields, expected 5 fields: minute hour day-of-month month day-of-week"),
    ("", "0 fields"),
    ("0 25 * * 0", "hour '25' is out of range 0-23"),
    ("61 3 * * 0", "minute '61' is out of range 0-59"),
    ("0 3 * * 7", "day-of-week '7' is out of range 0-6"),
    ("0 3 * * FUN", "day-of-week 'FUN' is not a number or a name (SUN, MON"),
    ("0 3 0 * *", "day-of-month '0' is out of range 1-31"),
    ("0 3 * * 5-1", "day-of-week '5-1' has a backwards range 5-1"),
    ("*/0 3 * * *", "minute '*/0' has a bad step '/0'"),
    ("0 3 * ? *", "month '?' is not a number"),
    ("0 3,,4 * * *", "hour '3,,4' has an empty list item"),
    ("@every 1h", "unknown descriptor"),
])
def test_bad_cron_is_explained(given, problem):
    with pytest.raises(KfpError) as info:
        kfp_client.kfp_cron(given)
    assert str(info.value).startswith(f"bad cron expression '{given}': ")
    assert problem in str(info.value)


def test_schedule_creates_a_recurring_run_lists_and_deletes_it(stub, package, capsys):
    base = ["schedule", "--host", stub.url, "--package", str(package)]
    code, out, err = run_cli(capsys, *base, "--cron", "0 3 * * 0", "--param", "bucket=b", "--param", "lr=0.5",
                             "--max-concurrency", "2", "--no-catchup")
    assert code == 0, err
    body = only(stub.calls("POST", "/recurringruns"))["json"]
    (exp_id,) = stub.experiments
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert int(body["max_concurrency"]) == 2 and body["no_catchup"] is True
    assert body["mode"] == "ENABLE" and body["display_name"] == "platepipe-schedule"
    assert body["experiment_id"] == exp_id
    assert body["runtime_config"]["parameters"] == {"bucket": "b", "lr": 0.5}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "platepipe-test"
    (rid,) = stub.recurring_runs
    assert ("scheduled 'platepipe-schedule' in experiment 'platepipe': cron '0 0 3 * * 0' (KFP's 6-field form of "
            "'0 3 * * 0'), at most 2 at a time, no catch-up") in out
    assert f"{stub.url}/#/recurringrun/details/{rid}" in out

    code, _, err = run_cli(capsys, *base, "--cron", "0 4 * * 0", "--param", "bucket=b")
    assert code == 2 and "already has a recurring run named 'platepipe-schedule': choose another --name" in err
    assert len(stub.recurring_runs) == 1

    code, out, _ = run_cli(capsys, "schedule", "--host", stub.url, "--list")
    assert code == 0 and f"platepipe-schedule  0 0 3 * * 0  ENABLED  max 2 at a time, no catch-up  (id {rid})" in out

    code, _, err = run_cli(capsys, "schedule", "--host", stub.url, "--delete", "nightly")
    assert code == 2 and "no recurring run named 'nightly' in experiment 'platepipe'; its recurring runs: " \
                         "platepipe-schedule" in err
    code, out, _ = run_cli(capsys, "schedule", "--host", stub.url, "--delete", "platepipe-schedule")
    assert code == 0 and f"deleted recurring run 'platepipe-schedule' (id {rid}, 0 0 3 * * 0)" in out
    assert only(stub.calls("DELETE", f"/recurringruns/{rid}"))
    code, out, _ = run_cli(capsys, "schedule", "--host", stub.url, "--list")
    assert code == 0 and "no recurring runs in experiment 'platepipe'" in out


def test_schedule_an_uploaded_version_by_its_ids(stub, package, capsys):
    kfp = connect(stub.url)
    up = kfp_client.upload_pipeline(kfp, package, "platepipe", version="v1")
    code, out, err = run_cli(capsys, "schedule", "--host", stub.url, "--pipeline-version", "v1", "--cron", "@daily",
                             "--name", "daily", "--param", "bucket=b", "--experiment", "sched")
    assert code == 0, err
    body = only(stub.calls("POST", "/recurringruns"))["json"]
    assert body["pipeline_version_reference"] == {"pipeline_id": up["pipeline_id"],
                                                  "pipeline_version_id": up["version_id"]}
    assert "pipeline_spec" not in body
    assert body["trigger"]["cron_schedule"]["cron"] == "@daily" and body["max_concurrency"] == 1
    assert body["no_catchup"] is False and body["display_name"] == "daily"
    assert body.get("service_account") in (None, "")  # the profile's default
    assert next(iter(stub.experiments.values()))["display_name"] == "sched"
    assert "(KFP's 6-field form" not in out


def test_runs_and_schedules_take_the_service_account(stub, package, capsys):
    kfp = connect(stub.url)
    kfp_client.upload_pipeline(kfp, package, "platepipe", version="v1")
    code, _, err = run_cli(capsys, "schedule", "--host", stub.url, "--pipeline-version", "v1", "--cron", "@weekly",
                           "--name", "weekly", "--param", "bucket=b", "--service-account", "pipeline-runner")
    assert code == 0, err
    assert only(stub.calls("POST", "/recurringruns"))["json"]["service_account"] == "pipeline-runner"
    code, _, err = run_cli(capsys, "submit", "--host", stub.url, "--pipeline-version", "v1", "--param", "bucket=b",
                           "--set", "kfp.service_account=trainer")
    assert code == 0, err
    assert only(stub.calls("POST", "/runs"))["json"]["service_account"] == "trainer"


def test_a_schedule_can_follow_the_latest_version(stub, package, capsys):
    """The recurring run names the pipeline alone, so each run takes the version uploaded last; a server that
    pins a version anyway gets the schedule removed again and says how to go on."""
    kfp = connect(stub.url)
    up = kfp_client.upload_pipeline(kfp, package, "platepipe", version="v1")
    code, out, err = run_cli(capsys, "schedule", "--host", stub.url, "--cron", "0 3 * * 0", "--follow-latest",
                             "--name", "weekly", "--param", "bucket=b")
    assert code == 0, err
    body = only(stub.calls("POST", "/recurringruns"))["json"]
    assert body["pipeline_version_reference"] == {"pipeline_id": up["pipeline_id"]}
    assert body["runtime_config"]["parameters"]["bucket"] == "b" and body["trigger"]["cron_schedule"]["cron"] == \
        "0 0 3 * * 0"
    assert "each run takes the latest uploaded version of 'platepipe'" in out
    stub.follows_latest = False
    code, _, err = run_cli(capsys, "schedule", "--host", stub.url, "--cron", "@daily", "--follow-latest",
                           "--name", "daily", "--param", "bucket=b")
    assert code == 2 and "pins recurring runs to one version" in err
    assert [r["display_name"] for r in stub.recurring_runs.values()] == ["weekly"]
    code, _, err = run_cli(capsys, "schedule", "--host", stub.url, "--cron", "@daily", "--follow-latest",
                           "--package", str(package))
    assert code == 2 and "not a package" in err


def test_schedule_checks_what_it_can_before_connecting(package, capsys, dead_url):
    code, _, err = run_cli(capsys, "schedule", "--host", dead_url, "--package", str(package), "--cron", "0 25 * * 0")
    assert code == 2 and "platepipe schedule: error: bad cron expression '0 25 * * 0': hour '25' is out of range" in err
    code, _, err = run_cli(capsys, "schedule", "--host", dead_url, "--package", str(package), "--cron", "0 3 * * 0",
                           "--max-concurrency", "11", "--param", "bucket=b")
    assert code == 2 and "--max-concurrency 11: KFP allows 1 to 10 runs at a time" in err
    code, _, err = run_cli(capsys, "schedule", "--host", dead_url, "--package", str(package), "--cron", "0 3 * * 0",
                           "--param", "bucket=b", "--param", "nope=1")
    assert code == 2 and "unknown pipeline parameter 'nope'" in err
    with pytest.raises(KfpError, match="KFP allows 1 to 10 runs at a time"):  # before the connection is used
        kfp_client.schedule(None, package, "0 3 * * 0", "e", "n", {"bucket": "b"}, max_concurrency=0)
    code, _, err = run_cli(capsys, "schedule", "--host", dead_url)
    assert code == 2 and "schedule needs --cron EXPR" in err
    code, _, err = run_cli(capsys, "schedule", "--host", dead_url, "--list", "--cron", "0 3 * * 0")
    assert code == 2 and "--list, --delete NAME and --cron EXPR go one at a time" in err
    code, _, err = run_cli(capsys, "submit", "--host", dead_url, "--package", str(package), "--pipeline-version", "v1")
    assert code == 2 and "give --package FILE or --pipeline-version V, not both" in err

# ---------------------------------------------------------------------------------------------- errors

def test_forbidden_says_how_to_authenticate(stub, package, capsys):
    stub.forbidden = True
    with pytest.raises(KfpError) as info:
        connect(stub.url)
    message = str(info.value)
    assert message.startswith(f"{stub.url} refused the request (403 Forbidden: User 'system:anonymous' is not "
                              f"allowed to access this resource): authenticate with --token TOKEN or "
                              f"KF_PIPELINES_TOKEN")
    assert "--namespace" in message
    code, _, err = run_cli(capsys, "upload-pipeline", "--host", stub.url, "--package", str(package))
    assert code == 2 and "platepipe upload-pipeline: error: " in err and "403 Forbidden" in err


def test_forbidden_after_connecting_is_translated_too(stub, package):
    kfp = connect(stub.url)
    stub.forbidden = True
    with pytest.raises(KfpError, match=r"^looking up pipeline 'platepipe': http://127\.0\.0\.1:\d+ refused the "
                                       r"request \(403 Forbidden: User 'system:anonymous'.*--token TOKEN"):
        kfp_client.upload_pipeline(kfp, package, "platepipe")


def test_a_server_that_stops_answering_is_an_error_not_a_hang(stub, package):
    kfp = connect(stub.url, request_timeout_s=0.5)
    stub.stall_s = 5.0
    started = time.monotonic()
    with pytest.raises(KfpError, match=r"^cannot reach the KFP API at http://127\.0\.0\.1:\d+ \(.*[Rr]ead timed out"):
        kfp_client.upload_pipeline(kfp, package, "platepipe")
    assert time.monotonic() - started < 4.5  # the request gave up; it did not wait for the server
    assert not stub.pipelines


def test_token_from_the_environment_is_sent(stub, package, capsys, monkeypatch):
    stub.token = "s3cret"
    with pytest.raises(KfpError, match=r"refused the request \(401 Unauthorized: Unauthenticated"):
        connect(stub.url)
    stub.requests.clear()
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "s3cret")
    code, _, err = run_cli(capsys, "submit", "--host", stub.url, "--package", str(package), "--param", "bucket=b")
    assert code == 0, err
    assert stub.requests and all(r["headers"].get("Authorization") == "Bearer s3cret" for r in stub.requests)
    code, _, err = run_cli(capsys, "submit", "--host", stub.url, "--package", str(package), "--param", "bucket=b",
                           "--token", "wrong")
    assert code == 2 and "401 Unauthorized" in err


def test_login_page_is_recognised(stub):
    stub.login_page = True
    with pytest.raises(KfpError, match=r"answered with a web page \(a login page\?\) instead of the KFP API: "
                                       r"authenticate with --token"):
        connect(stub.url)


def test_server_down_is_one_clear_sentence(package, capsys, dead_url):
    started = time.monotonic()
    with pytest.raises(KfpError) as info:
        connect(dead_url)
    assert str(info.value).startswith(f"cannot reach the KFP API at {dead_url} (connection refused): check --host, "
                                      f"kfp.host or KF_PIPELINES_ENDPOINT; without an ingress, run `kubectl "
                                      f"port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`")
    assert time.monotonic() - started < 10
    code, out, err = run_cli(capsys, "submit", "--host", dead_url, "--package", str(package), "--param", "bucket=b")
    assert code == 2 and out == ""
    assert err.strip() == f"platepipe submit: error: {info.value}"


def test_server_gone_after_connecting(package):
    with KfpStub() as server:
        kfp = connect(server.url)
    with pytest.raises(KfpError, match=r"^cannot reach the KFP API at http://127\.0\.0\.1:\d+ \(connection refused\)"):
        kfp_client.submit(kfp, package, {"bucket": "b"}, experiment="e")


def test_no_host_anywhere_says_where_to_give_one(capsys, monkeypatch, tmp_path, package):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    code, _, err = run_cli(capsys, "upload-pipeline", "--package", str(package))
    assert code == 2 and "no KFP host: pass --host URL, set kfp.host, or export KF_PIPELINES_ENDPOINT" in err


def test_multi_user_needs_a_namespace_and_uses_it(package):
    with KfpStub(multi_user=True) as stub:
        with pytest.raises(KfpError, match="is a multi-user Kubeflow: pass --namespace"):
            connect(stub.url)
        kfp = connect(stub.url, namespace="team-a")
        assert kfp.namespace == "team-a"
        kfp_client.upload_pipeline(kfp, package, "platepipe")
        assert only(stub.calls("POST", "/pipelines/upload"))["query"]["namespace"] == "team-a"
        kfp_client.submit(kfp, package, {"bucket": "b"}, experiment="e", echo=lambda _: None)
        assert only(stub.calls("POST", "/experiments"))["json"]["namespace"] == "team-a"


def test_host_without_scheme():
    assert kfp_client.normalise_host("localhost:8080/") == "http://localhost:8080"
    assert kfp_client.normalise_host("127.0.0.1:8888") == "http://127.0.0.1:8888"
    assert kfp_client.normalise_host("kubeflow.example.com/pipeline") == "https://kubeflow.example.com/pipeline"
    assert kfp_client.normalise_host("http://h:1/") == "http://h:1"


def test_commands_explain_themselves(capsys):
    for command, words in [("upload-pipeline", "--version"), ("submit", "--wait"),
                           ("schedule", "prefixing '0 '")]:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: platepipe {command}" in out and words in out and "KF_PIPELINES_ENDPOINT" in out
