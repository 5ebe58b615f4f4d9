"""docs/deploy.md: every `yaml` block is a Kubernetes object that passes the 1.37 schemas (strict),
and the Deployment keeps the promises the page makes (probes, drain budget, read-only store)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.container.podman import REPO, unavailable

K8S_VERSION = "1.37.0"


def manifests() -> list[dict]:
    text = (REPO / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)
    return [doc for b in blocks for doc in yaml.safe_load_all(b) if doc]


def by_kind(kind: str) -> list[dict]:
    return [m for m in manifests() if m["kind"] == kind]


def test_manifests_pass_the_kubernetes_schemas():
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install kubernetes-validate; .ci/run does)")
    docs = manifests()
    assert {m["kind"] for m in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                         "PersistentVolumeClaim"}
    for m in docs:
        try:
            kubernetes_validate.validate(m, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{m['kind']}/{m['metadata']['name']}: {e.message} at {list(e.path)}")


def test_deployment_probes_drain_and_store():
    (dep,) = by_kind("Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "moderation"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    budget = pre_stop + float(env["MODERATION_DRAIN_DELAY_S"]) + float(env["MODERATION_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > budget, "the kubelet must not kill a pod that is still draining"
    assert float(env["MODERATION_POLL_INTERVAL_S"]) > 0, "replicas converge on a publish by polling the store"
    store = next(v for v in pod["volumes"] if v["name"] == "store")
    assert store["persistentVolumeClaim"]["readOnly"] is True
    assert any(m["mountPath"] == env["MODERATION_STORE_DIR"] and m["readOnly"] for m in c["volumeMounts"])
    (pvc,) = by_kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"] and pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"].startswith("moderation_queue_depth")
