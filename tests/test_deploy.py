"""The deploy step through the real kubernetes client against a stub API server (tests/k8s_stub.py), and every
manifest checked against KServe's real InferenceService CRD schema (tests/data/kserve/)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

from platepipe.components import deploy
from platepipe.components.deploy import DeployError
from platepipe.pipeline.cli import main
from platepipe.pipeline.config import load_config
from k8s_stub import K8sStub, failing, never, ready

CRDS = {kind: (Path(__file__).parent / "data" / "kserve" / f"serving.kserve.io_{plural}.yaml", version)
        for kind, plural, version in (("InferenceService", "inferenceservices", "v1beta1"),
                                      ("ServingRuntime", "servingruntimes", "v1alpha1"),
                                      ("ClusterServingRuntime", "clusterservingruntimes", "v1alpha1"))}
PLATEPIPE = Path(sys.executable).with_name("platepipe")
NS = "ml"
URI = "gs://models/platepipe/20260101-000000-abcd1234"
URI2 = "gs://models/platepipe/20260102-000000-ef567890"
IMAGE = "registry.example.com/ml/platepipe-serving:0.1.0"

pytestmark = pytest.mark.timeout(60)

# ---------------------------------------------------------------------------------------------- CRD schema

# The API server checks ObjectMeta itself (the CRD says only `type: object`): the fields a client may send.
OBJECT_META = {"type": "object", "properties": {
    **{k: {"type": "string"} for k in ("name", "namespace", "generateName", "uid", "resourceVersion",
                                         "creationTimestamp", "deletionTimestamp")},
    "generation": {"type": "integer"}, "deletionGracePeriodSeconds": {"type": "integer"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "finalizers": {"type": "array", "items": {"type": "string"}},
    "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
}}


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str = "InferenceService") -> dict:
    """The kind's openAPIV3Schema from the real CRD, with metadata spelled out as the API server checks it."""
    path, served = CRDS[kind]
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "serving.kserve.io"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == served]
    assert version["served"] and version["storage"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    assert schema["properties"]["metadata"] == {"type": "object"}
    schema["properties"]["metadata"] = OBJECT_META
    return schema


def unknown_fields(instance, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not declare. A structural schema prunes them silently (an `isdecar.istio.is/inject`
    in the spec would vanish without a word), so here they are errors: an object's keys must be in
    `properties`, or match `additionalProperties` (a map), unless x-kubernetes-preserve-unknown-fields."""
    out: list[str] = []
    if isinstance(instance, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        free = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        for key, value in instance.items():
            where = f"{path}.{key}" if path else key
            if key in props:
                out += unknown_fields(value, props[key], where)
            elif isinstance(extra, dict):
                out += unknown_fields(value, extra, where)
            elif not free:
                out.append(where)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            out += unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


@functools.lru_cache(maxsize=None)
def _validator(kind: str = "InferenceService") -> jsonschema.protocols.Validator:
    # OpenAPI v3 schemas are JSON Schema draft 4/7 plus x-kubernetes-* extensions, which draft 7 ignores
    return jsonschema.Draft7Validator(crd_schema(kind))


def crd_errors(obj: dict) -> list[str]:
    """Everything the real CRD schema of obj's kind (plus the unknown-field rule) finds wrong with obj."""
    kind = obj.get("kind", "InferenceService")
    assert obj.get("apiVersion") == f"serving.kserve.io/{CRDS[kind][1]}", obj.get("apiVersion")
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
              for e in _validator(kind).iter_errors(obj)]
    return errors + [f"{p}: unknown field" for p in unknown_fields(obj, crd_schema(kind))]


def spec(**changes):
    """The deploy section the tests deploy with (serving URI unless a test says otherwise)."""
    return dataclasses.replace(load_config().deploy, **{"namespace": NS, "timeout_s": 10, "image": IMAGE, **changes})


VARIANTS = {
    "defaults (v1, 1 GPU)": {},
    "v2 on CPU": {"protocol": "v2", "gpu": 0},
    "two GPUs": {"gpu": 2},
    "no canary": {"canary_steps": []},
    "autoscaling on CPU": {"min_replicas": 0, "max_replicas": 5, "scale_metric": "cpu", "scale_target": 70},
    "image override": {"image": "europe-docker.pkg.dev/p/r/platepipe-serving:1.2"},
    "service account": {"service_account": "gcs-reader"},
    "everything": {"protocol": "v2", "gpu": 1, "canary_steps": [25, 100], "image": "platepipe-serving:dev",
                   "service_account": "gcs-reader", "cpu_request": "500m", "memory_limit": "16Gi"},
}


@pytest.mark.parametrize("changes", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_manifest_variant_validates_against_the_crd(changes):
    s = spec(**changes)
    m = deploy.manifest(s, URI, canary=0 if s.canary_steps else None)
    assert crd_errors(m) == []
    assert yaml.safe_load(deploy.to_yaml(m)) == m  # the YAML of --dry-run is the same object
    model = m["spec"]["predictor"]["model"]
    assert m["apiVersion"] == "serving.kserve.io/v1beta1" and m["kind"] == "InferenceService"
    assert m["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false",  # the spelling that works
                                            **({"serving.kserve.io/enable-tag-routing": "true"} if s.canary_steps else {})}
    assert model["modelFormat"] == {"name": "platepipe", "version": "1"} and model["protocolVersion"] == s.protocol
    assert model["runtime"] == s.runtime == "platepipe-torchserve"  # ours, never KServe's TorchServe runtime
    assert model["storageUri"] == URI
    res = model["resources"]
    assert res["requests"]["cpu"] == s.cpu_request and res["limits"]["memory"] == s.memory_limit
    if s.gpu:
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == str(s.gpu)
    else:
        assert "nvidia.com/gpu" not in res["limits"] and "nvidia.com/gpu" not in res["requests"]
    assert "image" not in model  # the runtime carries the image
    assert m["spec"]["predictor"].get("serviceAccountName") == s.service_account
    assert m["spec"]["predictor"].get("canaryTrafficPercent") == (0 if s.canary_steps else None)
    predictor = m["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) == \
        (s.min_replicas, s.max_replicas, s.scale_metric, s.scale_target)


def test_the_validator_catches_bad_manifests():
    good = deploy.manifest(spec(), URI)
    assert crd_errors(good) == []

    def broken(edit) -> list[str]:
        m = copy.deepcopy(good)
        edit(m)
        return crd_errors(m)

    # wrong types
    assert any("canaryTrafficPercent" in e for e in broken(
        lambda m: m["spec"]["predictor"].__setitem__("canaryTrafficPercent", "10")))
    assert any("annotations.sidecar.istio.io/inject" in e for e in broken(
        lambda m: m["metadata"]["annotations"].__setitem__("sidecar.istio.io/inject", False)))
    assert any("limits.memory" in e for e in broken(
        lambda m: m["spec"]["predictor"]["model"]["resources"]["limits"].__setitem__("memory", "8 GB")))
    # a required field missing
    assert any("'name' is a required property" in e for e in broken(
        lambda m: m["spec"]["predictor"]["model"].__setitem__("modelFormat", {"version": "1"})))
    # unknown fields: the original's typo in a spec field, and a misspelt field name
    typo = broken(lambda m: m["spec"]["predictor"]["model"].__setitem__("isdecar.istio.is/inject", "false"))
    assert typo == ["spec.predictor.model.isdecar.istio.is/inject: unknown field"]
    assert broken(lambda m: m["spec"]["predictor"].__setitem__("serviceAcountName", "x")) == \
        ["spec.predictor.serviceAcountName: unknown field"]
    # ...which plain JSON Schema validation alone would let through (the CRD sets no additionalProperties)
    m = copy.deepcopy(good)
    m["spec"]["predictor"]["model"]["isdecar.istio.is/inject"] = "false"
    assert list(_validator().iter_errors(m)) == []
    # annotations are a free map: the typo there is legal, and does nothing (which is why it went unnoticed)
    assert broken(lambda m: m["metadata"]["annotations"].__setitem__("isdecar.istio.is/inject", "false")) == []


def test_the_schema_is_the_real_crd_and_its_extensions_are_ignored():
    schema = crd_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    text = json.dumps(schema)
    # x-kubernetes-* keywords are there and do not get in the way of validation
    assert '"x-kubernetes-int-or-string": true' in text and '"x-kubernetes-preserve-unknown-fields": true' in text
    limits = schema["properties"]["spec"]["properties"]["predictor"]["properties"]["model"]["properties"][
        "resources"]["properties"]["limits"]["additionalProperties"]
    assert limits.get("x-kubernetes-int-or-string") is True
    m = deploy.manifest(spec(), URI)
    m["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = 4  # int-or-string: an integer is fine too
    assert crd_errors(m) == []
    # preserve-unknown-fields is honoured (status is free at the top level)
    assert unknown_fields({"status": {"anything": 1}}, schema) == []


def test_the_stub_controller_writes_status_the_crd_accepts(tmp_path):
    with K8sStub(controller=ready(after_gets=2)) as stub:
        client = deploy.api_client(stub.kubeconfig(tmp_path / "kc"))
        deploy.deploy(spec(), URI, api_client=client, poll_s=0.01, log=lambda _: None)
        isvc = stub.get(NS, "platepipe")
        assert crd_errors(isvc) == []
        deploy.deploy(spec(), URI2, api_client=client, poll_s=0.01, log=lambda _: None)  # the canary's status
        isvc = stub.get(NS, "platepipe")
        assert crd_errors(isvc) == [] and isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
        deploy.deploy(spec(canary_steps=[]), URI, api_client=client, poll_s=0.01, log=lambda _: None)
        stub.controller = failing()
        with pytest.raises(DeployError):
            deploy.deploy(spec(), URI2, api_client=client, poll_s=0.01, log=lambda _: None)
        failed = [body for method, _, _, body in stub.calls("PUT")][0]
        assert crd_errors(failed) == []

def test_a_new_model_replacing_a_serving_one_goes_out_as_a_canary(tmp_path):
    """Serverless: the new revision comes up at 0% of traffic on its own tagged URL; ramp moves traffic in
    deploy.canary_steps with a check at each, and at 100 drops the canary share (rolled out)."""
    with K8sStub() as stub:
        client = deploy.api_client(stub.kubeconfig(tmp_path / "kc"))
        first = deploy.deploy(spec(), URI, api_client=client, poll_s=0.01, log=lambda _: None)
        assert first.created and not first.canary and first.mode == "Serverless"  # nothing to split traffic with
        second = deploy.deploy(spec(), URI2, api_client=client, poll_s=0.01, log=lambda _: None)
        assert second.canary and second.host == f"latest-platepipe-predictor.{NS}.example.com"
        traffic = stub.get(NS, "platepipe")["status"]["components"]["predictor"]["traffic"]
        assert sorted((t["tag"], t["percent"]) for t in traffic) == [("latest", 0), ("prev", 100)]
        shown = deploy.format_status(stub.get(NS, "platepipe"))
        assert "0% to platepipe-predictor-00002 (latest)" in shown and "100% to platepipe-predictor-00001 (prev)" in shown
        checked = []
        line = deploy.ramp(spec(), second.previous, lambda url, host: checked.append((host, _shares(stub))),
                           api_client=client, poll_s=0.01, log=lambda _: None)
        assert checked == [(f"platepipe.{NS}.example.com", {"latest": 10, "prev": 90}),
                           (f"platepipe.{NS}.example.com", {"latest": 100})]
        isvc = stub.get(NS, "platepipe")
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"] and line.startswith("rolled out")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == URI2


def test_a_canary_that_fails_a_check_gives_the_serving_model_its_traffic_back(tmp_path):
    with K8sStub() as stub:
        client = deploy.api_client(stub.kubeconfig(tmp_path / "kc"))
        deploy.deploy(spec(), URI, api_client=client, poll_s=0.01, log=lambda _: None)
        canary = deploy.deploy(spec(), URI2, api_client=client, poll_s=0.01, log=lambda _: None)

        def check(url, host):
            if _shares(stub).get("latest") == 10:
                raise RuntimeError("2 of 8 plates read wrong")

        with pytest.raises(DeployError, match=r"the canary failed at 10% of traffic \(2 of 8 plates read wrong\); "
                                              r"restored the previous spec"):
            deploy.ramp(spec(), canary.previous, check, api_client=client, poll_s=0.01, log=lambda _: None)
        isvc = stub.get(NS, "platepipe")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == URI
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_raw_deployment_replaces_without_a_canary_and_needs_an_hpa_metric(tmp_path):
    """No Knative in the cluster: KServe deploys RawDeployment, which has no canary; concurrency scaling is
    Knative's, so the default scale metric is refused with the fix before anything is created."""
    with K8sStub() as stub:
        stub.knative = False
        client = deploy.api_client(stub.kubeconfig(tmp_path / "kc"))
        with pytest.raises(DeployError, match="RawDeployment mode: set deploy.scale_metric to cpu or memory"):
            deploy.deploy(spec(), URI, api_client=client, poll_s=0.01, log=lambda _: None)
        assert stub.calls("POST") == []
        raw = spec(scale_metric="cpu", scale_target=70)
        deploy.deploy(raw, URI, api_client=client, poll_s=0.01, log=lambda _: None)
        again = deploy.deploy(raw, URI2, api_client=client, poll_s=0.01, log=lambda _: None)
        assert again.mode == "RawDeployment" and not again.canary
        assert "canaryTrafficPercent" not in stub.get(NS, "platepipe")["spec"]["predictor"]
        # deploy.mode set by hand wins over what the cluster says: here it asks for a canary the cluster cannot
        # route to, which is an error that puts the serving model back
        with pytest.raises(DeployError, match=r"no 'latest' URL .* restored the previous spec"):
            deploy.deploy(spec(mode="serverless", scale_metric="cpu"), URI, api_client=client, poll_s=0.01,
                          log=lambda _: None)
        assert stub.get(NS, "platepipe")["spec"]["predictor"]["model"]["storageUri"] == URI2


def _shares(stub) -> dict:
    traffic = stub.get(NS, "platepipe")["status"]["components"]["predictor"]["traffic"]
    return {t.get("tag", "latest"): t["percent"] for t in traffic}

# ---------------------------------------------------------------------------------------------- the cluster


@pytest.fixture(autouse=True)
def no_real_cluster(monkeypatch, tmp_path):
    """No kubeconfig of the machine's, no in-cluster service account, fast polling."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(deploy, "POLL_S", 0.02)


@pytest.fixture
def stub():
    with K8sStub(controller=ready(after_gets=3)) as server:
        yield server


@pytest.fixture
def kubeconfig(stub, tmp_path) -> str:
    return str(stub.kubeconfig(tmp_path / "kubeconfig", namespace=NS))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_deploy(capsys, kubeconfig, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "deploy", "--kubeconfig", kubeconfig, "-n", NS, "--set", f"deploy.image={IMAGE}", *extra)


def test_deploy_creates_the_service_and_waits_for_ready(stub, kubeconfig, capsys):
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI, "--timeout", "10")
    assert code == 0, err
    isvc = stub.get(NS, "platepipe")
    assert isvc["spec"] == deploy.manifest(spec(), URI)["spec"]
    assert isvc["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert isvc["metadata"]["generation"] == 1 and isvc["status"]["observedGeneration"] == 1
    # the real client's requests: a read, a create, then reads until Ready
    methods = [m for m, path, _, _ in stub.calls()]
    assert methods[:2] == ["GET", "POST"] and set(methods[2:]) == {"GET"} and len(methods) >= 5
    assert all(path.startswith(f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices")
               for _, path, _, _ in stub.calls())
    assert "created InferenceService ml/platepipe (generation 1, Serverless)" in out
    assert "Ready Unknown (RevisionMissing)" in out  # progress lines
    assert "is Ready (created, generation 1)" in out
    assert "URL          http://platepipe.ml.example.com" in out
    assert "Host header  platepipe.ml.example.com" in out
    assert "--isvc platepipe -n ml" in out
    runtime = stub.runtimes[("servingruntimes", NS, "platepipe-torchserve")]
    assert runtime["spec"]["containers"][0]["image"] == IMAGE
    assert "created ServingRuntime ml/platepipe-torchserve" in out


def test_update_replaces_the_spec_and_waits_for_the_new_generation(stub, kubeconfig, capsys):
    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    first = stub.get(NS, "platepipe")
    stub.requests.clear()
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI2, "--protocol", "v2")
    assert code == 0, err
    isvc = stub.get(NS, "platepipe")
    assert isvc["metadata"]["uid"] == first["metadata"]["uid"]  # the same object, updated in place
    assert isvc["metadata"]["generation"] == 2 and isvc["status"]["observedGeneration"] == 2
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == URI2 and model["protocolVersion"] == "v2"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # `platepipe deploy` runs no smoke test: no canary
    # PUT with the resourceVersion it read, so a concurrent change would be a conflict, not overwritten
    (put,) = stub.calls("PUT")
    assert put[3]["metadata"]["resourceVersion"] and put[3]["metadata"]["uid"] == first["metadata"]["uid"]
    # the first read after the update still said Ready (generation 1): that was not taken for the new one
    gets_after_put = [c for c in stub.calls()[stub.calls().index(put) + 1:] if c[0] == "GET"]
    assert len(gets_after_put) >= 3
    assert "updated InferenceService ml/platepipe (generation 2, Serverless)" in out
    assert "waiting for the controller to pick up generation 2" in out
    traffic = isvc["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic] == [100]
    code, out, _ = cli_deploy(capsys, kubeconfig, "--status")
    assert code == 0
    assert "100% to platepipe-predictor-00002 (latest)" in out


def test_an_update_that_meets_a_concurrent_change_reads_again_and_retries(stub, kubeconfig, capsys):
    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    stub.conflicts = 1
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI2)
    assert code == 0, err
    assert len(stub.calls("PUT")) == 2 and stub.get(NS, "platepipe")["spec"]["predictor"]["model"]["storageUri"] == URI2


def test_never_ready_on_create_times_out_and_deletes_it(stub, kubeconfig, capsys):
    stub.controller = never()
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI, "--timeout", "0.4")
    assert code == 2
    assert "did not become Ready within 0.4 s" in err and "RevisionMissing" in err
    assert "deleted it again (it was new)" in err and "Traceback" not in err
    assert stub.get(NS, "platepipe") is None and len(stub.calls("DELETE")) == 1
    assert len(err.strip().splitlines()) == 1


def test_never_ready_on_update_times_out_and_restores_the_previous_spec(stub, kubeconfig, capsys):
    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    before = stub.get(NS, "platepipe")
    stub.controller = never()
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI2, "--timeout", "0.4")
    assert code == 2 and "did not become Ready within 0.4 s" in err and "restored the previous spec" in err
    after = stub.get(NS, "platepipe")
    assert after["spec"] == before["spec"] and after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] == 3  # 2 was the failed one, 3 the old spec again
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert not stub.calls("DELETE")


@pytest.mark.parametrize("existing", [False, True], ids=["create", "update"])
def test_a_controller_failure_is_reported_and_rolled_back(stub, kubeconfig, capsys, existing):
    if existing:
        assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    before = stub.get(NS, "platepipe")
    stub.controller = failing("RevisionFailed", 'Revision "platepipe-predictor-00002" failed with message: '
                                                "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI2, "--timeout", "10")
    assert code == 2
    assert "the KServe controller reports Ready is False: RevisionFailed" in err
    assert "3 Insufficient nvidia.com/gpu" in err and "ModelLoadFailed" in err
    if existing:
        assert "restored the previous spec" in err and stub.get(NS, "platepipe")["spec"] == before["spec"]
    else:
        assert "deleted it again" in err and stub.get(NS, "platepipe") is None


def test_rbac_403_is_one_clear_sentence(stub, kubeconfig, capsys):
    stub.forbidden = True
    code, out, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # the pre-flight (SelfSubjectAccessReviews) names every missing verb before anything is written
    for verb in ("get", "create", "update", "delete"):
        assert f"{verb} inferenceservices.serving.kserve.io in namespace 'ml'" in err
    assert "create servingruntimes.serving.kserve.io in namespace 'ml'" in err and "k8s/rbac.yaml" in err
    assert not [c for c in stub.calls(every=True) if c[0] in ("POST", "PUT") and "selfsubject" not in c[1]]
    # a call the API server refuses is one sentence too (no pre-flight for --status/--delete)
    code, _, err = cli_deploy(capsys, kubeconfig, "--status")
    assert ("not allowed to get inferenceservices.serving.kserve.io in namespace 'ml' as "
            "system:serviceaccount:ml:deployer (403 Forbidden)") in err
    assert "Role with the verbs get, list, create, update, patch, delete on inferenceservices.serving.kserve.io" in err
    code, _, err = cli_deploy(capsys, kubeconfig, "--delete")
    assert code == 2 and "not allowed to delete inferenceservices.serving.kserve.io in namespace 'ml'" in err


def test_bad_credentials_missing_config_and_missing_kserve_are_clear(stub, kubeconfig, tmp_path, capsys, monkeypatch):
    wrong = str(stub.kubeconfig(tmp_path / "wrong", token="expired"))
    code, _, err = cli_deploy(capsys, wrong, "--status")
    assert code == 2 and "refused the credentials (401 Unauthorized)" in err and stub.url in err
    code, _, err = run_cli(capsys, "deploy", "--status")  # HOME without .kube, no KUBECONFIG, not in a pod
    assert code == 2 and "no Kubernetes configuration" in err and "--kubeconfig" in err
    code, _, err = cli_deploy(capsys, str(tmp_path / "absent"), "--status")
    assert code == 2 and "kubeconfig" in err and "not found" in err
    monkeypatch.setenv("KUBECONFIG", kubeconfig)  # the environment variable is honoured
    assert run_cli(capsys, "deploy", "-n", NS, "--storage-uri", URI, "--set", f"deploy.image={IMAGE}")[0] == 0
    stub.kserve_installed = False
    code, _, err = cli_deploy(capsys, kubeconfig, "--status")
    assert code == 2 and "does not know inferenceservices.serving.kserve.io" in err and "install KServe" in err
    with K8sStub() as gone:
        unreachable = str(gone.kubeconfig(tmp_path / "gone"))
        url = gone.url
    code, _, err = cli_deploy(capsys, unreachable, "--status")
    assert code == 2 and f"cannot reach the Kubernetes API server {url}: [Errno" in err
    assert len(err.strip().splitlines()) == 1


def test_dry_run_prints_valid_yaml_and_touches_nothing(stub, kubeconfig):
    out = subprocess.run([str(PLATEPIPE), "deploy", "--dry-run", "--storage-uri", URI, "--kubeconfig", kubeconfig,
                          "--name", "plates-v2", "-n", NS, "--protocol", "v2", "--set", "deploy.gpu=0",
                          "--set", "deploy.service_account=gcs-reader", "--image", IMAGE],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    runtime, m = yaml.safe_load_all(out.stdout)
    assert crd_errors(runtime) == [] and crd_errors(m) == []
    assert runtime["kind"] == "ServingRuntime" and runtime["metadata"]["name"] == m["spec"]["predictor"]["model"]["runtime"]
    assert runtime["spec"]["containers"][0]["image"] == IMAGE
    assert m["metadata"]["name"] == "plates-v2" and m["metadata"]["namespace"] == NS
    assert m["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert m["spec"]["predictor"]["serviceAccountName"] == "gcs-reader"
    assert "nvidia.com/gpu" not in out.stdout and "sidecar.istio.io/inject: 'false'" in out.stdout
    assert stub.calls(every=True) == []


def test_without_a_serving_image_nothing_is_created_and_the_fix_is_named(stub, kubeconfig, capsys):
    for extra in ([], ["--dry-run"], ["--set", "deploy.image=platepipe-serving:latest"]):
        code, out, err = run_cli(capsys, "deploy", "--kubeconfig", kubeconfig, "-n", NS, "--storage-uri", URI, *extra)
        assert code == 2 and out == "" and "Traceback" not in err, (extra, err)
        assert "make images REGISTRY=" in err and "deploy.image" in err, err
    assert stub.calls(every=True) == []
    # the pipeline's deploy step goes through the same function
    with pytest.raises(DeployError, match="deploy.image is not set"):
        deploy.deploy(dataclasses.replace(spec(), image=None), URI, api_client=deploy.api_client(kubeconfig))
    assert stub.calls(every=True) == []


def test_status_and_delete(stub, kubeconfig, capsys):
    code, _, err = cli_deploy(capsys, kubeconfig, "--status")
    assert code == 2 and "there is no InferenceService ml/platepipe" in err
    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    code, out, _ = cli_deploy(capsys, kubeconfig, "--status", "--set", "deploy.ingress_host=127.0.0.1",
                              "--set", "deploy.ingress_port=8080")
    assert code == 0
    assert "InferenceService ml/platepipe: Ready (generation 1, observed 1)" in out
    assert f"storage      {URI} (protocol v1)" in out
    assert "PredictorReady" in out and "IngressReady" in out
    assert "URL          http://127.0.0.1:8080" in out and "Host header  platepipe.ml.example.com" in out
    assert "100% to platepipe-predictor-00001 (latest)" in out
    stub.controller = never()
    deploy_obj = stub.get(NS, "platepipe")
    with stub.lock:  # a spec change the controller has not finished with: --status says so, exit 1
        stub.objects[(NS, "platepipe")]["metadata"]["generation"] = deploy_obj["metadata"]["generation"] + 1
    code, out, _ = cli_deploy(capsys, kubeconfig, "--status")
    assert code == 1 and "NOT Ready" in out
    code, out, _ = cli_deploy(capsys, kubeconfig, "--delete")
    assert code == 0 and "deleted InferenceService ml/platepipe" in out and stub.get(NS, "platepipe") is None
    code, out, _ = cli_deploy(capsys, kubeconfig, "--delete")
    assert code == 0 and "nothing to delete" in out
    code, _, err = cli_deploy(capsys, kubeconfig, "--status", "--delete")
    assert code == 2 and "not allowed with argument" in err


def test_deploy_needs_a_storage_uri_of_the_right_kind(kubeconfig, capsys):
    code, _, err = cli_deploy(capsys, kubeconfig)
    assert code == 2 and "deploy needs --storage-uri" in err
    code, _, err = cli_deploy(capsys, kubeconfig, "--storage-uri", "/tmp/layout", "--dry-run")
    assert code == 2 and "expected the archive folder as gs://BUCKET/PATH" in err
    code, _, err = cli_deploy(capsys, kubeconfig, "--storage-uri", URI, "--name", "Bad_Name", "--dry-run")
    assert code == 2 and "deploy.name: expected a Kubernetes name" in err and "'Bad_Name'" in err

# ---------------------------------------------------------------------------------------------- endpoints


def test_resolve_endpoint_with_and_without_ingress_override():
    status = {"url": "http://platepipe.ml.example.com", "address": {"url": "http://platepipe.ml.svc.cluster.local"}}
    assert deploy.resolve_endpoint(status) == ("http://platepipe.ml.example.com", "platepipe.ml.example.com")
    assert deploy.resolve_endpoint(status, "127.0.0.1", 8080) == ("http://127.0.0.1:8080", "platepipe.ml.example.com")
    assert deploy.resolve_endpoint(status, "34.1.2.3") == ("http://34.1.2.3", "platepipe.ml.example.com")
    assert deploy.resolve_endpoint(status, "https://gw.example.org", 8443) == \
        ("https://gw.example.org:8443", "platepipe.ml.example.com")
    # only the cluster-local address (no ingress): that one
    local = {"address": {"url": "http://platepipe.ml.svc.cluster.local"}}
    assert deploy.resolve_endpoint(local) == ("http://platepipe.ml.svc.cluster.local", "platepipe.ml.svc.cluster.local")
    # the whole object works too
    assert deploy.resolve_endpoint({"apiVersion": "serving.kserve.io/v1beta1", "status": status})[1] == \
        "platepipe.ml.example.com"
    with pytest.raises(DeployError, match="no URL yet"):
        deploy.resolve_endpoint({"conditions": []})


def test_endpoint_for_reads_the_service(stub, kubeconfig, capsys):
    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    client = deploy.api_client(kubeconfig)
    assert deploy.endpoint_for("platepipe", NS, api_client=client) == \
        ("http://platepipe.ml.example.com", "platepipe.ml.example.com")
    assert deploy.endpoint_for("platepipe", NS, kubeconfig=kubeconfig, ingress_host="localhost", ingress_port=8081) \
        == ("http://localhost:8081", "platepipe.ml.example.com")
    with pytest.raises(DeployError, match="there is no InferenceService ml/other"):
        deploy.endpoint_for("other", NS, api_client=client)


class _FakeKServe(BaseHTTPRequestHandler):
    """A KServe v1 predictor behind a gateway: records the Host header and path, answers no plates."""
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.headers["Host"], self.path))
        body = json.dumps({"predictions": [{"response": []}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_request_isvc_goes_through_the_ingress_with_the_host_header(stub, kubeconfig, tmp_path, capsys):
    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKServe)
    threading.Thread(target=gateway.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        image = tmp_path / "car.jpg"
        image.write_bytes(b"not really a jpeg, but small enough to be sent as it is")
        _FakeKServe.seen = []
        code, out, err = run_cli(capsys, "request", str(image), "--isvc", "platepipe", "-n", NS,
                                 "--kubeconfig", kubeconfig, "--set", "deploy.ingress_host=127.0.0.1",
                                 "--set", f"deploy.ingress_port={gateway.server_address[1]}")
        assert code == 0, out + err
        assert f"{image}: 0 plate(s)" in out
        # deploy.protocol (v1) by default with --isvc; the model name is TorchServe's, the Host the service's
        assert _FakeKServe.seen == [("platepipe.ml.example.com", "/v1/models/pipeline:predict")]
    finally:
        gateway.shutdown()
        gateway.server_close()
    code, _, err = run_cli(capsys, "request", str(image), "--isvc", "platepipe", "--url", "http://x")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run_cli(capsys, "request", str(image))
    assert code == 2 and "one of the arguments --url --isvc is required" in err
    code, out, err = run_cli(capsys, "request", str(image), "--isvc", "nope", "-n", NS, "--kubeconfig", kubeconfig)
    assert code == 2 and "there is no InferenceService ml/nope" in err

# ---------------------------------------------------------------------------------------------- the stub itself


def test_the_stub_speaks_patch_as_the_real_client_sends_it(stub, kubeconfig, capsys):
    """deploy.py replaces (PUT); the stub also takes both patch kinds the client sends, and refuses the
    strategic merge patch as the API server does for custom resources."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    assert cli_deploy(capsys, kubeconfig, "--storage-uri", URI)[0] == 0
    api = k8s.CustomObjectsApi(deploy.api_client(kubeconfig))
    args = ("serving.kserve.io", "v1beta1", NS, "inferenceservices", "platepipe")
    out = api.patch_namespaced_custom_object(*args, {"metadata": {"annotations": {"team": "vision"}},
                                                     "spec": {"predictor": {"minReplicas": 3}}})
    assert stub.calls("PATCH")[-1][2] == "application/merge-patch+json"
    assert out["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false", "team": "vision",
                                              "serving.kserve.io/enable-tag-routing": "true"}
    assert out["metadata"]["generation"] == 2 and out["spec"]["predictor"]["model"]["storageUri"] == URI

    def patch(body, content_type):  # CustomObjectsApi only sends merge patches; other kinds go through call_api
        return api.api_client.call_api(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", "PATCH",
            dict(zip(("group", "version", "namespace", "plural", "name"), args)), body=body,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True)

    out = patch([{"op": "replace", "path": "/spec/predictor/minReplicas", "value": 2},
                 {"op": "remove", "path": "/metadata/annotations/team"}], "application/json-patch+json")
    assert stub.calls("PATCH")[-1][2] == "application/json-patch+json"
    assert out["spec"]["predictor"]["minReplicas"] == 2 and "team" not in out["metadata"]["annotations"]
    with pytest.raises(ApiException) as exc:
        patch({"spec": {}}, "application/strategic-merge-patch+json")
    assert exc.value.status == 415
    with pytest.raises(ApiException) as exc:
        patch([{"op": "test", "path": "/spec/predictor/minReplicas", "value": 3}], "application/json-patch+json")
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:  # a stale resourceVersion is a conflict
        api.replace_namespaced_custom_object(*args, {**out, "metadata": {**out["metadata"], "resourceVersion": "1"}})
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"
    items = api.list_namespaced_custom_object(*args[:4])["items"]
    assert [i["metadata"]["name"] for i in items] == ["platepipe"]


@pytest.mark.parametrize("existing", [False, True], ids=["create", "update"])
def test_ctrl_c_while_waiting_rolls_back_then_stops(stub, kubeconfig, existing):
    if existing:
        deploy.deploy(spec(), URI, kubeconfig=kubeconfig, log=lambda line: None)
    before = stub.get(NS, "platepipe")
    stub.controller = never()
    lines = []

    def log(line):  # the user presses Ctrl-C when the first progress line appears
        lines.append(line)
        if "RevisionMissing" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deploy.deploy(spec(), URI2, kubeconfig=kubeconfig, log=log)
    if existing:
        assert stub.get(NS, "platepipe")["spec"] == before["spec"]
        assert "interrupted while waiting for ml/platepipe to become Ready: restored the previous spec" in lines[-1]
    else:
        assert stub.get(NS, "platepipe") is None
        assert lines[-1].endswith("deleted it again (it was new)")


def test_api_failure_while_waiting_says_so_and_tries_to_roll_back(stub, kubeconfig):
    stub.controller = never()

    def log(line):  # the deployer's rights are taken away mid-wait
        if "RevisionMissing" in line:
            stub.forbidden = True

    with pytest.raises(deploy.DeployError) as err:
        deploy.deploy(spec(), URI, kubeconfig=kubeconfig, log=log)
    message = str(err.value)
    assert "while waiting for ml/platepipe to become Ready" in message and "forbidden" in message.lower()
    assert "rolling back failed too" in message, message
    stub.forbidden = False
    assert stub.get(NS, "platepipe") is not None  # left as it is, and the message says so
