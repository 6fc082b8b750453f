"""Telemetry end to end: the real sidecar exports OTLP/HTTP to a receiver in this suite that decodes the
real protobuf; /metrics is parsed with prometheus_client; the request log is one JSON line per request."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import openai
import orjson
import pytest
import requests
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, deployment, free_port

PROMPT = "PROMPT-TEXT-must-not-appear-7731"
PRIMARY, SPARE, PRICED, LONELY = "primary-dep", "spare-dep", "priced-dep", "lonely-dep"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    status: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver:
    """An OTLP/HTTP receiver: POST /v1/traces (ExportTraceServiceRequest) and /v1/metrics
    (ExportMetricsServiceRequest) protobuf bodies."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.metrics: list[tuple[str, dict[str, Any], float]] = []  # (name, attributes, value or count)
        self.resources: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path.endswith("/v1/metrics"):
                    receiver.add_metrics(body)
                else:
                    receiver.add(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, body: bytes) -> None:
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            self.resources.append({a.key: _value(a.value) for a in resource_spans.resource.attributes})
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    self.spans.append(Span(
                        s.name, s.kind, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                        {a.key: _value(a.value) for a in s.attributes}, s.status.code,
                        [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in s.events]))

    def add_metrics(self, body: bytes) -> None:
        message = ExportMetricsServiceRequest.FromString(body)
        for resource_metrics in message.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        attributes = {a.key: _value(a.value) for a in point.attributes}
                        value = point.count if kind == "histogram" else (
                            point.as_double if point.WhichOneof("value") == "as_double" else point.as_int)
                        self.metrics.append((metric.name, attributes, value))

    def metric(self, name: str, timeout: float = 10.0, **attributes: str) -> float:
        """The latest exported value (a histogram's count) of ``name`` with those attributes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [v for n, a, v in self.metrics if n == name and all(a.get(k) == w for k, w in attributes.items())]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {name} {attributes} among {len(self.metrics)} exported points")

    def trace(self, request_id: str, timeout: float = 10.0) -> list[Span]:
        """Every span of the trace whose SERVER span carries ``request_id``, once the route span is in."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = [s for s in self.spans
                      if s.kind == SERVER and s.attributes.get("sidecar.request_id") == request_id]
            if server:
                spans = [s for s in self.spans if s.trace_id == server[0].trace_id]
                if any(s.name.startswith("route ") for s in spans):
                    return spans
            time.sleep(0.05)
        raise AssertionError(f"no trace for request {request_id} in {len(self.spans)} spans")

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class Tree:
    server: Span
    route: Span
    clients: list[Span]

    @classmethod
    def of(cls, spans: list[Span]) -> Tree:
        server = next(s for s in spans if s.kind == SERVER)
        route = next(s for s in spans if s.parent == server.span_id)
        clients = [s for s in spans if s.kind == CLIENT]
        assert all(c.parent == route.span_id for c in clients)
        return cls(server, route, clients)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [attrs for n, attrs in self.route.events if n == name]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _config(primary: FakeProvider, backup: FakeProvider) -> dict[str, Any]:
    prices = {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1.0e-5}
    return {
        "model_list": [
            {**deployment("main", primary), "model_info": {"id": PRIMARY}},
            {**deployment("spare", backup), "model_info": {"id": SPARE}},
            {**deployment("priced", backup), "model_info": {"id": PRICED, **prices}},
            {**deployment("lonely", primary), "model_info": {"id": LONELY}},
        ],
        "router_settings": {"timeout": 10, "num_retries": 1, "allowed_fails": 3, "cooldown_time": 60,
                            "fallbacks": [{"main": ["spare"]}]},
    }


@pytest.fixture(scope="module")
def traced(workdir: Path, primary: FakeProvider, backup: FakeProvider, receiver: Receiver) -> Iterator[Sidecar]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_SERVICE_NAME": "sidecar-under-test", "OTEL_TRACES_SAMPLER": "parentbased_always_on",
           "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    process = Sidecar(_config(primary, backup), workdir, "traced", env=env)
    yield process
    process.stop()


def _chat(process: Sidecar, model: str = "main", headers: dict[str, str] | None = None) -> tuple[str, Any]:
    request_id = uuid.uuid4().hex
    client = openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-request-id": request_id, **(headers or {})})
    return request_id, raw


def _no_secrets(spans: list[Span]) -> None:
    for span in spans:
        values = [span.attributes] + [attrs for _, attrs in span.events]
        text = orjson.dumps(values, default=str).decode()
        for secret in (PROMPT, PROVIDER_KEY, APP_KEY):
            assert secret not in text, (span.name, secret)


def test_plain_success_span_tree(traced: Sidecar, receiver: Receiver, primary: FakeProvider) -> None:
    request_id, raw = _chat(traced)
    assert raw.headers["x-sidecar-deployment"] == PRIMARY
    tree = Tree.of(receiver.trace(request_id))
    assert tree.server.name == "POST /v1/chat/completions"
    assert tree.server.attributes["http.response.status_code"] == 200
    assert tree.route.name == "route main"
    assert tree.route.attributes["sidecar.routing.strategy"] == "simple-shuffle"
    assert tree.route.attributes["sidecar.routing.candidates"] == [PRIMARY]
    [score] = tree.route.attributes["sidecar.routing.scores"]  # simple-shuffle: a weighted random draw
    assert score.startswith(f"{PRIMARY}: order=none healthy score=")
    [ranking] = tree.events("ranking")
    assert (ranking["sidecar.model_group"], ranking["sidecar.routing.scores"]) == ("main", [score])
    [attempt] = tree.events("attempt")
    assert attempt == {"sidecar.deployment": PRIMARY, "sidecar.model_group": "main", "sidecar.attempt": 1,
                       "sidecar.retry": 0}
    assert tree.route.attributes["sidecar.routing.chosen"] == PRIMARY
    [client] = tree.clients
    assert client.name == "chat primary-model"
    attrs = client.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "primary-model"
    assert attrs["gen_ai.response.model"] == "primary-model"
    assert attrs["gen_ai.usage.input_tokens"] >= 1 and attrs["gen_ai.usage.output_tokens"] >= 1
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["server.address"] == "127.0.0.1" and attrs["sidecar.retry"] == 0
    assert attrs["http.response.status_code"] == 200
    assert client.status != STATUS_ERROR
    assert any(r.get("service.name") == "sidecar-under-test" for r in receiver.resources)
    # the upstream got the CLIENT span's context
    traceparent = primary.stats()["last_headers"]["traceparent"]
    assert traceparent == f"00-{client.trace_id}-{client.span_id}-01"
    _no_secrets(receiver.trace(request_id))


def test_traceparent_is_continued(traced: Sidecar, receiver: Receiver) -> None:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id, _ = _chat(traced, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    tree = Tree.of(receiver.trace(request_id))
    assert tree.server.trace_id == trace_id and tree.server.parent == parent
    assert tree.clients[0].trace_id == trace_id


def test_retry_then_success(traced: Sidecar, receiver: Receiver, primary: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=500)
    request_id, raw = _chat(traced)
    assert raw.headers["x-sidecar-attempts"] == "2"
    tree = Tree.of(receiver.trace(request_id))
    failed, ok = tree.clients
    assert failed.status == STATUS_ERROR and failed.attributes["error.type"] == "server_error"
    assert failed.attributes["http.response.status_code"] == 500
    assert ok.status != STATUS_ERROR and ok.attributes["sidecar.retry"] == 1
    assert [e["sidecar.reason"] for e in tree.events("retry")]
    assert tree.route.attributes["sidecar.routing.retries"] == 1
    _no_secrets(receiver.trace(request_id))


def test_failover_to_another_provider(traced: Sidecar, receiver: Receiver, primary: FakeProvider) -> None:
    primary.set(fail_next=2, error_status=500)
    request_id, raw = _chat(traced)
    assert raw.headers["x-sidecar-deployment"] == SPARE and raw.headers["x-sidecar-fallback"] == "spare"
    tree = Tree.of(receiver.trace(request_id))
    errors = [c for c in tree.clients if c.status == STATUS_ERROR]
    assert errors and all(c.attributes["error.type"] == "server_error" for c in errors)
    assert all(c.name == "chat primary-model" for c in errors)
    assert tree.clients[-1].name == "chat backup-model" and tree.clients[-1].status != STATUS_ERROR
    [step] = tree.events("fallback")
    assert step == {"sidecar.fallback.from": "main", "sidecar.fallback.to": "spare",
                    "sidecar.fallback.cause": "server_error"}
    assert tree.route.attributes["sidecar.routing.fallbacks"] == ["main -> spare: server_error"]
    rankings = tree.events("ranking")  # one per group tried, each with its own candidates' scores
    assert [r["sidecar.model_group"] for r in rankings] == ["main", "spare"]
    scores = tree.route.attributes["sidecar.routing.scores"]
    assert [r["sidecar.routing.scores"] for r in rankings] == [[score] for score in scores]
    assert tree.server.attributes["sidecar.fallback"] == "spare"
    _no_secrets(receiver.trace(request_id))


def test_metrics_after_known_traffic(traced: Sidecar, receiver: Receiver) -> None:
    for _ in range(3):
        _, raw = _chat(traced, model="priced")
        assert float(raw.headers["x-sidecar-cost"]) > 0
    samples = _metrics(traced)
    assert samples[("llm_sidecar_requests_total",
                    (("deployment", PRICED), ("model_group", "priced"), ("outcome", "success")))] == 3
    assert samples[("llm_sidecar_request_duration_seconds_count",
                    (("deployment", PRICED), ("model_group", "priced"), ("outcome", "success")))] == 3
    tokens_in = samples[("llm_sidecar_tokens_total",
                         (("deployment", PRICED), ("direction", "input"), ("model_group", "priced")))]
    tokens_out = samples[("llm_sidecar_tokens_total",
                          (("deployment", PRICED), ("direction", "output"), ("model_group", "priced")))]
    cost = samples[("llm_sidecar_cost_usd_total", (("deployment", PRICED), ("model_group", "priced")))]
    assert cost == pytest.approx(tokens_in * 2.5e-6 + tokens_out * 1.0e-5)
    assert samples[("llm_sidecar_failed_attempts_total",
                    (("error_class", "server_error"), ("model_group", "main")))] >= 3
    assert samples[("llm_sidecar_fallbacks_total",
                    (("cause", "server_error"), ("fallback", "spare"), ("model_group", "main")))] == 1
    assert samples[("llm_sidecar_breaker_state", (("deployment", PRIMARY),))] == 0
    assert samples[("llm_sidecar_in_flight", ())] == 0
    # the request log line: one JSON object per request, with the trace id (lines are flushed on a timer)
    deadline = time.monotonic() + 5
    while True:
        lines = [orjson.loads(line) for line in traced.logs().splitlines() if '"sidecar.request"' in line]
        priced = [entry for entry in lines if entry["model_group"] == "priced"]
        if len(priced) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(priced) == 3
    assert priced[0]["deployment"] == PRICED and priced[0]["cost_usd"] > 0 and len(priced[0]["trace_id"]) == 32
    assert PROVIDER_KEY not in traced.logs() and APP_KEY not in traced.logs()


def test_skip_because_breaker_is_open(traced: Sidecar, receiver: Receiver, primary: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=500)
    for _ in range(6):  # the primary fails until its breaker opens; then it is skipped without a call
        request_id, raw = _chat(traced)
        tree = Tree.of(receiver.trace(request_id))
        if tree.events("skip") and not tree.events("attempt")[:-1]:
            break
    else:
        raise AssertionError("the primary's breaker never opened")
    assert raw.headers["x-sidecar-deployment"] == SPARE
    assert tree.events("skip") == [{"sidecar.deployment": PRIMARY, "sidecar.reason": "breaker_open"}]
    assert tree.route.attributes["sidecar.routing.skipped"] == [f"{PRIMARY}: breaker_open"]
    assert [c.name for c in tree.clients] == ["chat backup-model"]
    [step] = tree.events("fallback")
    assert step["sidecar.fallback.cause"] == "skipped"
    opened = [s for s in receiver.spans if s.kind != CLIENT
              for n, attrs in s.events if n == "breaker_transition" and attrs["sidecar.breaker.to"] == "open"]
    assert opened
    assert _metrics(traced)[("llm_sidecar_breaker_state", (("deployment", PRIMARY),))] == 1


def test_panic_send_past_an_open_breaker(traced: Sidecar, receiver: Receiver, primary: FakeProvider) -> None:
    """A group with one deployment, its breaker open: the request is sent anyway, and the route span says so."""
    primary.set(error_rate=1.0, error_status=500)
    for _ in range(3):  # fail until the breaker opens (retries included)
        with pytest.raises(openai.APIStatusError):
            _chat(traced, "lonely")
        if _metrics(traced)[("llm_sidecar_breaker_state", (("deployment", LONELY),))] == 1:
            break
    primary.set(error_rate=0.0)
    request_id, raw = _chat(traced, "lonely")
    assert raw.headers["x-sidecar-deployment"] == LONELY
    tree = Tree.of(receiver.trace(request_id))
    assert tree.events("skip") == [{"sidecar.deployment": LONELY, "sidecar.reason": "breaker_open"}]
    assert tree.events("panic") == [{"sidecar.deployment": LONELY, "sidecar.model_group": "lonely"}]
    assert tree.route.attributes["sidecar.routing.panic"] == LONELY
    assert tree.route.attributes["sidecar.routing.chosen"] == LONELY
    assert [c.name for c in tree.clients] == ["chat primary-model"]
    assert _metrics(traced)[("llm_sidecar_breaker_panic_total", (("deployment", LONELY), ("model_group", "lonely")))] \
        == 1


def test_stream_span_tree(traced: Sidecar, receiver: Receiver, backup: FakeProvider) -> None:
    request_id = uuid.uuid4().hex
    client = openai.OpenAI(base_url=traced.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    stream = client.chat.completions.create(
        model="spare", messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-request-id": request_id})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    tree = Tree.of(receiver.trace(request_id))
    [attempt] = tree.clients
    assert attempt.name == "chat backup-model" and attempt.status != STATUS_ERROR
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["gen_ai.usage.output_tokens"] >= 1
    assert attempt.attributes["sidecar.time_to_first_token"] > 0
    assert attempt.attributes["gen_ai.response.model"] == "backup-model"
    assert list(attempt.attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert tree.server.attributes["sidecar.time_to_first_token"] > 0
    assert [e["sidecar.deployment"] for e in tree.events("attempt")] == [SPARE]
    traceparent = backup.stats()["last_headers"]["traceparent"]
    assert traceparent == f"00-{attempt.trace_id}-{attempt.span_id}-01"
    _no_secrets(receiver.trace(request_id))


def test_unsampled_requests_make_no_spans_and_forward_the_apps_context(
        workdir: Path, primary: FakeProvider, backup: FakeProvider, receiver: Receiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_TRACES_SAMPLER": "parentbased_always_off"}
    process = Sidecar(_config(primary, backup), workdir, "unsampled", env=env)
    try:
        # the app's trace is not sampled: nothing recorded, its context goes upstream unchanged
        incoming = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"
        _chat(process, model="spare", headers={"traceparent": incoming, "tracestate": "app=1"})
        headers = backup.stats()["last_headers"]
        assert headers["traceparent"] == incoming and headers["tracestate"] == "app=1"
        _chat(process, model="spare")  # no context and a root decision of "off": no traceparent upstream
        assert "traceparent" not in backup.stats()["last_headers"]
        # a sampled parent is followed: the sidecar's spans join the app's trace
        trace_id = uuid.uuid4().hex
        request_id, _ = _chat(process, model="spare",
                              headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"})
        tree = Tree.of(receiver.trace(request_id))
        assert tree.server.trace_id == trace_id
        sent = backup.stats()["last_headers"]["traceparent"]
        assert sent == f"00-{trace_id}-{tree.clients[0].span_id}-01"
    finally:
        assert process.stop() == 0
    time.sleep(0.2)
    assert not [s for s in receiver.spans if s.trace_id == incoming[3:35]]


def test_unreachable_collector_never_breaks_serving(workdir: Path, primary: FakeProvider,
                                                     backup: FakeProvider) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_BSP_SCHEDULE_DELAY": "10",
           "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORT_TIMEOUT)}
    process = Sidecar(_config(primary, backup), workdir, "lost-collector", env=env)
    try:
        _never_waits_on_the_exporter(process, 30)
    finally:
        assert process.stop() == 0


EXPORT_TIMEOUT = 3  # s: a request that waited on a failing export would take at least this long


def _never_waits_on_the_exporter(process: Sidecar, requests: int) -> None:
    """Every request answers, and the typical one far faster than an export attempt times out (a bound that
    holds on a loaded machine, and that a request blocked by the exporter could never meet)."""
    seconds = []
    for _ in range(requests):
        started = time.monotonic()
        _, raw = _chat(process, model="spare")
        assert raw.http_response.status_code == 200
        seconds.append(time.monotonic() - started)
    assert sorted(seconds)[len(seconds) // 2] < EXPORT_TIMEOUT / 2


def _metrics(process: Sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"{process.admin_url}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}



def test_metrics_are_exported_over_otlp_too(traced: Sidecar, receiver: Receiver) -> None:
    for _ in range(2):
        _chat(traced, "priced")
    deadline = time.monotonic() + 10
    while receiver.metric("llm_sidecar_requests", model_group="priced", outcome="success") < 2:
        assert time.monotonic() < deadline, "the exported counter never reached the traffic sent"
        time.sleep(0.1)
    assert receiver.metric("llm_sidecar_request_duration", model_group="priced", deployment=PRICED) >= 2
    assert receiver.metric("llm_sidecar_breaker_state", deployment=PRIMARY) in (0, 1, 2)
    assert receiver.metric("llm_sidecar_tokens", model_group="priced", direction="output") > 0
    assert receiver.metric("llm_sidecar_cost_usd", model_group="priced") > 0


class _GrpcTraces(TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:
        self.receiver.add(request.SerializeToString())
        return ExportTraceServiceResponse()


def test_spans_go_over_otlp_grpc_too(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    receiver = Receiver()  # its HTTP side stays unused: spans arrive through the gRPC service
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_TraceServiceServicer_to_server(_GrpcTraces(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRICS_EXPORTER": "none"}
    process = Sidecar(_config(primary, backup), workdir, "grpc-traces", env=env)
    try:
        request_id, _ = _chat(process, model="spare")
        tree = Tree.of(receiver.trace(request_id))
        assert tree.server.attributes["sidecar.deployment"] == SPARE
        assert [c.attributes["gen_ai.provider.name"] for c in tree.clients] == ["openai"]
    finally:
        assert process.stop() == 0
        server.stop(0)
        receiver.stop()


def test_console_exporter_prints_otlp_json(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    process = Sidecar(_config(primary, backup), workdir, "console-traces", env=env)
    try:
        request_id, _ = _chat(process, model="spare")
        deadline = time.monotonic() + 10
        while request_id not in process.logs():
            assert time.monotonic() < deadline, "no span printed"
            time.sleep(0.05)
    finally:
        assert process.stop() == 0
    printed = [orjson.loads(line) for line in process.logs().splitlines() if line.startswith('{"resourceSpans"')]
    spans = [s for batch in printed for rs in batch["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert {s["name"] for s in spans} >= {"POST /v1/chat/completions", "route spare", "chat backup-model"}


def test_unreachable_grpc_collector_never_breaks_serving(workdir: Path, primary: FakeProvider,
                                                          backup: FakeProvider) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "10",
           "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORT_TIMEOUT), "OTEL_METRICS_EXPORTER": "none"}
    process = Sidecar(_config(primary, backup), workdir, "lost-grpc-collector", env=env)
    try:
        _never_waits_on_the_exporter(process, 20)
    finally:
        assert process.stop() == 0


def test_responses_requests_are_retried_and_traced_like_chat(traced: Sidecar, receiver: Receiver,
                                                            backup: FakeProvider) -> None:
    """Last in the module: the other tests count the traffic of their groups exactly."""
    backup.set(fail_next=1, error_status=500)
    request_id = uuid.uuid4().hex
    client = openai.OpenAI(base_url=traced.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    raw = client.responses.with_raw_response.create(model="spare", input=PROMPT,
                                                    extra_headers={"x-request-id": request_id})
    assert raw.parse().output_text == "Hello from backup." and raw.headers["x-sidecar-attempts"] == "2"
    tree = Tree.of(receiver.trace(request_id))
    assert tree.server.name == "POST /v1/responses" and tree.route.name == "route spare"
    assert [c.status == STATUS_ERROR for c in tree.clients] == [True, False]
    assert tree.clients[-1].attributes["gen_ai.usage.output_tokens"] >= 1
    _no_secrets(receiver.trace(request_id))
