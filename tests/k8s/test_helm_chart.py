"""The Helm chart, rendered by the real Helm engine under several value sets and checked object by object."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_helpers import CHART, KUBE_VERSION, check_config, parse_manifests, validate_strict

SGLANG = {
    "enabled": True,
    "modelPath": "Qwen/Qwen2.5-7B-Instruct",
    "servedModelName": "qwen2.5-7b",
    "tensorParallelSize": 2,
    "replicas": 2,
    "nodeSelector": {"gpu": "a100"},
}

CUSTOM_MODELS = {
    "modelList": [
        {
            "model_name": "claude-sonnet",
            "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5",
                "api_base": "https://api.anthropic.com",
                "api_key": "file:/etc/llm-sidecar/keys/anthropic",
                "timeout": 60,
                "rpm": 600,
            },
        },
        {
            "model_name": "gemini-flash",
            "litellm_params": {
                "model": "gemini/gemini-2.0-flash",
                "api_base": "https://generativelanguage.googleapis.com",
                "api_key": "file:/etc/llm-sidecar/keys/gemini",
                "order": 2,
            },
            "model_info": {"input_cost_per_token": 1.0e-7, "output_cost_per_token": 4.0e-7},
        },
    ],
    "routerSettings": {
        "routing_strategy": "latency-based-routing",
        "num_retries": 1,
        "fallbacks": [{"claude-sonnet": ["gemini-flash"]}],
    },
}
CUSTOM_KEYS = {
    "files": [
        {"name": "anthropic", "secretName": "llm-keys", "secretKey": "anthropic"},
        {"name": "gemini", "secretName": "llm-keys", "secretKey": "gemini", "optional": True},
    ]
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "example": {"example": {"enabled": True}},
    "sglang-jaeger": {"example": {"enabled": True}, "sglang": SGLANG, "jaeger": {"enabled": True}},
    "classic": {"example": {"enabled": True}, "sidecar": {"form": "classic"}},
    "custom-models": {"example": {"enabled": True}, "config": CUSTOM_MODELS, "providerKeys": CUSTOM_KEYS},
    "monitoring": {"example": {"enabled": True}, "monitoring": {"enabled": True}},
    "injector": {"injector": {"enabled": True}},
    "injector-cert-manager": {"injector": {"enabled": True, "tls": {"source": "cert-manager"}},
                              "sidecar": {"form": "classic"}},
    "network-policy": {"example": {"enabled": True}, "networkPolicy": {"enabled": True, "adminFrom": {
        "namespaces": ["monitoring", "observability"], "podLabels": {"app.kubernetes.io/name": "prometheus"}}}},
    "sglang-only": {
        "example": {"enabled": True},
        "sglang": SGLANG,
        "config": {"modelList": []},
        "providerKeys": {"files": []},
    },
}


def render(chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.render(values=values, name="demo", namespace="ai")
    return [
        obj for path, text in sorted(out.items()) if not path.endswith("NOTES.txt") for obj in parse_manifests(text)
    ]


def find(objects, kind: str, suffix: str = "") -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, f"expected one {kind} named *{suffix}, got {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def sidecar_of(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "llm-sidecar"]
    assert len(found) == 1
    return found[0]


def config_of(objects) -> dict[str, Any]:
    return yaml.safe_load(find(objects, "ConfigMap", "-config")["data"]["config.yaml"])


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request, chart):
    return request.param, render(chart, VALUE_SETS[request.param])


def test_every_object_is_valid_kubernetes(rendered):
    name, objects = rendered
    skipped = validate_strict(objects)
    if name == "monitoring":
        # Said out loud: the Prometheus Operator kinds have no schema in kubernetes-validate.
        assert sorted(skipped) == ["PodMonitor", "PrometheusRule"]
    elif name == "injector-cert-manager":
        assert sorted(skipped) == ["Certificate", "Certificate", "Issuer", "Issuer"]
    else:
        assert skipped == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_has_no_errors(helm, name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, kube_version=f"v{KUBE_VERSION}")
    errors = [m for m in report["messages"] if m["severity"] >= 3]
    assert report["errors"] == [] and errors == []


def test_rendered_config_passes_check_config(rendered, tmp_path):
    _, objects = rendered
    result = check_config(find(objects, "ConfigMap", "-config")["data"]["config.yaml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_form_is_a_native_sidecar(chart):
    objects = render(chart, VALUE_SETS["example"])
    deployment = find(objects, "Deployment", "-example")
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["llm-sidecar"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    sidecar = sidecar_of(deployment)
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][:2] == ["--config", "/etc/llm-sidecar/config.yaml"]
    assert sidecar["args"][2:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "4000",
        "--admin-host",
        "0.0.0.0",
        "--admin-port",
        "4001",
    ]
    assert sidecar["ports"] == [{"name": "sidecar-admin", "containerPort": 4001, "protocol": "TCP"}]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "sidecar-admin"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sidecar-admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "sidecar-admin"}
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] > 5


def test_sidecar_is_locked_down(chart):
    deployment = find(render(chart, VALUE_SETS["example"]), "Deployment", "-example")
    sidecar = sidecar_of(deployment)
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(sidecar["resources"]) == {"requests", "limits"}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert {"name": "TMPDIR", "value": "/tmp"} in sidecar["env"]


def test_provider_keys_are_files_not_env(chart):
    objects = render(chart, VALUE_SETS["custom-models"])
    deployment = find(objects, "Deployment", "-example")
    sidecar = sidecar_of(deployment)
    assert not [e for e in sidecar["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    keys = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "llm-sidecar-keys")
    items = {s["secret"]["items"][0]["path"]: s["secret"] for s in keys["projected"]["sources"]}
    assert items["anthropic"]["name"] == "llm-keys" and items["gemini"]["optional"] is True
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "llm-sidecar-keys")
    config = config_of(objects)
    for entry in config["model_list"]:
        key_file = entry["litellm_params"]["api_key"].removeprefix("file:")
        assert Path(key_file).parent == Path(mount["mountPath"])
        assert Path(key_file).name in items


def test_classic_form_is_a_second_container(chart):
    deployment = find(render(chart, VALUE_SETS["classic"]), "Deployment", "-example")
    spec = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["app", "llm-sidecar"]
    assert "restartPolicy" not in sidecar_of(deployment)


def test_custom_model_list_is_rendered_verbatim(chart):
    config = config_of(render(chart, VALUE_SETS["custom-models"]))
    assert config["model_list"] == CUSTOM_MODELS["modelList"]
    # Helm merges maps with the defaults: the chart's router_settings stay unless set to null.
    assert CUSTOM_MODELS["routerSettings"].items() <= config["router_settings"].items()
    assert "sidecar_settings" not in config


def test_config_change_rolls_the_pods(chart):
    def checksum(values):
        deployment = find(render(chart, values), "Deployment", "-example")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/llm-sidecar-config"]

    assert checksum(VALUE_SETS["example"]) == checksum(VALUE_SETS["example"])
    assert checksum(VALUE_SETS["example"]) != checksum(VALUE_SETS["custom-models"])


def test_prometheus_scrapes_the_admin_port(chart):
    template = find(render(chart, VALUE_SETS["example"]), "Deployment", "-example")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "4001"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert template["metadata"]["labels"]["llm-sidecar/enabled"] == "true"


def test_network_policy_admits_the_admin_port_only_from_named_namespaces(chart):
    objects = render(chart, VALUE_SETS["network-policy"])
    policy = find(objects, "NetworkPolicy", "-admin")["spec"]
    labels = find(objects, "Deployment", "-example")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()  # selects the pods with the sidecar
    admin, others = policy["ingress"]
    assert admin["ports"] == [{"protocol": "TCP", "port": 4001}]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in admin["from"]] \
        == ["monitoring", "observability"]
    assert all(peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
               for peer in admin["from"])
    assert "from" not in others  # the pod's other ports stay open to all: the app's traffic is not ours
    tcp = [(p["port"], p["endPort"]) for p in others["ports"] if p["protocol"] == "TCP"]
    assert tcp == [(1, 4000), (4002, 65535)]
    closed = render(chart, {**VALUE_SETS["network-policy"], "networkPolicy": {
        "enabled": True, "adminFrom": {"namespaces": []}, "allowOtherPorts": False}})
    assert not find(closed, "NetworkPolicy", "-admin")["spec"].get("ingress")  # nothing admitted but the node


def test_sglang_deployment_and_sidecar_entry(chart):
    objects = render(chart, VALUE_SETS["sglang-jaeger"])
    deployment = find(objects, "Deployment", "-sglang")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("lmsysorg/sglang:")
    argv = container["command"] + container["args"]
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--model-path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert pairs["--tp"] == "2" and pairs["--port"] == "30000" and pairs["--host"] == "0.0.0.0"
    assert "--enable-metrics" in argv
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    assert pod["nodeSelector"] == {"gpu": "a100"} and pod["tolerations"]
    assert {v["name"] for v in pod["volumes"]} >= {"model-cache", "dshm"}
    assert deployment["spec"]["replicas"] == 2

    services = {s["metadata"]["name"]: s["spec"] for s in objects if s["kind"] == "Service"}
    assert services["demo-llm-sidecar-sglang"]["type"] == "ClusterIP"
    assert services["demo-llm-sidecar-sglang-headless"]["clusterIP"] == "None"
    pdb = find(objects, "PodDisruptionBudget", "-sglang")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    entries = {e["model_name"]: e["litellm_params"] for e in config_of(objects)["model_list"]}
    assert entries["qwen2.5-7b"]["model"] == "sglang/qwen2.5-7b"
    # every replica's address from the headless Service: the sidecars route among them (prefix- and load-aware)
    assert entries["qwen2.5-7b"]["api_base"] == "http://demo-llm-sidecar-sglang-headless:30000/v1"
    assert entries["qwen2.5-7b"]["replicas"] == "dns"
    assert "gpt-4o-mini" in entries
    from sidecar import config as sidecar_config  # the sidecar reads it: a pool discovered through DNS

    pool = next(d for d in sidecar_config.parse(config_of(objects), resolve_secrets=False).deployments
                if d.provider == "sglang")
    assert pool.replicas is not None and pool.replicas.dns
    through_service = render(chart, {**VALUE_SETS["sglang-jaeger"],
                                     "sglang": {**SGLANG, "replicaRouting": False}})
    entries = {e["model_name"]: e["litellm_params"] for e in config_of(through_service)["model_list"]}
    assert entries["qwen2.5-7b"]["api_base"] == "http://demo-llm-sidecar-sglang:30000/v1"
    assert "replicas" not in entries["qwen2.5-7b"]


def test_jaeger_receives_the_sidecars_traces(chart):
    objects = render(chart, VALUE_SETS["sglang-jaeger"])
    env = {e["name"]: e.get("value") for e in sidecar_of(find(objects, "Deployment", "-example"))["env"]}
    service = find(objects, "Service", "-jaeger")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{service['metadata']['name']}:4317"
    assert {p["port"] for p in service["spec"]["ports"]} >= {4317, 4318}
    assert find(objects, "Deployment", "-jaeger")["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "jaegertracing/all-in-one:"
    )


def test_monitoring_objects_and_metric_contract(chart):
    objects = render(chart, VALUE_SETS["monitoring"])
    pod_monitor = find(objects, "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "sidecar-admin"
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"llm-sidecar/enabled": "true"}
    rules = find(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r["expr"] for r in rules}
    assert set(alerts) == {
        "LLMSidecarHighErrorRate",
        "LLMSidecarHighLatency",
        "LLMSidecarSustainedFallbacks",
        "LLMSidecarBreakerOpen",
        "LLMSidecarProviderKeyRejected",
        "LLMSidecarBudgetNearLimit",
    }
    assert "> 0.05" in alerts["LLMSidecarHighErrorRate"] and "> 10" in alerts["LLMSidecarHighLatency"]
    assert 'llm_sidecar_failed_attempts_total{error_class="auth"}' in alerts["LLMSidecarProviderKeyRejected"]
    dashboard = json.loads(find(objects, "ConfigMap", "-dashboard")["data"]["llm-sidecar.json"])
    used = set(re.findall(r"llm_sidecar_[a-z_]+", " ".join(alerts.values()) + json.dumps(dashboard)))
    readme = (CHART / "README.md").read_text()
    missing = sorted(m for m in used if m.removesuffix("_bucket") not in readme)
    assert not missing, f"metrics used by alerts/dashboard but not in the chart README's contract: {missing}"


def metrics_used_by_the_chart(chart) -> set[str]:
    objects = render(chart, VALUE_SETS["monitoring"])
    rules = find(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    text = " ".join(r["expr"] for r in rules) + find(objects, "ConfigMap", "-dashboard")["data"]["llm-sidecar.json"]
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"llm_sidecar_[a-z_]+", text)}


def test_sidecar_emits_the_metrics_the_chart_uses(chart):
    """The other half of the metric contract: the sidecar's code names every series the alerts use.

    Read from the source, not a running process, so it holds for series that appear only after an event
    (a fallback, an open breaker). Names still missing are reported as an expected failure.
    """
    source = " ".join(p.read_text() for p in (CHART.parents[1] / "sidecar").rglob("*.py"))
    emitted = set(re.findall(r"llm_sidecar_[a-z_]+", source))
    not_built = {"llm_sidecar_budget_used_ratio"}  # budgets are not built yet (a later issue)
    missing = sorted(metrics_used_by_the_chart(chart) - emitted - not_built)
    if missing:
        pytest.xfail(f"the sidecar does not emit these contract metrics yet: {missing}")


def test_defaults_render_only_the_config(chart):
    assert [o["kind"] for o in render(chart, {})] == ["ConfigMap"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"example": {"replicas": -1}}, "/example/replicas"),
        ({"sglang": {"enabled": True, "modelPath": "m", "replicas": -2}}, "/sglang/replicas"),
        ({"sglang": {"enabled": True}}, "/sglang/modelPath"),
        ({"sidecar": {"form": "sidecar"}}, "'native', 'classic'"),
        ({"sidecar": {"port": 70000}}, "/sidecar/port"),
        (
            {"config": {"modelList": [{"model_name": "x", "litellm_params": {"model": "gpt-4o"}}]}},
            "/config/modelList/0/litellm_params/model",
        ),
        ({"replicaCount": 3}, "'replicaCount' not allowed"),
    ],
)
def test_bad_values_are_rejected_clearly(helm, chart, values, message):
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values=values, name="demo")
    assert message in str(caught.value)


def test_template_guard_explains_an_empty_model_list(helm, chart):
    with pytest.raises(helm.HelmError, match="needs at least one deployment"):
        chart.render(values={"config": {"modelList": []}}, name="demo")


def test_application_chart_includes_the_sidecar(helm, tmp_path):
    """An app chart depending on llm-sidecar adds it with the documented named templates."""
    app = tmp_path / "my-app"
    (app / "templates").mkdir(parents=True)
    shutil.copytree(CHART, app / "charts" / "llm-sidecar")
    (app / "Chart.yaml").write_text(
        "apiVersion: v2\nname: my-app\nversion: 1.0.0\ndependencies:\n  - name: llm-sidecar\n    version: 0.1.0\n"
    )
    (app / "values.yaml").write_text("llm-sidecar:\n  sidecar:\n    form: native\n")
    (app / "templates" / "deployment.yaml").write_text(APP_DEPLOYMENT)
    with helm.Chart.load(str(app)) as parent:
        objects = render(parent, {})
    validate_strict(objects)
    deployment = find(objects, "Deployment", "my-app")
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["llm-sidecar"]
    # The image tag defaults to the llm-sidecar subchart's appVersion, not the application's.
    assert spec["initContainers"][0]["image"].endswith(":0.1.0")
    config_volume = next(v for v in spec["volumes"] if v["name"] == "llm-sidecar-config")
    assert config_volume["configMap"]["name"] == find(objects, "ConfigMap", "-config")["metadata"]["name"]


APP_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-app
spec:
  selector:
    matchLabels: {app: my-app}
  template:
    metadata:
      labels:
        app: my-app
        {{- include "llm-sidecar.podLabels" . | nindent 8 }}
      annotations:
        {{- include "llm-sidecar.podAnnotations" . | nindent 8 }}
    spec:
      terminationGracePeriodSeconds: {{ include "llm-sidecar.terminationGracePeriodSeconds" . }}
      initContainers:
        {{- include "llm-sidecar.initContainers" . | nindent 8 }}
      containers:
        - name: app
          image: busybox:1.36
          env:
            - name: OPENAI_BASE_URL
              value: http://127.0.0.1:4000/v1
        {{- include "llm-sidecar.containers" . | nindent 8 }}
      volumes:
        {{- include "llm-sidecar.volumes" . | nindent 8 }}
"""
