"""The plain manifests under k8s/, built with kubectl's kustomize and validated like the chart."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml
from k8s_helpers import K8S, check_config, parse_manifests, validate_strict

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not on PATH")

TARGETS = ["k8s", "k8s/base", "k8s/overlays/remote-only", "k8s/overlays/with-sglang"]


def build(target: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S.parent / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return parse_manifests(result.stdout)


@pytest.fixture(scope="module", params=TARGETS)
def built(request):
    return request.param, build(request.param)


def the(objects, kind: str, name: str = "") -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (generated ConfigMaps carry a hash suffix)."""

    def matches(actual: str) -> bool:
        return actual == name or (kind == "ConfigMap" and actual.startswith(name + "-"))

    found = [o for o in objects if o["kind"] == kind and matches(o["metadata"]["name"])]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


def test_every_object_is_valid_kubernetes(built):
    _, objects = built
    assert validate_strict(objects) == []


def test_config_passes_check_config(built, tmp_path):
    _, objects = built
    result = check_config(the(objects, "ConfigMap", "llm-sidecar-config")["data"]["config.yaml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_sidecar_reads_the_generated_config(built):
    _, objects = built
    config_map = the(objects, "ConfigMap", "llm-sidecar-config")
    spec = the(objects, "Deployment", "llm-app")["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][2:] == [
        "--host", "127.0.0.1", "--port", "4000", "--admin-host", "0.0.0.0", "--admin-port", "4001",
    ]  # fmt: skip
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The generated name carries a content hash, so a config change rolls the pods.
    assert volumes["llm-sidecar-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_map["metadata"]["name"] != "llm-sidecar-config"
    key_files = {s["secret"]["items"][0]["path"] for s in volumes["llm-sidecar-keys"]["projected"]["sources"]}
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    for entry in config["model_list"]:
        key = entry["litellm_params"].get("api_key")
        if key:
            assert key.removeprefix("file:/etc/llm-sidecar/keys/") in key_files


def test_with_sglang_points_the_sidecar_at_its_replicas():
    objects = build("k8s/overlays/with-sglang")
    service = the(objects, "Service", "sglang")
    assert service["spec"]["type"] == "ClusterIP"
    assert the(objects, "Service", "sglang-headless")["spec"]["clusterIP"] == "None"
    the(objects, "PodDisruptionBudget", "sglang")
    container = the(objects, "Deployment", "sglang")["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-metrics" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    config = yaml.safe_load(the(objects, "ConfigMap", "llm-sidecar-config")["data"]["config.yaml"])
    sglang = [e["litellm_params"] for e in config["model_list"] if e["litellm_params"]["model"].startswith("sglang/")]
    # every replica through the headless Service: the sidecar routes among them
    assert [(p["api_base"], p["replicas"]) for p in sglang] == [("http://sglang-headless:30000/v1", "dns")]


def test_k8s_root_builds_the_remote_only_variant():
    assert build("k8s") == build("k8s/overlays/remote-only")
