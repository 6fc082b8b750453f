"""The sidecar injector against what the chart renders: AdmissionReview v1 requests for pods made from real
Deployment, StatefulSet, Job and bare Pod specs; the JSON Patch applied with a JSON Patch library and the
pod validated strictly; the webhook served over TLS with the chart's certificate and key, trusted only
through the caBundle of the chart's MutatingWebhookConfiguration; malformed reviews refused clearly."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jsonpatch
import pytest
import yaml
from k8s_helpers import REPO, parse_manifests, validate_strict
from test_helm_chart import find, render

from sidecar.injector import review
from sidecar.injector.template import Template, parse_template

NAMESPACE = "ai"
VALUES = {"injector": {"enabled": True}}
APP = {"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"]}


@pytest.fixture(scope="module")
def objects(chart) -> list[dict[str, Any]]:
    return render(chart, VALUES)


@pytest.fixture(scope="module")
def template(objects) -> Template:
    return parse_template(find(objects, "ConfigMap", "-injector")["data"]["template.yaml"])


def pod_of(workload: dict[str, Any]) -> dict[str, Any]:
    """The Pod the API server reviews for a workload: its template's metadata and spec."""
    if workload["kind"] == "Pod":
        return copy.deepcopy(workload)
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template = copy.deepcopy(spec["template"])
    metadata = {**template.get("metadata", {}), "generateName": f"{workload['metadata']['name']}-",
                "namespace": NAMESPACE}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def admission_review(pod: dict[str, Any], uid: str = "b3c7a1de-0000-4000-8000-000000000001") -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": NAMESPACE,
                    "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:rs"},
                    "object": pod, "oldObject": None, "dryRun": False},
    }).encode()


def mutate(pod: dict[str, Any], template: Template, *, namespace: bool = False) -> tuple[dict[str, Any], Any]:
    """(the pod after the webhook's patch, the verdict)."""
    verdict = review.respond(admission_review(pod), template, namespace_opted_in=namespace)
    answer = verdict.response["response"]
    assert answer["uid"].startswith("b3c7a1de") and answer["allowed"] is True, answer
    if "patch" not in answer:
        return pod, verdict
    assert answer["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(answer["patch"]))
    return jsonpatch.apply_patch(pod, ops), verdict


def workload(kind: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta = {"labels": {"app": "demo"},
            "annotations": {"llm-sidecar.io/inject": "true"} if annotations is None else annotations}
    pod_spec = {"template": {"metadata": meta, "spec": spec}}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo", "namespace": NAMESPACE, **meta},
                "spec": spec}
    if kind == "Job":
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch"}, "spec": pod_spec}
    extra = {"serviceName": "db"} if kind == "StatefulSet" else {}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": kind.lower()},
            "spec": {"selector": {"matchLabels": {"app": "demo"}}, **extra, **pod_spec}}


WITH_INIT = {"initContainers": [{"name": "migrate", "image": "busybox:1.36", "command": ["true"]}],
             "containers": [APP], "volumes": [{"name": "data", "emptyDir": {}}]}
WITH_ENV = {"containers": [{**APP, "env": [{"name": "OPENAI_BASE_URL", "value": "http://proxy:8080/v1"}]},
                           {"name": "worker", "image": "busybox:1.36"}]}
JOB = {"restartPolicy": "Never", "containers": [APP]}
BARE = {"containers": [APP]}
CASES = {
    "deployment-with-init-container-and-volume": workload("Deployment", WITH_INIT),
    "statefulset-with-its-own-base-url": workload("StatefulSet", WITH_ENV),
    "job": workload("Job", JOB),
    "bare-pod": workload("Pod", BARE),
}


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_patched_pod_is_valid_and_has_what_the_templates_render(case, template, chart) -> None:
    pod = pod_of(CASES[case])
    patched, verdict = mutate(pod, template)
    assert verdict.injected
    validate_strict([patched])
    # Exactly what an application chart including the named templates gets (the chart's own example).
    example = find(render(chart, {**VALUES, "example": {"enabled": True}}), "Deployment", "-example")
    expected_spec = example["spec"]["template"]["spec"]
    spec = patched["spec"]
    assert spec["initContainers"][0] == expected_spec["initContainers"][0]  # native form: first init container
    assert [v for v in spec["volumes"] if v["name"].startswith("llm-sidecar")] == [
        v for v in expected_spec["volumes"] if v["name"].startswith("llm-sidecar")]
    assert spec["terminationGracePeriodSeconds"] == expected_spec["terminationGracePeriodSeconds"]
    assert patched["metadata"]["labels"]["llm-sidecar/enabled"] == "true"
    assert patched["metadata"]["annotations"]["llm-sidecar.io/status"] == "injected"
    # What the pod had is kept, in order.
    assert [c["name"] for c in spec.get("initContainers", [])][1:] == [
        c["name"] for c in pod["spec"].get("initContainers", [])]
    assert [v["name"] for v in spec["volumes"]][: len(pod["spec"].get("volumes", []))] == [
        v["name"] for v in pod["spec"].get("volumes", [])]
    for container in spec["containers"]:
        env = {e["name"]: e["value"] for e in container["env"]}
        own = {e["name"]: e["value"] for e in next(c for c in pod["spec"]["containers"]
                                                   if c["name"] == container["name"]).get("env", [])}
        assert env["OPENAI_BASE_URL"] == own.get("OPENAI_BASE_URL", "http://127.0.0.1:4000/v1")
        assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4000"
    again, verdict = mutate(patched, template, namespace=True)  # idempotent: a second pass changes nothing
    assert again == patched and verdict.reason == "already has the sidecar"


def test_annotations_choose_form_config_and_resources(template) -> None:
    notes = {"llm-sidecar.io/inject": "true", "llm-sidecar.io/form": "classic",
             "llm-sidecar.io/config": "team-a-llm", "llm-sidecar.io/cpu-request": "250m",
             "llm-sidecar.io/memory-limit": "512Mi"}
    patched, _ = mutate(pod_of(workload("Job", JOB, notes)), template)
    validate_strict([patched])
    spec = patched["spec"]
    assert "initContainers" not in spec and [c["name"] for c in spec["containers"]] == ["app", "llm-sidecar"]
    sidecar = spec["containers"][1]
    assert "restartPolicy" not in sidecar
    assert sidecar["resources"]["requests"]["cpu"] == "250m" and sidecar["resources"]["limits"]["memory"] == "512Mi"
    assert sidecar["resources"]["limits"]["cpu"] == template.container["resources"]["limits"]["cpu"]
    config = next(v for v in spec["volumes"] if v["name"] == "llm-sidecar-config")
    assert config["configMap"]["name"] == "team-a-llm"


def test_only_pods_that_opted_in_are_touched(template, objects) -> None:
    silent = pod_of(workload("Deployment", BARE, annotations={}))
    assert mutate(silent, template)[1].reason == "did not opt in"  # the pod webhook: annotation required
    assert mutate(silent, template, namespace=True)[1].injected  # a namespace labelled for injection
    out = pod_of(workload("Deployment", BARE, annotations={"llm-sidecar.io/inject": "false"}))
    assert mutate(out, template, namespace=True)[1].reason == "did not opt in"
    unclear = pod_of(workload("Deployment", BARE, annotations={"llm-sidecar.io/inject": "yes"}))
    pod, verdict = mutate(unclear, template)
    assert pod == unclear and "neither true nor false" in verdict.response["response"]["warnings"][0]
    own = pod_of(find(objects, "Deployment", "-injector"))
    assert mutate(own, template, namespace=True)[1].reason == "the injector's own pod"


@pytest.mark.parametrize(("notes", "message"), [
    ({"llm-sidecar.io/form": "sidecar"}, "llm-sidecar.io/form: 'sidecar' is not one of native, classic"),
    ({"llm-sidecar.io/cpu-limit": "lots"}, "llm-sidecar.io/cpu-limit: 'lots' is not a Kubernetes quantity"),
    ({"llm-sidecar.io/config": "Not_A_Name"}, "llm-sidecar.io/config: 'Not_A_Name' is not a ConfigMap name"),
    ({"llm-sidecar.io/confg": "x"}, "llm-sidecar.io/confg: unknown annotation"),
])
def test_wrong_choices_refuse_the_pod_with_a_message(template, notes, message) -> None:
    pod = pod_of(workload("Pod", BARE, {"llm-sidecar.io/inject": "true", **notes}))
    answer = review.respond(admission_review(pod), template, namespace_opted_in=False).response["response"]
    assert answer["allowed"] is False and answer["status"]["code"] == 400
    assert message in answer["status"]["message"]


def test_a_volume_name_clash_is_refused(template) -> None:
    pod = pod_of(workload("Pod", {**BARE, "volumes": [{"name": "llm-sidecar-tmp", "emptyDir": {}}]}))
    answer = review.respond(admission_review(pod), template, namespace_opted_in=False).response["response"]
    assert answer["allowed"] is False and "llm-sidecar-tmp" in answer["status"]["message"]


@pytest.mark.parametrize(("body", "message"), [
    (b"", "not JSON"), (b"[1, 2]", "expected an AdmissionReview"),
    (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "u"}}', "v1"),
    (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}', "request.uid"),
    (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "request.uid"),
])
def test_malformed_reviews_are_refused_clearly(template, body, message) -> None:
    with pytest.raises(review.InvalidReview, match=message):
        review.respond(body, template, namespace_opted_in=False)


@pytest.mark.parametrize("odd", [{"containers": ["app"]}, {**BARE, "terminationGracePeriodSeconds": "30"},
                                 {"containers": [{**APP, "env": ["X"]}]}])
def test_a_pod_with_a_field_of_the_wrong_type_is_refused_not_crashed(template, odd) -> None:
    answer = review.respond(admission_review(pod_of(workload("Pod", odd))), template,
                            namespace_opted_in=False).response["response"]
    assert answer["allowed"] is False and "not a well-formed Pod" in answer["status"]["message"]
    body = json.loads(admission_review(pod_of(workload("Pod", BARE))))
    body["request"]["kind"] = "Pod"  # a string, not a group-version-kind
    assert review.respond(json.dumps(body).encode(), template, namespace_opted_in=False).response["response"]


def test_a_review_without_a_pod_is_refused_not_crashed(template) -> None:
    body = json.loads(admission_review({"kind": "Pod"}))
    answer = review.respond(json.dumps(body).encode(), template, namespace_opted_in=True).response["response"]
    assert answer["allowed"] is False and "expected a Pod with a spec" in answer["status"]["message"]


# ---- over TLS, with what the chart rendered ------------------------------------------------------------

@pytest.fixture(scope="module")
def served(objects, tmp_path_factory) -> Iterator[tuple[str, ssl.SSLContext, str]]:
    """``llm-sidecar injector`` with the chart's template, certificate and key; a client context that
    trusts only the caBundle of the chart's MutatingWebhookConfiguration."""
    workdir = tmp_path_factory.mktemp("injector")
    secret = find(objects, "Secret", "-injector-tls")
    for key in ("tls.crt", "tls.key"):
        (workdir / key).write_bytes(base64.b64decode(secret["data"][key]))
    (workdir / "template.yaml").write_text(find(objects, "ConfigMap", "-injector")["data"]["template.yaml"])
    webhooks = find(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert len({w["clientConfig"]["caBundle"] for w in webhooks}) == 1
    ca = base64.b64decode(webhooks[0]["clientConfig"]["caBundle"]).decode()
    service = webhooks[0]["clientConfig"]["service"]
    hostname = f"{service['name']}.{service['namespace']}.svc"  # the name the API server verifies
    port = _free_port()
    log = (workdir / "injector.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "injector", "--template", str(workdir / "template.yaml"),
         "--tls-cert", str(workdir / "tls.crt"), "--tls-key", str(workdir / "tls.key"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the name; trusts only what is loaded:
    context.load_verify_locations(cadata=ca)  # the caBundle, not the system's CAs
    _wait_tls(port, context, hostname, process)
    yield f"127.0.0.1:{port}", context, hostname
    process.terminate()
    assert process.wait(10) == 0


def test_the_webhook_answers_over_tls_trusting_only_the_charts_ca_bundle(served) -> None:
    address, context, hostname = served
    pod = pod_of(CASES["bare-pod"])
    status, answer = _post(address, context, hostname, "/mutate/pod", admission_review(pod))
    assert status == 200 and answer["response"]["allowed"] and answer["response"]["patchType"] == "JSONPatch"
    status, answer = _post(address, context, hostname, "/mutate/pod", b"{not json")
    assert status == 400 and "not JSON" in answer["error"]
    wrong = ssl.create_default_context()  # the system's CAs only: the chart's certificate is not among them
    with pytest.raises(ssl.SSLCertVerificationError):
        _post(address, wrong, hostname, "/healthz", None)


def test_a_review_of_too_many_values_or_bytes_is_refused_before_parsing(served) -> None:
    """Parsed, 8 MiB of ``{},`` took the injector to 300 MB (its limit is 128 Mi): the body is capped at 2 MiB
    and 200,000 JSON values, both checked before any parse."""
    address, context, hostname = served
    many = b'{"kind": "AdmissionReview", "x": [' + b"{}," * 300_000 + b"{}]}"
    status, answer = _post(address, context, hostname, "/mutate/pod", many)
    assert status == 413 and "JSON values" in answer["error"]
    status, answer = _post(address, context, hostname, "/mutate/pod", b'{"x": "' + b"a" * (3 << 20) + b'"}')
    assert status == 413 and "2 MiB" in answer["error"]


def test_injector_latency_per_review(served) -> None:
    """Measured for the report; the bound is generous (the webhook's default timeoutSeconds is 5)."""
    address, context, hostname = served
    body = admission_review(pod_of(CASES["deployment-with-init-container-and-volume"]))

    async def measure() -> list[float]:
        samples = []
        connector = aiohttp.TCPConnector(ssl=context, limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(200):
                started = time.perf_counter()
                async with session.post(f"https://{address}/mutate/pod", data=body, server_hostname=hostname,
                                        headers={"content-type": "application/json"}) as answer:
                    assert answer.status == 200 and (await answer.json())["response"]["allowed"]
                samples.append(time.perf_counter() - started)
        return sorted(samples)

    samples = asyncio.run(measure())
    print(f"\ninjector round trip per AdmissionReview (keep-alive, TLS): p50 {samples[100] * 1000:.2f} ms, "
          f"p99 {samples[198] * 1000:.2f} ms")
    assert samples[100] < 1.0


def test_helm_certificates_are_reused_when_the_secret_exists(helm, tmp_path) -> None:
    """Upgrades read the Secret back with lookup: the helper then returns it unchanged (rendered here through
    an application chart that passes a Secret, as lookup would)."""
    app = tmp_path / "app"
    (app / "templates").mkdir(parents=True)
    shutil.copytree(REPO / "helm" / "llm-sidecar", app / "charts" / "llm-sidecar")
    (app / "Chart.yaml").write_text("apiVersion: v2\nname: app\nversion: 1.0.0\n"
                                    "dependencies:\n  - name: llm-sidecar\n    version: 0.1.0\n")
    (app / "values.yaml").write_text("llm-sidecar:\n  injector:\n    enabled: true\n")
    existing = {"data": {"ca.crt": "Q0E=", "tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}}
    (app / "templates" / "tls.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: reused}\ndata:\n"
        "  fresh: {{ include \"llm-sidecar.injectorTLS\" (list . dict) | quote }}\n"
        f"  reused: {{{{ include \"llm-sidecar.injectorTLS\" (list . ({json.dumps(json.dumps(existing))} "
        "| fromJson)) | quote }}\n")
    with helm.Chart.load(str(app)) as parent:
        out = parent.render(values={}, name="demo", namespace=NAMESPACE)
    data = parse_manifests(out["app/templates/tls.yaml"])[0]["data"]
    assert yaml.safe_load(data["reused"]) == {"ca": "Q0E=", "cert": "Q0VSVA==", "key": "S0VZ"}
    fresh = yaml.safe_load(data["fresh"])
    assert base64.b64decode(fresh["cert"]).startswith(b"-----BEGIN CERTIFICATE-----")


# ---- helpers -----------------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(address: str, context: ssl.SSLContext, hostname: str, path: str, body: bytes | None) -> tuple[int, Any]:
    import socket

    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        method = "POST" if body is not None else "GET"
        payload = body or b""
        tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: {hostname}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


def _wait_tls(port: int, context: ssl.SSLContext, hostname: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the injector exited")
        try:
            _post(f"127.0.0.1:{port}", context, hostname, "/healthz", None)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the injector did not start")
