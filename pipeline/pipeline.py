"""The Kubeflow pipeline: data -> train or fetch -> evaluate -> [EIR gate] -> export -> archive -> upload ->
deploy -> smoke test. `build_pipeline(cfg)` wires it with the cluster settings of the configuration (image,
GPU, node selectors, tolerations, PVC, GCS secret, retries, caching); `compile_pipeline` writes the YAML that
the Kubeflow UI, `kfp run create` and `platepipe submit` take.

Run parameters (editable per run in the UI): `config` (the whole configuration as YAML; the settings step checks
it and hands each step only the sections it reads, so cache keys follow only a step's own settings),
`pretrained_model` (a pipeline.pth path or gs:// to fetch instead of training), `min_eir` (the gate),
`model_version` (the GCS version folder; empty = time + hash), `deploy_target` (kserve, or local for
`platepipe run --local`) and `force_promotion` (deploy the new model even where the serving one reads better).

After the gate, the compare step evaluates the model serving now on the same data; only a model that is not
worse (evaluate.champion_margin) goes on to export and deploy, else the run ends, successfully, keeping it.
"""

from pathlib import Path

from kfp import compiler, dsl
from kfp import kubernetes as k8s

from platepipe.components.gcs import KEY_JSON_ENV as GCS_KEY_ENV  # the service-account key (JSON text) from kfp.gcs_secret
from platepipe.pipeline import steps
from platepipe.pipeline.config import Config, dump_config

WORK_MOUNT = "/mnt/platepipe"
# what the Kubeflow UI and the local run's progress lines call each step
STEP_NAMES = {"settings-step": "settings", "data-step": "data", "train-step": "train or fetch",
              "evaluate-step": "evaluate", "gate-failed-step": "gate failed",
              "compare-step": "against the serving model", "kept-step": "kept the serving model", "export-step": "export",
              "archive-step": "archive", "upload-step": "upload", "deploy-step": "deploy",
              "smoke-test-step": "smoke test"}


def _settings(task, cfg: Config, *, gpu: bool = False, gcs: bool = False, retry: bool = False, cache: bool = False):
    k = cfg.kfp
    task.set_container_image(k.image)
    task.set_display_name(STEP_NAMES[task.component_spec.name])
    task.set_caching_options(k.caching and cache)
    if retry and k.retries:
        task.set_retry(num_retries=k.retries, backoff_duration="30s", backoff_factor=2.0)
    if gcs and k.gcs_secret:
        k8s.use_secret_as_env(task, secret_name=k.gcs_secret, secret_key_to_env={"key.json": GCS_KEY_ENV})
    if gpu:
        task.set_accelerator_type(k.gpu_type)
        task.set_accelerator_limit(1)
        if k.accelerator_type:
            k8s.add_node_selector(task, label_key="cloud.google.com/gke-accelerator", label_value=k.accelerator_type)
        for key, value in k.node_selector.items():
            k8s.add_node_selector(task, label_key=key, label_value=str(value))
        for tol in k.tolerations:
            k8s.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"), value=tol.get("value"),
                               effect=tol.get("effect"), toleration_seconds=tol.get("tolerationSeconds"))
        if k.pvc:
            k8s.mount_pvc(task, pvc_name=k.pvc, mount_path=WORK_MOUNT)
            task.set_env_variable("PLATEPIPE_WORK_DIR", WORK_MOUNT)
    return task


def build_pipeline(cfg: Config):
    """The pipeline function for this configuration (its text becomes the `config` parameter's default)."""
    default_config = dump_config(cfg, one_line=True)

    @dsl.pipeline(name=cfg.kfp.pipeline_name,
                  description="Train (or fetch) a licence-plate reader, gate on EIR, and serve it on a GPU "
                              "KServe endpoint, smoke-tested.")
    def platepipe(config: str = default_config, pretrained_model: str = cfg.model.pretrained or "",
                  min_eir: float = cfg.evaluate.min_eir, model_version: str = cfg.gcs.version or "",
                  deploy_target: str = "kserve", force_promotion: bool = False):
        cut = _settings(steps.settings_step(config=config), cfg).outputs
        data = _settings(steps.data_step(config=cut["data"]), cfg, gcs=True, cache=True)
        model = _settings(steps.train_step(config=cut["train"], pretrained_model=pretrained_model,
                                           data=data.outputs["data"]), cfg, gpu=True, gcs=True, cache=True)
        evaluation = _settings(steps.evaluate_step(config=cut["evaluate"], min_eir=min_eir,
                                                   model=model.outputs["model"], data=data.outputs["data"]), cfg)
        with dsl.If(evaluation.outputs["passed"] == True, name="eir-gate"):  # noqa: E712 (a KFP condition)
            comparison = _settings(steps.compare_step(config=cut["compare"], evaluation=evaluation.outputs["evaluation"],
                                                      data=data.outputs["data"],
                                                      challenger_report=evaluation.outputs["report"],
                                                      force_promotion=force_promotion, deploy_target=deploy_target),
                                   cfg, gcs=True)
            with dsl.If(comparison.outputs["promote"] == True, name="not-worse-than-serving"):  # noqa: E712
                exported = _settings(steps.export_step(model=model.outputs["model"],
                                                       evaluation=evaluation.outputs["evaluation"],
                                                       run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), cfg)
                layout = _settings(steps.archive_step(config=cut["archive"], model=exported.outputs["exported"]), cfg)
                storage_uri = _settings(steps.upload_step(config=cut["upload"], layout=layout.outputs["layout"],
                                                          model_version=model_version), cfg, gcs=True, retry=True)
                endpoint = _settings(steps.deploy_step(config=cut["deploy"], storage_uri=storage_uri.output,
                                                       deploy_target=deploy_target), cfg, retry=True)
                _settings(steps.smoke_test_step(config=cut["smoke"], url=endpoint.outputs["url"],
                                                host=endpoint.outputs["host"], rollback=endpoint.outputs["rollback"]),
                          cfg)
            with dsl.Else(name="serving-model-reads-better"):
                _settings(steps.kept_step(summary=comparison.outputs["summary"]), cfg)
            # no retry for the smoke test: after a failure it has rolled the deploy back, and a second try would
            # test the previous model (the client already retries 503s)
        with dsl.Else(name="eir-gate-failed"):
            _settings(steps.gate_failed_step(eir=evaluation.outputs["eir"], min_eir=min_eir), cfg)

    return platepipe


def package_images(spec: dict) -> set[str]:
    """The container images of a compiled pipeline's steps."""
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    return {e["container"]["image"] for e in executors.values() if "image" in (e.get("container") or {})}


def check_images(cfg: Config | None, allow: bool = False, step_images: set[str] | None = None) -> None:
    """ValueError naming the fix when the steps' image (kfp.image, or those of a compiled package) is a local
    placeholder no cluster can pull, or when the deploy step would stop for want of deploy.image; nothing
    when allow (the user means it)."""
    from platepipe.components.deploy import DeployError
    from platepipe.components.runtime import BUILD_SERVING, usable_image

    step_images = step_images if step_images is not None else {cfg.kfp.image}
    problems = []
    for image in sorted(step_images):
        try:
            usable_image(image, "kfp.image", "build and push the step image (`make images REGISTRY=...`, "
                                             "the Dockerfile --target steps)")
        except DeployError as exc:
            problems.append(str(exc))
    if cfg is not None and cfg.deploy.manage_runtime:
        try:
            usable_image(cfg.deploy.image, "deploy.image", BUILD_SERVING)
        except DeployError as exc:
            problems.append(f"{exc} (else the run's deploy step stops after training)")
    if problems and not allow:
        raise ValueError("; ".join(problems) + ". --allow-placeholder-images goes on anyway")


def compile_pipeline(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg), str(path))
    return path
