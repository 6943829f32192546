"""The Kubernetes manifests: rendered overlays validated offline against the Kubernetes schemas, and
checked against the service itself (settings, probes, ports, graceful shutdown)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import ServiceSettings

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
K8S_VERSION = "1.31"
CRDS = {"ServiceMonitor"}  # Prometheus Operator kinds: not in the Kubernetes schemas, checked by hand below


def render(overlay: str) -> dict[str, dict]:
    """`kubectl kustomize` of an overlay, by kind."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is absent")
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one resource of each kind"
    return by_kind


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def overlay(request) -> tuple[str, dict[str, dict]]:
    return request.param, render(request.param)


def test_base_files_validate_on_their_own():
    """Runs without kubectl too: every built-in resource of the base passes the strict schema."""
    for path in sorted((KUBERNETES / "base").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] not in CRDS and doc.get("apiVersion", "").startswith(("v1", "apps/", "autoscaling/", "policy/")):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rendered_resources_validate(overlay):
    _, resources = overlay
    assert set(resources) == {
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }
    for kind, doc in resources.items():
        if kind not in CRDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_can_fail(overlay):
    _, resources = overlay
    broken = yaml.safe_load(yaml.safe_dump(resources["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {"name": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _container(resources):
    return resources["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_settings_are_valid_service_settings(overlay):
    name, resources = overlay
    config = resources["ConfigMap"]
    assert _container(resources)["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    settings = ServiceSettings.from_env(config["data"])  # what the pods will read at start-up
    expected = {"cpu": ("cpu", "auto", False), "gpu": ("cuda", "torch", True)}[name]
    assert (settings.device, settings.engine, settings.compile) == expected


def test_the_cache_folder_is_a_volume_of_the_pod(overlay):
    """What auto measured and the compiled models survive a container restart: the cache is not in the container."""
    _, resources = overlay
    settings = ServiceSettings.from_env(resources["ConfigMap"]["data"])
    mounts = [
        m for m in _container(resources).get("volumeMounts", []) if settings.cache_folder.is_relative_to(m["mountPath"])
    ]
    assert mounts, f"the cache folder {settings.cache_folder} is on no volume of the container"
    volumes = {v["name"]: v for v in resources["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in mounts)  # per pod: another pod's choice may not fit its node


def test_probes_ports_and_graceful_shutdown(overlay):
    _, resources = overlay
    container = _container(resources)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]  # the Dockerfile's port
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = ServiceSettings.from_env(resources["ConfigMap"]["data"]).graceful_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + graceful + 5  # + the runner's quiet second, exit
    assert resources["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_selectors_reach_the_pods(overlay):
    _, resources = overlay
    pod_labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(resources["Deployment"]["spec"]["selector"]["matchLabels"])
    assert selects(resources["Service"]["spec"]["selector"])
    assert selects(resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", resources["Deployment"]["metadata"]["name"])
    monitor = resources["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service_labels = resources["Service"]["metadata"]["labels"]
    assert all(service_labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ports = {p["name"] for p in resources["Service"]["spec"]["ports"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")] and "http" in ports


def test_resources_and_gpu(overlay):
    name, resources = overlay
    limits = _container(resources)["resources"]["limits"]
    requests = _container(resources)["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
    assert ("nvidia.com/gpu" in limits) is (name == "gpu")
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == 1
        assert any(
            t["key"] == "nvidia.com/gpu" for t in resources["Deployment"]["spec"]["template"]["spec"]["tolerations"]
        )


def test_api_key_comes_from_an_optional_secret_never_from_the_manifests(overlay):
    _, resources = overlay
    assert "Secret" not in resources
    (env,) = [e for e in _container(resources)["env"] if e["name"] == "CLASSIFIER_API_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "image-classifier-api-key", "key": "api-key", "optional": True}
