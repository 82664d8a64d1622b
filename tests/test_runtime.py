"""Our KServe ServingRuntime, the deploy's pre-flight and `platepipe doctor --cluster`: manifests against the
real CRDs, the rest against the stub API server driven by the real kubernetes client."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from platepipe.components import deploy, runtime
from platepipe.components.deploy import DeployError
from platepipe.pipeline.config import settings
from platepipe.components.runtime import ARGS, ENTRYPOINT, ensure_runtime, needed_access, preflight, runtime_manifest
from k8s_stub import K8sStub, ready
from platepipe.pipeline.cli import main
from platepipe.serving.container import HTTP_PORT, METRICS_PORT
from test_deploy import crd_errors

NS = "ml"
URI = "gs://models/platepipe/v1"
IMAGE = "registry.example.com/ml/platepipe-serving:0.1.0"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


def spec(**changes):
    return settings("deploy", **{"namespace": NS, "image": IMAGE, "timeout_s": 10, **changes})


@pytest.mark.parametrize("kind", ["ServingRuntime", "ClusterServingRuntime"])
def test_the_runtime_validates_against_its_crd_and_says_what_the_container_needs(kind):
    m = runtime_manifest(spec(runtime_kind=kind))
    assert crd_errors(m) == []
    assert m["kind"] == kind and ("namespace" in m["metadata"]) == (kind == "ServingRuntime")
    body = m["spec"]
    assert body["supportedModelFormats"] == [{"name": "platepipe", "version": "1", "autoSelect": False}]
    assert body["protocolVersions"] == ["v1", "v2"]
    assert body["annotations"] == {"prometheus.kserve.io/port": str(METRICS_PORT), "prometheus.kserve.io/path": "/metrics"}
    (c,) = body["containers"]
    assert c["name"] == "kserve-container" and c["image"] == IMAGE and c["args"] == ARGS
    assert c["ports"] == [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    assert c["readinessProbe"]["exec"]["command"] == [ENTRYPOINT, "ready"]
    sc = c["securityContext"]
    assert sc["runAsUser"] == 1000 and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and not sc["privileged"]
    # the InferenceService names it and a format it serves
    isvc = deploy.manifest(spec(runtime_kind=kind), URI)["spec"]["predictor"]["model"]
    assert isvc["runtime"] == m["metadata"]["name"]
    assert {**isvc["modelFormat"], "autoSelect": False} in body["supportedModelFormats"]


def test_the_validator_catches_a_broken_runtime():
    m = runtime_manifest(spec())
    m["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert any("containerPort" in e for e in crd_errors(m))
    m = runtime_manifest(spec())
    m["spec"]["containers"][0]["readinesProbe"] = {}
    assert crd_errors(m) == ["spec.containers[0].readinesProbe: unknown field"]


@pytest.mark.parametrize("image", [None, "platepipe:latest", "platepipe-serving:latest"])
def test_no_runtime_without_a_usable_image(image):
    with pytest.raises(DeployError, match=r"make images REGISTRY=.*deploy\.image"):
        runtime_manifest(spec(image=image))


def test_an_empty_image_is_refused_where_it_is_set():
    from platepipe.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"deploy\.image: must not be empty"):
        spec(image="")


@pytest.fixture
def stub():
    with K8sStub(controller=ready(after_gets=2)) as server:
        yield server


@pytest.fixture
def client(stub, tmp_path):
    return deploy.api_client(stub.kubeconfig(tmp_path / "kubeconfig", namespace=NS))


def test_ensure_creates_then_keeps_then_updates_the_runtime(stub, client):
    key = ("servingruntimes", NS, "platepipe-torchserve")
    assert ensure_runtime(spec(), client) == "created ServingRuntime ml/platepipe-torchserve"
    first = stub.runtimes[key]
    assert first["spec"] == runtime_manifest(spec())["spec"]
    assert ensure_runtime(spec(), client) == "ServingRuntime ml/platepipe-torchserve is up to date"
    assert stub.runtimes[key]["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    newer = spec(image="registry.example.com/ml/platepipe-serving:0.2.0")
    assert ensure_runtime(newer, client) == "updated ServingRuntime ml/platepipe-torchserve"
    assert stub.runtimes[key]["spec"]["containers"][0]["image"].endswith(":0.2.0")
    assert stub.runtimes[key]["metadata"]["generation"] == 2 and stub.runtimes[key]["metadata"]["uid"] == first["metadata"]["uid"]
    # the cluster-wide variant lives outside any namespace
    assert ensure_runtime(spec(runtime_kind="ClusterServingRuntime"), client) == \
        "created ClusterServingRuntime platepipe-torchserve"
    assert ("clusterservingruntimes", "", "platepipe-torchserve") in stub.runtimes


def test_a_runtime_you_keep_is_checked_not_written(stub, client):
    kept = spec(manage_runtime=False, image=None)
    with pytest.raises(DeployError, match="there is no ServingRuntime ml/platepipe-torchserve"):
        ensure_runtime(kept, client)
    good = runtime_manifest(spec())
    stub.runtimes[("servingruntimes", NS, "platepipe-torchserve")] = {**good, "metadata": {
        **good["metadata"], "resourceVersion": "1", "generation": 1}}
    assert ensure_runtime(kept, client) == "ServingRuntime ml/platepipe-torchserve is there (kept by you)"
    for edit, words in ((lambda b: b["spec"].__setitem__("supportedModelFormats", [{"name": "pytorch"}]),
                         "does not support the model format platepipe"),
                        (lambda b: b["spec"]["containers"][0].__setitem__("image", "platepipe-serving:latest"),
                         "local placeholder"),
                        (lambda b: b["spec"].__setitem__("disabled", True), "is disabled")):
        body = yaml.safe_load(yaml.safe_dump(good))
        body["metadata"]["resourceVersion"] = "1"
        edit(body)
        stub.runtimes[("servingruntimes", NS, "platepipe-torchserve")] = body
        with pytest.raises(DeployError, match=words):
            ensure_runtime(kept, client)
    assert not [c for c in stub.calls(every=True) if c[0] in ("POST", "PUT")]


def test_preflight_names_every_missing_permission_and_creates_nothing(stub, client):
    preflight(spec(), client)  # all allowed
    stub.denied = {("create", "servingruntimes"), ("delete", "inferenceservices")}
    with pytest.raises(DeployError) as err:
        deploy.deploy(spec(), URI, api_client=client, poll_s=0.01, log=lambda _: None)
    text = str(err.value)
    assert "create servingruntimes.serving.kserve.io in namespace 'ml'" in text
    assert "delete inferenceservices.serving.kserve.io in namespace 'ml'" in text
    assert "get inferenceservices" not in text and "nothing was created" in text and "k8s/rbac.yaml" in text
    assert not [c for c in stub.calls(every=True) if c[0] in ("POST", "PUT") and "selfsubject" not in c[1]]
    # a runtime the user keeps needs only get on it
    assert [str(a) for a in needed_access(spec(manage_runtime=False)) if a.resource == "servingruntimes"] == \
        ["get servingruntimes.serving.kserve.io in namespace 'ml'"]


def test_the_rbac_file_grants_every_verb_the_deploy_checks():
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "rbac.yaml").read_text()))
    assert docs == runtime.rbac_manifests()
    role, binding = docs
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    for kept in (True, False):
        for access in needed_access(dataclasses.replace(spec(), namespace="kubeflow-user", manage_runtime=kept)):
            assert (access.resource, access.verb) in granted, access
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["kind"] == "ServiceAccount"


def doctor(capsys, kubeconfig, *extra) -> tuple[int, str]:
    code = main(["doctor", "--cluster", "--kubeconfig", str(kubeconfig), "-n", NS,
                 "--set", f"deploy.image={IMAGE}", "--set", "gcs.bucket=models", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_doctor_cluster_reports_each_part_with_its_fix(stub, tmp_path, capsys):
    kubeconfig = stub.kubeconfig(tmp_path / "kc", namespace=NS)
    stub.service_accounts[(NS, "default")] = {"annotations": {"iam.gke.io/gcp-service-account": "gsa@p.iam"}}
    code, out = doctor(capsys, kubeconfig)
    assert code == 0, out
    assert "ok   KServe CRDs" in out and "ok   RBAC" in out and "ok   GPU nodes" in out
    assert "1 of 2 nodes have nvidia.com/gpu" in out and "Workload Identity gsa@p.iam" in out
    assert "??   serving runtime" in out and "`platepipe deploy` creates it" in out
    # everything wrong at once
    stub.nodes = {"cpu-node": 0}
    stub.denied = {("create", "inferenceservices")}
    stub.service_accounts.clear()
    code, out = doctor(capsys, kubeconfig)
    assert code == 1
    assert "FAIL GPU nodes" in out and "set deploy.gpu: 0" in out
    assert "FAIL RBAC" in out and "create inferenceservices" in out and "k8s/rbac.yaml" in out
    assert "FAIL storage service account" in out and "ml/default not found" in out
    stub.kserve_installed = False
    code, out = doctor(capsys, kubeconfig)
    assert code == 1 and "FAIL KServe CRDs" in out and "install KServe" in out
