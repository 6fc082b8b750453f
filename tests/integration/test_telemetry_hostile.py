"""Telemetry never fails a request, and says only what it may: a wildcard group's attempts are traced (their
deployment is built per model name), an app's undecodable tracestate is dropped (not a 500 that left the
request counted in flight for ever), and an upstream error quoting the prompt stays off the span."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, deployment
from tests.integration.test_telemetry import Receiver, Tree

MESSAGES = [{"role": "user", "content": "hello"}]


class RawReceiver(Receiver):
    """The OTLP receiver, keeping each export's bytes as they came (a span's status message among them)."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        super().__init__()

    def add(self, body: bytes) -> None:
        self.raw.append(body)
        super().add(body)


@pytest.fixture(scope="module")
def receiver() -> Iterator[RawReceiver]:
    r = RawReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def traced(workdir: Path, primary: FakeProvider, receiver: Receiver) -> Iterator[Sidecar]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    wildcard = {"model_name": "openai/*", "litellm_params": {"model": "openai/*", "api_base": primary.api_base,
                                                             "api_key": PROVIDER_KEY}}
    config = {"model_list": [deployment("solo", primary), wildcard],
              "router_settings": {"timeout": 10, "num_retries": 0}}
    process = Sidecar(config, workdir, "telemetry-hostile", env=env)
    yield process
    process.stop()


def _client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


@pytest.mark.parametrize("stream", [False, True])
def test_a_wildcard_groups_attempts_are_traced(traced: Sidecar, receiver: Receiver, stream: bool) -> None:
    request_id = uuid.uuid4().hex
    answer = _client(traced).chat.completions.with_raw_response.create(
        model="openai/chosen-by-the-app", messages=MESSAGES, stream=stream, extra_headers={"x-request-id": request_id})
    assert answer.status_code == 200
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in answer.parse() if c.choices)
    (client,) = Tree.of(receiver.trace(request_id)).clients
    assert client.attributes["gen_ai.request.model"] == "chosen-by-the-app"


def test_an_undecodable_tracestate_is_dropped_not_a_500(traced: Sidecar) -> None:
    body = b'{"model": "solo", "messages": [{"role": "user", "content": "hi"}]}'
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + APP_KEY.encode() + b"\r\n"
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\n"  # not sampled
            b"tracestate: a=\xff\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", traced.port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = requests.get(f"{traced.admin_url}/metrics", timeout=5).text
        if re.search(r"^llm_sidecar_in_flight 0$", text, re.M):
            break
        time.sleep(0.05)
    assert re.search(r"^llm_sidecar_in_flight 0$", text, re.M)  # the request ended: nothing held at shutdown
    assert "Traceback" not in traced.logs() and "Logging error" not in traced.logs()


def test_an_upstream_error_quoting_the_prompt_stays_off_the_span(traced: Sidecar, receiver: RawReceiver,
                                                                 primary: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=400, error_message="Your input 'PROMPT-SECRET-9911' was flagged")
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.BadRequestError):
        _client(traced).chat.completions.create(model="solo", messages=MESSAGES,
                                                extra_headers={"x-request-id": request_id})
    (client,) = Tree.of(receiver.trace(request_id)).clients
    assert client.attributes["error.type"]  # the failed attempt is on the trace, and says what failed
    assert not any(b"PROMPT-SECRET-9911" in body for body in receiver.raw)


def test_app_chosen_model_names_make_no_metric_series_of_their_own(traced: Sidecar) -> None:
    client = _client(traced)
    for i in range(5):
        client.chat.completions.create(model=f"openai/name-{i}-{uuid.uuid4().hex[:6]}", messages=MESSAGES)
    text = requests.get(f"{traced.admin_url}/metrics", timeout=5).text
    per_request = [line for line in text.splitlines() if "name-" in line and not line.startswith(
        "llm_sidecar_breaker_state")]  # breakers go with the built groups, at most 256 of them
    assert per_request == []  # the wildcard's label stands for all of them
    assert re.search(r'^llm_sidecar_requests_total\{[^}]*deployment="openai/\*"', text, re.M), text[:2000]
