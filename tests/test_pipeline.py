"""The compiled pipeline YAML: every step, the gate, GPU, secrets, node placement, caching, retries.
(kfp.local ignores kfp.kubernetes settings, so they are checked here, in what the cluster would get.)"""

from __future__ import annotations

import yaml
import pytest

from platepipe.pipeline.config import config_from_text as load_config_text, load_config
from platepipe.pipeline.pipeline import compile_pipeline

STEPS = ["settings-step", "data-step", "train-step", "evaluate-step", "compare-step", "export-step", "archive-step",
         "upload-step", "deploy-step", "smoke-test-step", "kept-step", "gate-failed-step"]


def compiled(tmp_path, *overrides):
    path = compile_pipeline(load_config(None, list(overrides)), tmp_path / "pipeline.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def tasks_of(spec: dict) -> dict:
    """Every task of the pipeline, nested condition branches included."""
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    return compiled(tmp_path_factory.mktemp("c"), "kfp.gcs_secret=gcs-key", "kfp.pvc=platepipe-work",
                    "kfp.image=registry.example.com/platepipe:1.2", "kfp.accelerator_type=nvidia-l4",
                    "kfp.node_selector={pool: gpu}",
                    "kfp.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]")


def test_every_step_is_in_the_pipeline(default):
    spec, _ = default
    assert set(STEPS) <= set(tasks_of(spec))
    for name in STEPS:
        assert f"comp-{name}" in spec["components"]


def test_every_step_runs_in_the_configured_image_without_pip(default):
    spec, _ = default
    for name, ex in executors(spec).items():
        assert ex["container"]["image"] == "registry.example.com/platepipe:1.2", name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_gate_on_eir(default):
    spec, _ = default
    tasks = tasks_of(spec)
    conditions = [t["triggerPolicy"]["condition"] for t in tasks.values() if "triggerPolicy" in t]
    assert any("evaluate-step-passed" in c and not c.startswith("!") for c in conditions)
    assert any("evaluate-step-passed" in c and c.startswith("!") for c in conditions)
    # what runs behind the gate, and what runs when it fails
    branches = {name: comp for name, comp in spec["components"].items() if name.startswith("comp-condition-")
                and "dag" in comp and "export-step" in comp["dag"]["tasks"]}
    (passed,) = branches.values()
    assert {"export-step", "archive-step", "upload-step", "deploy-step", "smoke-test-step"} <= set(passed["dag"]["tasks"])


def test_only_a_model_not_worse_than_the_serving_one_is_deployed(default):
    """Behind the gate the compare step (the serving model on the same data, never cached) decides: export to
    smoke test run only when it promotes; otherwise the kept step ends the run, successfully."""
    spec, _ = default
    tasks = tasks_of(spec)
    compare = tasks["compare-step"]
    assert "data-step-data" in str(compare["inputs"]["artifacts"]["data"])  # the same data the new model met
    assert "evaluate-step-report" in str(compare["inputs"]["artifacts"]["challenger_report"])
    assert "force_promotion" in str(compare["inputs"]["parameters"]["force_promotion"])
    assert not compare.get("cachingOptions", {}).get("enableCache")
    conditions = {name: t["triggerPolicy"]["condition"] for name, t in tasks.items() if "triggerPolicy" in t}
    promoted = [c for c in conditions.values() if "compare-step-promote" in c and not c.startswith("!")]
    kept = [c for c in conditions.values() if "compare-step-promote" in c and c.startswith("!")]
    assert promoted and kept
    branch = {name: comp for name, comp in spec["components"].items() if name.startswith("comp-condition-")
              and "dag" in comp and "export-step" in comp["dag"]["tasks"]}
    (inner,) = branch.values()
    assert {"export-step", "archive-step", "upload-step", "deploy-step", "smoke-test-step"} <= set(inner["dag"]["tasks"])
    assert "compare-step" not in inner["dag"]["tasks"]
    kept_branch = [comp for name, comp in spec["components"].items() if name.startswith("comp-condition-")
                   and "kept-step" in comp.get("dag", {}).get("tasks", {})]
    assert kept_branch and "export-step" not in kept_branch[0]["dag"]["tasks"]


def test_train_gets_a_gpu_on_the_chosen_nodes_with_the_volume(default):
    spec, platform = default
    train = executors(spec)["exec-train-step"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(train["accelerator"]["resourceCount"]) == 1
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-step"]
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "gpu"}
    assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert k8s["pvcMount"][0]["mountPath"] == "/mnt/platepipe"
    assert k8s["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "platepipe-work"
    for name in ("exec-evaluate-step", "exec-archive-step"):
        assert "accelerator" not in executors(spec)[name]["container"].get("resources", {})


def test_gcs_key_secret_reaches_the_storage_steps_as_env(default):
    _, platform = default
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-data-step", "exec-train-step", "exec-upload-step"):
        (env,) = k8s[name]["secretAsEnv"]
        assert env["secretNameParameter"]["runtimeValue"]["constant"] == "gcs-key"
        assert env["keyToEnv"] == [{"secretKey": "key.json", "envVar": "PLATEPIPE_GCS_KEY_JSON"}]
    assert "secretAsEnv" not in k8s.get("exec-evaluate-step", {})


def test_caching_only_for_data_and_train(default):
    spec, _ = default
    tasks = tasks_of(spec)
    for name in ("data-step", "train-step"):
        assert tasks[name]["cachingOptions"].get("enableCache") is True, name
    for name in ("settings-step", "upload-step", "deploy-step", "smoke-test-step", "evaluate-step"):
        assert not tasks[name]["cachingOptions"].get("enableCache"), name


def test_changing_smoke_or_deploy_settings_keeps_the_cached_steps_inputs(tmp_path):
    """KFP's cache key of a task is its component and its inputs' values. The data and train steps take their
    settings from the settings step's outputs, which carry only their own sections: a run whose smoke or deploy
    settings differ hands them the same values, so their cached outputs are reused; a data change is seen."""
    from platepipe.pipeline import tasks
    from platepipe.pipeline.config import dump_config

    spec, _ = compiled(tmp_path)
    steps = tasks_of(spec)
    for name, cut in (("data-step", "data"), ("train-step", "train"), ("evaluate-step", "evaluate")):
        source = steps[name]["inputs"]["parameters"]["config"]["taskOutputParameter"]
        assert source == {"producerTask": "settings-step", "outputParameterKey": cut}, (name, source)
    assert steps["settings-step"]["inputs"]["parameters"]["config"]["componentInputParameter"] == "config"
    base = tasks.settings(dump_config(load_config()))
    changed = tasks.settings(dump_config(load_config(None, [
        "smoke.n_images=3", "deploy.namespace=other", "deploy.canary_steps=[50, 100]", "serving.batch_size=8",
        "gcs.bucket=elsewhere", "evaluate.min_eir=0.5"])))
    assert changed["data"] == base["data"] and changed["train"] == base["train"]
    assert changed["smoke"] != base["smoke"] and changed["deploy"] != base["deploy"]
    assert tasks.settings(dump_config(load_config(None, ["data.n_images=10"])))["data"] != base["data"]
    assert tasks.settings(dump_config(load_config(None, ["train.lr=0.001"])))["train"] != base["train"]
    # each step's cut gives it the settings it reads, the rest as defaults
    from platepipe.pipeline.config import config_from_text
    cfg = load_config(None, ["data.n_images=10", "smoke.n_images=3"])
    cut = tasks.settings(dump_config(cfg))
    assert config_from_text(cut["data"]).data == cfg.data and config_from_text(cut["smoke"]).smoke == cfg.smoke


def test_caching_off_in_config_turns_it_off(tmp_path):
    spec, _ = compiled(tmp_path, "kfp.caching=false")
    assert not tasks_of(spec)["data-step"]["cachingOptions"].get("enableCache")


def test_network_steps_retry(default):
    spec, _ = default
    tasks = tasks_of(spec)
    for name in ("upload-step", "deploy-step"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2, name
    # a failed smoke test has rolled back already: retrying it would test the previous model
    for name in ("train-step", "smoke-test-step"):
        assert "retryPolicy" not in tasks[name], name


def test_run_parameters_and_their_defaults(tmp_path):
    spec, platform = compiled(tmp_path, "evaluate.min_eir=0.9", "data.n_images=500")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config", "pretrained_model", "min_eir", "model_version", "deploy_target",
                           "force_promotion"}
    assert params["force_promotion"]["defaultValue"] is False
    assert params["min_eir"]["defaultValue"] == 0.9
    assert load_config_text(params["config"]["defaultValue"]).data.n_images == 500
    assert params["deploy_target"]["defaultValue"] == "kserve"
    assert platform == {}  # no secret, PVC or node settings configured: no Kubernetes section


def test_compiling_or_sending_with_placeholder_images_is_refused_unless_meant(tmp_path, capsys):
    from platepipe.pipeline.cli import main

    out = tmp_path / "p.yaml"
    assert main(["compile", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "kfp.image is 'platepipe:latest', a local placeholder no cluster can pull" in err
    assert "make images REGISTRY=" in err and "deploy.image is not set" in err and not out.exists()
    assert main(["compile", "-o", str(out), "--allow-placeholder-images"]) == 0 and out.exists()
    # a package compiled with the placeholder is refused when sent, before any connection
    assert main(["submit", "--host", "http://127.0.0.1:9", "--package", str(out)]) == 2
    assert "kfp.image is 'platepipe:latest'" in capsys.readouterr().err
    images = ["--set", "kfp.image=reg.example.com/ml/platepipe:0.1.0",
              "--set", "deploy.image=reg.example.com/ml/platepipe-serving:0.1.0"]
    assert main(["compile", "-o", str(out), *images]) == 0
    assert set(e["container"]["image"] for e in executors(yaml.safe_load(out.read_text())).values()) == \
        {"reg.example.com/ml/platepipe:0.1.0"}
    # a runtime the user keeps needs no deploy.image
    assert main(["compile", "-o", str(out), images[0], images[1], "--set", "deploy.manage_runtime=false"]) == 0
