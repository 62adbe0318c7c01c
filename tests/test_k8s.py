"""Kubernetes manifests and monitoring config, checked by the real tools: kubectl kustomize,
kubernetes-validate (the Kubernetes schemas) and promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import queued_job

from service.retraining.backends import KubernetesBackend
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
MONITORING = K8S / "components" / "monitoring"
OVERLAYS = ["cpu", "gpu", "cpu-postgres"]
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule"}  # prometheus-operator CRDs: no schema to check against


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (make setup installs it)")
    return path


def render(overlay: str) -> list[dict]:
    out = subprocess.run([need("kubectl"), "kustomize", str(K8S / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay):
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim",
            "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap", "Secret"} <= kinds  # fmt: skip
    assert kinds >= CUSTOM_RESOURCES
    for doc in docs:
        if doc["kind"] not in CUSTOM_RESOURCES:
            validate(doc)
    # every ConfigMap / Secret / PVC / ServiceAccount a pod refers to is part of the render
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "imgclf")
    pod = deployment["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
        if "persistentVolumeClaim" in volume:
            assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
    assert ("ServiceAccount", pod["serviceAccountName"]) in names
    for ref in pod["containers"][0]["envFrom"]:
        assert ("ConfigMap", ref["configMapRef"]["name"]) in names
    for env in pod["containers"][0]["env"]:
        if "secretKeyRef" in env.get("valueFrom", {}):
            assert ("Secret", env["valueFrom"]["secretKeyRef"]["name"]) in names


def test_deployment_probes_security_and_ports():
    docs = render("cpu")
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    server, grpc_probe = pod["containers"]
    assert server["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert grpc_probe["readinessProbe"]["grpc"]["port"] == 8001  # the gRPC health probe gates readiness too
    assert server["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert {p["containerPort"] for p in server["ports"]} == {3000, 8001}
    assert pod["securityContext"]["runAsNonRoot"] and server["securityContext"]["readOnlyRootFilesystem"]
    assert server["securityContext"]["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in server["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/home/bentoml/bentoml", "/data"} <= writable
    pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert all(p["spec"]["accessModes"] == ["ReadWriteMany"] for p in pvcs)
    role = next(d for d in docs if d["kind"] == "Role")
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])


def test_gpu_overlay_asks_for_gpus():
    docs = render("gpu")
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    template = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("imgclf-retrain"))
    job = yaml.safe_load(template["data"]["retrain-job.yaml"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "torchrun" and container["resources"]["limits"]["nvidia.com/gpu"] >= 1


@pytest.mark.parametrize("template", [K8S / "base" / "retrain-job.yaml", K8S / "overlays" / "gpu" / "retrain-job.yaml"])
def test_training_jobs_the_service_creates_validate(template):
    backend = KubernetesBackend(Settings(k8s_job_template=template), registry=None, api=object())
    validate(backend.manifest(queued_job("0123abcd")))


def test_alert_rules_and_scrape_config_pass_promtool(tmp_path):
    promtool = need("promtool")
    subprocess.run([promtool, "check", "rules", str(MONITORING / "alerts.yml")], check=True, capture_output=True)
    subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")], check=True, capture_output=True)


def test_prometheus_rule_resource_holds_the_same_rules():
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((MONITORING / "alerts.yml").read_text())


def test_the_ingress_holds_the_service_limits():
    """The proxy in front enforces what the workers do (README, Reliability), so slow clients stop there."""
    from service.settings import Settings

    [ingress] = [d for d in render("cpu") if d["kind"] == "Ingress"]
    validate(ingress)
    notes = ingress["metadata"]["annotations"]
    body_mib = Settings().max_request_bytes // 1024**2
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{body_mib}m"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "imgclf", "port": {"name": "http"}}


def test_the_settings_file_is_valid_settings(monkeypatch):
    """Every line of the ConfigMap's settings parses, and production rolls challengers out through shadow and
    canary rather than promoting them at once."""
    for line in (K8S / "base" / "settings.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("IMGCLF_ADMIN_TOKEN_FILE")  # a mounted Secret in the pod
    settings = Settings()
    assert settings.rollout.stages == ["shadow", "canary"] and settings.retrain_backend == "kubernetes"
