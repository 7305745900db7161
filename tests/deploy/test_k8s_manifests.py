"""Kubernetes and KServe manifests: schema-valid core resources, and consistent with each other.

Core resources are validated offline against the Kubernetes OpenAPI schemas
(``kubernetes-validate``, strict: unknown fields fail). KServe and Prometheus
Operator resources have no schema there: they are parsed, and their fields
that matter (ports, protocol, image, model formats) are checked here, with the
ServingRuntime's container validated as a core Container.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.refs import ADAPTER_CONFIG, K8S, KSERVE, load_yaml_documents, tool

#: Oldest and newest Kubernetes the manifests are checked against (native sidecars,
#: appProtocol kubernetes.io/h2c and PDB unhealthyPodEvictionPolicy need >= 1.29).
K8S_VERSIONS = ("1.29.0", "1.37.0")
CORE_FILES = sorted(
    p for p in [*K8S.glob("*.yaml"), *(K8S / "monitoring").glob("*.yaml")] if p.name != "kustomization.yaml"
)
CUSTOM_KINDS = {"ServingRuntime", "InferenceService", "PodMonitor", "Kustomization"}


def documents(*paths: Path) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in load_yaml_documents(path)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in documents(*K8S.glob("*.yaml"), *KSERVE.glob("*.yaml"))
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kubernetes_validate.validate(doc, version, strict=True)


DEPLOYMENT = one("Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"] if "value" in e}
RUNTIME = one("ServingRuntime")
(RUNTIME_CONTAINER,) = RUNTIME["spec"]["containers"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_manifests_are_schema_valid(path: Path, version: str) -> None:
    docs = [d for d in load_yaml_documents(path) if d["kind"] not in CUSTOM_KINDS]
    for doc in docs:
        validate(doc, version)


def test_validation_rejects_a_broken_deployment() -> None:
    """The validator is really strict: a port given by name and an unknown field both fail."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    broken = copy.deepcopy(DEPLOYMENT)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    unknown = copy.deepcopy(DEPLOYMENT)
    unknown["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSIONS[-1], strict=True)


def test_kustomize_renders_every_resource() -> None:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (kubectl kustomize renders the kustomization)")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        ["Namespace", "PersistentVolumeClaim", "Deployment", "Service", "Service", "HorizontalPodAutoscaler",
         "PodDisruptionBudget"]
    )  # fmt: skip
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "fusionserve"
        validate(doc, K8S_VERSIONS[-1])


def shutdown_budget(env: dict[str, str]) -> float:
    """The longest the server takes after SIGTERM: grace + drain + close + 1 s (service/app.py)."""
    from fusionserve.service.config import Settings

    defaults = Settings()
    grace = float(env.get("FUSIONSERVE_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s))
    drain = float(env.get("FUSIONSERVE_DRAIN_TIMEOUT_S", defaults.drain_timeout_s))
    close = float(env.get("FUSIONSERVE_SHUTDOWN_CLOSE_S", defaults.shutdown_close_s))
    return grace + drain + close + 1.0


def test_shutdown_budget_covers_prestop_and_drain() -> None:
    pre_stop = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = float(pre_stop[1]) + shutdown_budget(ENV)
    print(f"preStop + grace + drain + close + 1 = {budget} s < {POD['terminationGracePeriodSeconds']} s")
    assert POD["terminationGracePeriodSeconds"] > budget


def test_deployment_runs_the_image_as_built() -> None:
    assert CONTAINER["args"] == ["serve", "--model-repository", "/models"]
    assert ENV["FUSIONSERVE_MODEL_REPOSITORY"] == "/models"
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert ports == {"http": int(ENV["FUSIONSERVE_HTTP_PORT"]), "grpc": int(ENV["FUSIONSERVE_GRPC_PORT"])}
    assert CONTAINER["resources"]["limits"]["nvidia.com/gpu"] == "1"
    security = POD["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001  # the image's USER
    (models,) = [m for m in CONTAINER["volumeMounts"] if m["mountPath"] == "/models"]
    assert models["readOnly"] is True
    (volume,) = [v for v in POD["volumes"] if v["name"] == models["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == one("PersistentVolumeClaim")["metadata"]["name"]


def test_probes_use_the_server_health_endpoints() -> None:
    """``fusionserve healthcheck`` in the container: /health/live or /health/ready over HTTP,
    HTTPS or mTLS as the server is configured (an httpGet probe breaks once TLS is on)."""
    assert CONTAINER["startupProbe"]["exec"]["command"] == ["fusionserve", "healthcheck", "--live"]
    assert CONTAINER["livenessProbe"]["exec"]["command"] == ["fusionserve", "healthcheck", "--live"]
    assert CONTAINER["readinessProbe"]["exec"]["command"] == ["fusionserve", "healthcheck"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert CONTAINER[probe]["timeoutSeconds"] >= 5  # a Python process start fits


def test_tokens_come_from_a_secret_and_the_management_plane_is_closed() -> None:
    env = {e["name"]: e for e in CONTAINER["env"]}
    for name, key in (("FUSIONSERVE_API_TOKEN", "api-token"), ("FUSIONSERVE_ADMIN_TOKEN", "admin-token")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("fusionserve-tokens", key)
        assert not ref.get("optional", False)  # no Secret: the pod waits rather than serve open
    assert env["FUSIONSERVE_MODEL_CONTROL"]["value"] == "none"


@pytest.mark.parametrize("name", ["fusionserve", "fusionserve-headless"])
def test_services_select_the_pods_and_name_their_protocols(name: str) -> None:
    service = one("Service", name)
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["appProtocol"] == "http" and ports["http"]["targetPort"] == "http"
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c" and ports["grpc"]["targetPort"] == "grpc"
    if name.endswith("headless"):
        assert service["spec"]["clusterIP"] == "None"


def test_pdb_covers_the_pods_and_leaves_room_to_move() -> None:
    pdb = one("PodDisruptionBudget")
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < one("HorizontalPodAutoscaler")["spec"]["minReplicas"]


def test_hpa_scales_on_serving_metrics_the_adapter_serves_with_cpu_fallback() -> None:
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fusionserve",
    }
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods_metrics == {"fusionserve_inflight_requests", "fusionserve_queue_depth"}
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"]["name"] == "cpu"
    adapter = yaml.safe_load(load_yaml_documents(ADAPTER_CONFIG)[0]["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    assert pods_metrics <= served
    for rule in adapter["rules"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert re.fullmatch(r"\^?" + re.escape(rule["name"]["as"]) + r"\$?", rule["name"]["matches"])
        assert rule["seriesQuery"].startswith(rule["name"]["as"] + "{")


def test_serving_runtime_speaks_v2_over_rest_and_grpc() -> None:
    assert RUNTIME["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = RUNTIME["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    assert {"onnx", "pytorch"} <= formats
    assert RUNTIME_CONTAINER["name"] == "kserve-container"
    args = RUNTIME_CONTAINER["args"]
    assert args[0] == "serve"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--model-repository"] == "/mnt/models"  # where KServe's storage initializer puts storageUri
    http_port = int(flags["--http-port"])
    (port,) = RUNTIME_CONTAINER["ports"]
    assert port["containerPort"] == http_port == 8080
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == http_port
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert RUNTIME_CONTAINER["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": http_port}


def test_serving_runtime_uses_the_same_image_as_the_deployment() -> None:
    assert RUNTIME_CONTAINER["image"] == CONTAINER["image"]
    for kustomization in (K8S / "kustomization.yaml", KSERVE / "kustomization.yaml"):
        (image,) = yaml.safe_load(kustomization.read_text())["images"]
        assert f"{image['name']}:{image['newTag']}" == CONTAINER["image"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_serving_runtime_container_is_a_valid_core_container(version: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {"containers": [RUNTIME_CONTAINER]},
    }
    validate(pod, version)


@pytest.mark.parametrize(("name", "protocol"), [("digits-fusion", "v2"), ("digits-fusion-grpc", "grpc-v2")])
def test_inference_services_use_the_runtime(name: str, protocol: str) -> None:
    isvc = one("InferenceService", name)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    assert model["protocolVersion"] == protocol in RUNTIME["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert model["storageUri"]
    grace = isvc["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert grace > shutdown_budget({e["name"]: e["value"] for e in RUNTIME_CONTAINER["env"] if "value" in e})
    if protocol == "grpc-v2":
        flags = dict(zip(RUNTIME_CONTAINER["args"][1::2], RUNTIME_CONTAINER["args"][2::2], strict=True))
        (port,) = model["ports"]
        assert port == {"name": "h2c", "containerPort": int(flags["--grpc-port"]), "protocol": "TCP"}
    else:
        assert "ports" not in model
