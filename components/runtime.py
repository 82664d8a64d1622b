"""The KServe ServingRuntime that runs platepipe's serving image, and the cluster checks before a deploy.

    runtime_manifest(spec)            ServingRuntime (or ClusterServingRuntime) for spec.image
    ensure_runtime(spec, client)      create or update it (deploy.manage_runtime), or check the one a user keeps
    preflight(spec, client)           SelfSubjectAccessReview for every verb the deploy will use
    cluster_checks(spec, client)      what `platepipe doctor --cluster` reports: CRDs, runtime, RBAC, GPUs, storage

The runtime's one container is the image the Dockerfile builds: its entrypoint (serving/entrypoint.sh,
see serving/container.py) runs TorchServe on the layout KServe's storage initializer writes to /mnt/models,
answering v1, v2 and /predictions on port 8080. Readiness is the entrypoint's `ready` (every worker of the
model READY), not TorchServe's /ping. The InferenceService names the runtime (predictor.model.runtime) and
its model format, so KServe never picks its own TorchServe runtime (deprecated, kserve/kserve#4568).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from platepipe.components.deploy import GROUP, MANAGED_BY, MODEL_FORMAT, RBAC_VERBS, CustomObjects, DeployError
from platepipe.pipeline.config import DeployConfig, settings
from platepipe.serving.container import HTTP_PORT, METRICS_PORT

_log = logging.getLogger(__name__)

RUNTIME_VERSION = "v1alpha1"
KINDS = {"ServingRuntime": "servingruntimes", "ClusterServingRuntime": "clusterservingruntimes"}
ENTRYPOINT = "/usr/local/bin/platepipe-entrypoint"    # serving/entrypoint.sh in the image (the Dockerfile)
MODEL_DIR = "/mnt/models"                             # where KServe's storage initializer puts the storageUri
ARGS = [f"--model-store={MODEL_DIR}/model-store", f"--ts-config={MODEL_DIR}/config/config.properties"]
USER_ID = 1000                                        # model-server, the image's user
PLACEHOLDERS = ("platepipe:latest", "platepipe-serving:latest")  # local tags no cluster can pull


def usable_image(image: str | None, setting: str, build: str) -> str:
    """image, or DeployError naming the fix when it is unset or a local placeholder."""
    if not image or not image.strip():
        raise DeployError(f"{setting} is not set, so there is no image that can serve this model: {build}, and "
                          f"set {setting} (--set {setting}=REGISTRY/IMAGE:TAG)")
    if image.strip() in PLACEHOLDERS:
        raise DeployError(f"{setting} is {image!r}, a local placeholder no cluster can pull: {build}, and set "
                          f"{setting} to the pushed name (--set {setting}=REGISTRY/IMAGE:TAG)")
    return image.strip()


BUILD_SERVING = "build and push the serving image (`make images REGISTRY=...`, the Dockerfile)"


def runtime_manifest(spec: DeployConfig) -> dict:
    """The ServingRuntime (spec.runtime_kind) named spec.runtime, for spec.image."""
    image = usable_image(spec.image, "deploy.image", BUILD_SERVING)
    meta: dict[str, Any] = {"name": spec.runtime}
    if spec.runtime_kind == "ServingRuntime":
        meta["namespace"] = spec.namespace
    meta.update(labels=dict(MANAGED_BY), annotations={"serving.kserve.io/server-type": "torchserve"})
    container = {
        "name": "kserve-container",
        "image": image,
        "args": list(ARGS),
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {"exec": {"command": [ENTRYPOINT, "ready"]}, "initialDelaySeconds": 5,
                           "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": {"runAsUser": USER_ID, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "privileged": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    }
    return {
        "apiVersion": f"{GROUP}/{RUNTIME_VERSION}",
        "kind": spec.runtime_kind,
        "metadata": meta,
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(METRICS_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{**MODEL_FORMAT, "autoSelect": False}],
            "protocolVersions": ["v1", "v2"],
            "containers": [container],
        },
    }


def runtimes(spec: DeployConfig, client) -> CustomObjects:
    namespace = spec.namespace if spec.runtime_kind == "ServingRuntime" else None
    return CustomObjects(client, namespace, KINDS[spec.runtime_kind], RUNTIME_VERSION, spec.runtime_kind)


def _described(spec: DeployConfig) -> str:
    return (f"{spec.runtime_kind} {spec.namespace}/{spec.runtime}" if spec.runtime_kind == "ServingRuntime"
            else f"ClusterServingRuntime {spec.runtime}")


def check_runtime(obj: dict | None, spec: DeployConfig) -> str | None:
    """Why obj cannot serve the InferenceService spec describes (None: it can)."""
    what = _described(spec)
    if obj is None:
        return (f"there is no {what}: let platepipe create it (deploy.manage_runtime: true, with deploy.image), or "
                f"apply the one `platepipe deploy --dry-run` prints")
    body = obj.get("spec") or {}
    if body.get("disabled"):
        return f"{what} is disabled (spec.disabled: true): enable it"
    formats = {(f.get("name"), str(f.get("version", ""))) for f in body.get("supportedModelFormats") or []}
    if (MODEL_FORMAT["name"], MODEL_FORMAT["version"]) not in formats:
        return (f"{what} does not support the model format {MODEL_FORMAT['name']} version {MODEL_FORMAT['version']}: "
                f"replace it with the one `platepipe deploy --dry-run` prints")
    images = [c.get("image") for c in body.get("containers") or [] if c.get("name") == "kserve-container"]
    try:
        usable_image(images[0] if images else None, f"the image of {what}", BUILD_SERVING)
    except DeployError as exc:
        return str(exc)
    return None


def ensure_runtime(spec: DeployConfig, client) -> str:
    """Create or update the runtime (spec.manage_runtime), or check the one the user keeps; a sentence saying
    what was done. DeployError when it cannot serve the model."""
    objects = runtimes(spec, client)
    current = objects.get(spec.runtime)
    what = _described(spec)
    if not spec.manage_runtime:
        why = check_runtime(current, spec)
        if why:
            raise DeployError(why)
        return f"{what} is there (kept by you)"
    wanted = runtime_manifest(spec)
    if current is None:
        objects.create(wanted)
        return f"created {what}"
    if current.get("spec") == wanted["spec"]:
        return f"{what} is up to date"
    body = {k: v for k, v in current.items() if k != "status"}
    body["spec"] = wanted["spec"]
    body["metadata"] = {**current["metadata"], "labels": {**(current["metadata"].get("labels") or {}),
                                                          **wanted["metadata"]["labels"]}}
    body["metadata"].pop("managedFields", None)
    objects.replace(body)
    return f"updated {what}"


# ---------------------------------------------------------------------------------------------- access

@dataclass(frozen=True)
class Access:
    verb: str
    resource: str
    namespace: str | None   # None: cluster-scoped
    group: str = GROUP

    def __str__(self) -> str:
        where = f"in namespace {self.namespace!r}" if self.namespace is not None else "cluster-wide"
        return f"{self.verb} {self.resource}.{self.group} {where}" if self.group else f"{self.verb} {self.resource} {where}"


def needed_access(spec: DeployConfig) -> list[Access]:
    """Every verb `platepipe deploy` uses (delete: rolling back a new service that failed)."""
    wanted = [Access(verb, "inferenceservices", spec.namespace) for verb in ("get", "create", "update", "delete")]
    scope = spec.namespace if spec.runtime_kind == "ServingRuntime" else None
    verbs = ("get", "create", "update") if spec.manage_runtime else ("get",)
    return wanted + [Access(verb, KINDS[spec.runtime_kind], scope) for verb in verbs]


def allowed(client, access: Access) -> tuple[bool, str]:
    """(allowed, the API server's reason) from a SelfSubjectAccessReview."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    attrs = {"verb": access.verb, "group": access.group, "resource": access.resource}
    if access.namespace is not None:
        attrs["namespace"] = access.namespace
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}
    try:
        answer = k8s.AuthorizationV1Api(client).create_self_subject_access_review(body, _request_timeout=30)
    except ApiException as exc:
        raise DeployError(f"cannot ask the API server what this account may do ({exc.status} {exc.reason}): "
                          f"the account needs to create selfsubjectaccessreviews (every authenticated user may, "
                          f"unless the cluster changed that)") from None
    except OSError as exc:
        raise DeployError(f"cannot reach the Kubernetes API server: {exc}") from None
    status = answer.status
    return bool(status.allowed), (status.reason or status.evaluation_error or "")


def preflight(spec: DeployConfig, client) -> None:
    """DeployError naming every missing permission (and the manifest that grants them) before anything is
    created."""
    missing = [str(a) for a in needed_access(spec) if not allowed(client, a)[0]]
    if missing:
        raise DeployError(f"this account may not {'; '.join(missing)}: nothing was created. Apply k8s/rbac.yaml "
                          f"(a Role and RoleBinding for the account; change its namespace and service account to "
                          f"yours) or ask a cluster admin"
                          + ("; the ClusterServingRuntime itself is an admin's to apply (`platepipe deploy "
                             "--dry-run`)" if spec.runtime_kind == "ClusterServingRuntime" else ""))


def prepare(spec: DeployConfig, client, log: Callable[[str], None] = _log.info) -> None:
    """What a deploy does before it touches the InferenceService: a usable image, every permission it needs,
    and the runtime (created, updated or checked). DeployError, with nothing created, when one is missing."""
    if spec.manage_runtime:
        usable_image(spec.image, "deploy.image", BUILD_SERVING)
    preflight(spec, client)
    log(ensure_runtime(spec, client))


def rbac_manifests(namespace: str = "kubeflow-user", service_account: str = "default-editor") -> list[dict]:
    """The Role and RoleBinding that let service_account (the pipeline's: Kubeflow's default-editor in a
    profile namespace) run every deploy verb in namespace; k8s/rbac.yaml holds them for the defaults."""
    role = "platepipe-deployer"
    verbs = sorted({a.verb for a in needed_access(settings("deploy", namespace=namespace))} | set(RBAC_VERBS))
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": role, "namespace": namespace, "labels": dict(MANAGED_BY)},
         "rules": [{"apiGroups": [GROUP], "resources": ["inferenceservices", "servingruntimes"], "verbs": verbs}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": role, "namespace": namespace, "labels": dict(MANAGED_BY)},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]},
    ]


# ---------------------------------------------------------------------------------------------- doctor --cluster

@dataclass
class ClusterCheck:
    name: str
    ok: bool | None      # None: could not tell (no permission to look)
    detail: str
    fix: str = ""


def cluster_checks(spec: DeployConfig, client) -> list[ClusterCheck]:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    out: list[ClusterCheck] = []
    apis = k8s.ApisApi(client)
    try:
        groups = {g.name: [v.version for v in g.versions] for g in apis.get_api_versions(_request_timeout=30).groups}
    except (ApiException, OSError) as exc:
        return [ClusterCheck("API server", False, f"cannot list its API groups: {exc}",
                             "check --kubeconfig and the cluster's address")]
    kinds = {"inferenceservices": "v1beta1", "servingruntimes": RUNTIME_VERSION, "clusterservingruntimes": RUNTIME_VERSION}
    served = set()
    for version in sorted(set(kinds.values())):
        if version in groups.get(GROUP, []):
            try:
                resources = client.call_api(f"/apis/{GROUP}/{version}", "GET", response_type="object",
                                            auth_settings=["BearerToken"], _return_http_data_only=True,
                                            _request_timeout=30)
                served |= {(r["name"], version) for r in resources.get("resources", [])}
            except (ApiException, OSError):
                pass
    lacking = [f"{p}.{GROUP}/{v}" for p, v in kinds.items() if (p, v) not in served]
    out.append(ClusterCheck("KServe CRDs", not lacking, "missing " + ", ".join(lacking) if lacking else
                            "InferenceService v1beta1, ServingRuntime and ClusterServingRuntime v1alpha1",
                            "install KServe 0.21 (https://kserve.github.io/website/)" if lacking else ""))
    try:
        why = check_runtime(runtimes(spec, client).get(spec.runtime), spec)
        if why and spec.manage_runtime and "there is no" in why:
            out.append(ClusterCheck("serving runtime", None, f"{_described(spec)} not there yet",
                                    "`platepipe deploy` creates it (deploy.manage_runtime: true)"))
        else:
            out.append(ClusterCheck("serving runtime", why is None, why or f"{_described(spec)} serves "
                                    f"{MODEL_FORMAT['name']}", "" if why is None else "see the detail"))
    except DeployError as exc:
        out.append(ClusterCheck("serving runtime", None, str(exc)))
    try:
        missing = [str(a) for a in needed_access(spec) if not allowed(client, a)[0]]
        out.append(ClusterCheck("RBAC", not missing, "may not " + "; ".join(missing) if missing else
                                f"may deploy to {spec.namespace!r}", "apply k8s/rbac.yaml (namespace and service "
                                "account changed to yours)" if missing else ""))
    except DeployError as exc:
        out.append(ClusterCheck("RBAC", None, str(exc)))
    try:
        nodes = k8s.CoreV1Api(client).list_node(_request_timeout=30).items
        gpus = {n.metadata.name: int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) for n in nodes}
        total = sum(gpus.values())
        ok = total >= spec.gpu if spec.gpu else True
        out.append(ClusterCheck("GPU nodes", ok, f"{sum(1 for g in gpus.values() if g)} of {len(gpus)} nodes have "
                                f"nvidia.com/gpu ({total} in all; deploy.gpu asks {spec.gpu} per replica)",
                                "" if ok else "add a GPU node pool with the NVIDIA device plugin, or set deploy.gpu: 0"))
    except ApiException as exc:
        out.append(ClusterCheck("GPU nodes", None, f"cannot list nodes ({exc.status} {exc.reason})",
                                "ask an admin, or check the node pool in your cloud console"))
    account = spec.service_account or "default"
    try:
        sa = k8s.CoreV1Api(client).read_namespaced_service_account(account, spec.namespace, _request_timeout=30)
        notes = sa.metadata.annotations or {}
        identity = notes.get("iam.gke.io/gcp-service-account")
        secrets = [s.name for s in sa.secrets or []]
        if not identity and not secrets:  # platepipe upload writes to gs://
            out.append(ClusterCheck("storage service account", False, f"{spec.namespace}/{account} has neither a "
                                    f"Workload Identity annotation nor a secret, so the storage initializer reads "
                                    f"gs:// anonymously", "annotate it with iam.gke.io/gcp-service-account=GSA "
                                    "(Workload Identity) or attach a GCS key secret; set deploy.service_account"))
        else:
            out.append(ClusterCheck("storage service account", True, f"{spec.namespace}/{account}: "
                                    + (f"Workload Identity {identity}" if identity else f"secrets {secrets}")))
    except ApiException as exc:
        if exc.status == 404:
            out.append(ClusterCheck("storage service account", False, f"{spec.namespace}/{account} not found",
                                    "create it, or set deploy.service_account to one that reads the bucket"))
        else:
            out.append(ClusterCheck("storage service account", None, f"cannot read {spec.namespace}/{account} "
                                    f"({exc.status} {exc.reason})"))
    return out


def report(checks: list[ClusterCheck]) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "??  "}
    lines = []
    for c in checks:
        lines.append(f"{mark[c.ok]} {c.name:<24} {c.detail}")
        if c.fix and c.ok is not True:
            lines.append(f"     {'':<24} fix: {c.fix}")
    return "\n".join(lines)
