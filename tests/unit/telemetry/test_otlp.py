"""The OTLP encoder's bytes, parsed by the real protobuf classes, say what was encoded."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.telemetry import otlp


def _python(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _python(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _decoded(encoded: bytes) -> dict[str, Any]:
    return {kv.key: _python(kv.value) for kv in Span.FromString(encoded).attributes}


keys = st.text(min_size=1, max_size=140)
scalars = (st.text(max_size=300) | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.booleans()
           | st.floats(allow_nan=False))
values = scalars | st.lists(st.text(max_size=80) | st.integers(min_value=0, max_value=1000), max_size=6)


@given(st.dictionaries(keys, values, max_size=8))
def test_attributes_decode_to_what_was_encoded(attributes: dict[str, Any]) -> None:
    assert _decoded(otlp.attributes(otlp.SPAN_ATTRIBUTE, attributes)) == attributes
    assert _decoded(otlp.attributes(otlp.SPAN_ATTRIBUTE, attributes)) == attributes  # cached heads too


@given(keys, values)
def test_one_attribute_is_the_same_as_a_mapping_of_one(key: str, value: Any) -> None:
    assert otlp.attribute(otlp.SPAN_ATTRIBUTE, key, value) == otlp.attributes(otlp.SPAN_ATTRIBUTE, {key: value})


def test_a_batch_of_spans_is_one_export_request() -> None:
    envelope = otlp.Envelope({"service.name": "llm-sidecar", "k8s.pod.name": "p-1"}, "llm-sidecar", "1.2.3",
                             "https://opentelemetry.io/schemas/1.21.0")
    trace_id, server_id, client_id = bytes(range(1, 17)), bytes(range(8)), bytes(range(10, 18))
    attempt = otlp.string(0x12, "attempt") + otlp.attributes(otlp.EVENT_ATTRIBUTE, {"sidecar.attempt": 1})
    events = otlp.event(1_500, attempt)
    server = otlp.span(otlp.ids(trace_id, server_id, b"\xaa" * 8, otlp.trace_state("vendor=1")),
                       otlp.string(0x2A, "POST /v1/chat/completions"), otlp.SERVER, 1_000, 9_000,
                       otlp.attributes(otlp.SPAN_ATTRIBUTE, {"http.response.status_code": 200}) + events,
                       otlp.UNSET, otlp.REMOTE_PARENT)
    client = otlp.span(otlp.ids(trace_id, client_id, server_id), otlp.string(0x2A, "chat gpt-4o"), otlp.CLIENT,
                       2_000, 8_000, b"", otlp.error_status("upstream said 500"), otlp.LOCAL_PARENT)
    request = ExportTraceServiceRequest.FromString(envelope.request([server, client] * 200))

    [resource_spans] = request.resource_spans
    assert resource_spans.schema_url == "https://opentelemetry.io/schemas/1.21.0"
    assert {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes} == {
        "service.name": "llm-sidecar", "k8s.pod.name": "p-1"}
    [scope_spans] = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("llm-sidecar", "1.2.3")
    assert len(scope_spans.spans) == 400
    first, second = scope_spans.spans[:2]
    assert (first.trace_id, first.span_id, first.parent_span_id) == (trace_id, server_id, b"\xaa" * 8)
    assert first.trace_state == "vendor=1"
    assert (first.name, first.kind, first.start_time_unix_nano, first.end_time_unix_nano) == (
        "POST /v1/chat/completions", Span.SPAN_KIND_SERVER, 1_000, 9_000)
    assert first.flags == 0x300  # the parent came from another process
    assert first.attributes[0].value.int_value == 200
    [event] = first.events
    assert (event.name, event.time_unix_nano, event.attributes[0].value.int_value) == ("attempt", 1_500, 1)
    assert first.status.code == 0
    assert (second.parent_span_id, second.kind, second.flags) == (server_id, Span.SPAN_KIND_CLIENT, 0x100)
    assert (second.status.code, second.status.message) == (2, "upstream said 500")
