"""Egress through a real forward proxy (issue 12 point 1): Debian's tinyproxy with Basic authentication, a TLS
upstream whose CA is made in the test, and the real sidecar process configured by HTTPS_PROXY / HTTP_PROXY /
NO_PROXY — the way clusters that reach the internet only through a proxy run it."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.integration.egress_servers import CA, RawServer, Tinyproxy, completion, event, wants_stream
from tests.integration.procs import APP_KEY, FakeProvider, Sidecar
from tests.integration.test_telemetry import Receiver

USER, PASSWORD = "egress", "pr0xy-SECRET"


async def _answer(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while (request := await server.read_request(reader)) is not None:
        if wants_stream(request):
            body = event("through") + event(" the tunnel") + event("", "stop") + b"data: [DONE]\n\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            body = completion("through the tunnel")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
        await writer.drain()


@pytest.fixture(scope="module")
def ca(workdir: Path) -> CA:
    return CA(workdir)


@pytest.fixture(scope="module")
def tls_upstream(ca: CA) -> Iterator[RawServer]:
    server = RawServer(_answer, tls=ca.server_context())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(workdir: Path) -> Iterator[Tinyproxy]:
    server = Tinyproxy(workdir, USER, PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def otlp() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


def _group(name: str, api_base: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "openai/m", "api_base": api_base,
                                                   "api_key": "sk-upstream-KEY", **params}, "model_info": {"id": name}}


@pytest.fixture(scope="module")
def proxied(workdir: Path, ca: CA, tls_upstream: RawServer, proxy: Tinyproxy, primary: FakeProvider,
            otlp: Receiver) -> Iterator[Sidecar]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    tls = f"https://localhost:{tls_upstream.port}/v1"
    config = {
        "model_list": [
            _group("tunnel", tls),
            _group("plain-proxied", f"http://localhost:{primary.port}/v1"),
            _group("direct", f"http://127.0.0.1:{primary.port}/v1"),
            _group("override-none", tls, proxy="none"),
            _group("wrong-auth", tls, proxy=proxy.url(USER, "wrong")),
            _group("plain-no-credentials", f"http://localhost:{primary.port}/v1", proxy=proxy.url()),
            _group("denied", f"https://localhost:{closed}/v1"),
        ],
        "router_settings": {"num_retries": 0, "cooldown_time": 0, "timeout": 20},
    }
    env = {"HTTPS_PROXY": proxy.url(USER, PASSWORD), "http_proxy": proxy.url(USER, PASSWORD),
           "NO_PROXY": "127.0.0.1", "SSL_CERT_FILE": str(ca.ca_file),
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://localhost:{otlp.port}", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_SAMPLER": "always_on"}
    sidecar = Sidecar(config, workdir, "proxied", env=env)
    yield sidecar
    sidecar.stop()


def _client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=30)




def test_https_upstream_through_a_connect_tunnel(proxied: Sidecar, proxy: Tinyproxy, tls_upstream: RawServer) -> None:
    client = _client(proxied)
    answer = client.chat.completions.create(model="tunnel", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "through the tunnel"
    stream = client.chat.completions.create(model="tunnel", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "through the tunnel"
    assert f"): CONNECT localhost:{tls_upstream.port} " in proxy.lines()
    head = tls_upstream.requests[-1].split(b"\r\n\r\n")[0].lower()
    assert b"proxy-authorization" not in head and PASSWORD.encode() not in tls_upstream.requests[-1]
    assert b"accept-encoding: identity" in head


def test_plain_http_upstream_through_the_proxy(proxied: Sidecar, proxy: Tinyproxy, primary: FakeProvider) -> None:
    answer = _client(proxied).chat.completions.create(model="plain-proxied",
                                                      messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert re.search(rf"POST http://localhost:{primary.port}/v1/chat/completions", proxy.lines())


def test_no_proxy_and_a_deployment_override_go_direct(proxied: Sidecar, proxy: Tinyproxy, primary: FakeProvider,
                                                     tls_upstream: RawServer) -> None:
    tunnels = f"): CONNECT localhost:{tls_upstream.port} "
    before = proxy.lines().count(tunnels)
    client = _client(proxied)
    for model in ("direct", "override-none"):
        assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}]).choices
    assert proxy.lines().count(tunnels) == before and f"127.0.0.1:{primary.port}" not in proxy.lines()


def test_proxy_failures_have_their_own_cause(proxied: Sidecar, otlp: Receiver) -> None:
    client = _client(proxied)
    causes = {}
    for model in ("wrong-auth", "plain-no-credentials", "denied"):
        with pytest.raises(openai.APIStatusError) as failure:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        text = failure.value.response.text
        assert failure.value.status_code == 503 and PASSWORD not in text and "127.0.0.1" not in text
        request_id = failure.value.response.headers["x-request-id"]
        causes[model] = proxied.request_log(request_id)["failures"]
        [client_span] = [s for s in otlp.trace(request_id) if s.kind == 3]  # the attempt's CLIENT span
        assert client_span.attributes["sidecar.error.cause"] == causes[model][0]["cause"]
    assert causes == {
        "wrong-auth": [{"deployment": "wrong-auth", "error": "auth", "cause": "proxy_auth"}],  # refused credentials
        "plain-no-credentials": [{"deployment": "plain-no-credentials", "error": "auth", "cause": "proxy_auth"}],
        "denied": [{"deployment": "denied", "error": "connection", "cause": "proxy_denied"}],  # a refused tunnel
    }
    metrics = requests.get(f"{proxied.admin_url}/metrics", timeout=5).text
    assert ('llm_sidecar_upstream_failures_total{deployment="wrong-auth",error_class="auth",cause="proxy_auth"} 1'
            in metrics)


def test_spans_reach_the_collector_through_the_proxy(proxied: Sidecar, proxy: Tinyproxy, otlp: Receiver) -> None:
    """The OTLP exporter follows the same variables: the collector's host is not in NO_PROXY."""
    raw = _client(proxied).chat.completions.with_raw_response.create(
        model="direct", messages=[{"role": "user", "content": "hi"}])
    assert otlp.trace(raw.headers["x-request-id"])
    assert f"POST http://localhost:{otlp.port}/v1/traces" in proxy.lines()
