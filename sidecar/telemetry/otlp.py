"""OTLP trace export without building protobuf objects: ``ReadableSpan`` batches straight to wire bytes.

The SDK's exporters turn every span into a tree of protobuf message objects (``encode_spans``), then
serialize it: ~50 µs of CPU per span, on the export thread but on the sidecar's one core — more than the
whole request path. ``encode_request`` writes the same ``ExportTraceServiceRequest`` bytes directly (a few
µs per span), reusing the encoded form of recurring attributes (the per-deployment ones, the resource).
The bytes decode to a message equal to ``encode_spans``' (the integration receiver parses them with the
real protobuf classes).

``http_exporter`` and ``grpc_exporter`` are the SDK's OTLP exporters with only the encoding step swapped;
a batch the fast encoder does not expect (links, say: the sidecar makes none) takes the SDK's encoder.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as _SdkHttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger("sidecar.telemetry")
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_CACHE_LIMIT = 8192
# (field tag, key, value) → that attribute's encoded field (see _attributes)
_KV_CACHE: dict[tuple[Any, ...], bytes] = {}
_KEY_CACHE: dict[str, bytes] = {}


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return bytes((n,))
    out = bytearray()
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` is the whole tag byte: number << 3 | 2)."""
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return bytes((tag,)) + _varint(n) + payload


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message body, as the SDK's ``_encode_value`` builds it."""
    if value is None:
        return b""
    if value is True:
        return b"\x10\x01"
    if value is False:
        return b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join([_field(0x0A, _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(0x32, b"".join([_field(0x0A, _key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message body."""
    prefix = _KEY_CACHE.get(key)
    if prefix is None:
        if len(_KEY_CACHE) >= _CACHE_LIMIT:
            _KEY_CACHE.clear()
        prefix = _KEY_CACHE[key] = _field(0x0A, key.encode())
    return prefix + _field(0x12, _any_value(value))


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """Each attribute as a ``tag`` field holding a KeyValue. Strings, small ints and lists of strings are
    encoded once: most values recur (per-deployment attributes, status codes, token counts)."""
    if not attributes:
        return []
    out = []
    cache = _KV_CACHE
    for key, value in attributes.items():
        kind = type(value)
        if kind is str or (kind is int and -1 < value < 0x10000):
            memo: Any = (tag, key, value)
        elif kind is list or kind is tuple:
            memo = (tag, key, kind, *value)
        else:
            out.append(_field(tag, _key_value(key, value)))
            continue
        hit = cache.get(memo)
        if hit is None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            hit = cache[memo] = _field(tag, _key_value(key, value))
        out.append(hit)
    return out


def _dropped(items: object) -> int:
    return items.dropped if isinstance(items, BoundedList) else 0  # type: ignore[attr-defined]


_KINDS = {kind: bytes((0x30, kind.value + 1)) for kind in SpanKind}  # proto enum = SDK enum + 1
_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano (7) and end_time_unix_nano (8), fixed64
_FLAGS = {False: b"\x85\x01\x00\x01\x00\x00", True: b"\x85\x01\x00\x03\x00\x00"}  # HAS_IS_REMOTE (| IS_REMOTE)
_NAMES: dict[tuple[int, str], bytes] = {}  # span and event names, encoded with their field tag


def _string(tag: int, text: str) -> bytes:
    encoded = _NAMES.get((tag, text))
    if encoded is None:
        encoded = _field(tag, text.encode())
        if len(_NAMES) < 1024:
            _NAMES[(tag, text)] = encoded
    return encoded
_STATUSES: dict[tuple[StatusCode, str | None], bytes] = {}


def _status(status: Status) -> bytes:
    key = (status.status_code, status.description)
    encoded = _STATUSES.get(key)
    if encoded is None:
        body = _field(0x12, status.description.encode()) if status.description else b""
        if status.status_code.value:
            body += b"\x18" + _varint(status.status_code.value)
        encoded = _field(0x7A, body)
        if len(_STATUSES) < 256:
            _STATUSES[key] = encoded
    return encoded


def encode_span(span: ReadableSpan) -> bytes:
    """One ``Span`` message body (fields in the SDK encoder's order, so the bytes are identical)."""
    context = span._context
    assert context is not None
    parent = span._parent
    parts = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        parts.append(_field(0x1A, ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode()))
    if parent is not None:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (_string(0x2A, span._name), _KINDS[span._kind],
              _TIMES(0x39, span._start_time or 0, 0x41, span._end_time or 0))
    attributes = span._attributes
    if attributes:
        parts += _attributes(0x4A, attributes)
        dropped = getattr(attributes, "dropped", 0)
        if dropped:
            parts.append(b"\x50" + _varint(dropped))
    events = span._events
    if events:
        for event in events:
            body = [b"\x09", _FIXED64(event.timestamp), _string(0x12, event.name)]
            body += _attributes(0x1A, event.attributes)
            if event.dropped_attributes:
                body.append(b"\x20" + _varint(event.dropped_attributes))
            parts.append(_field(0x5A, b"".join(body)))
        if _dropped(events):
            parts.append(b"\x60" + _varint(_dropped(events)))
    if span._links:  # the sidecar makes none; a batch with links takes the SDK's encoder
        raise _Unsupported
    parts += (_status(span._status), _FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


class _Unsupported(Exception):
    """A span shape the fast encoder leaves to the SDK's."""


_SCOPES: dict[InstrumentationScope | None, bytes] = {}
_RESOURCES: dict[int, tuple[object, bytes]] = {}


def _scope(scope: InstrumentationScope | None) -> bytes:
    encoded = _SCOPES.get(scope)
    if encoded is None:
        body = b""
        if scope is not None:
            body = _field(0x0A, scope.name.encode()) if scope.name else b""
            if scope.version:
                body += _field(0x12, scope.version.encode())
            body += b"".join(_field(0x1A, _key_value(k, v)) for k, v in (scope.attributes or {}).items())
        encoded = _field(0x0A, body)
        if scope is not None and scope.schema_url:
            encoded = (encoded, _field(0x1A, scope.schema_url.encode()))  # type: ignore[assignment]
        if len(_SCOPES) < 64:
            _SCOPES[scope] = encoded
    return encoded


def _resource(resource: Any) -> bytes:
    hit = _RESOURCES.get(id(resource))
    if hit is not None and hit[0] is resource:
        return hit[1]
    body = b"".join(_field(0x0A, _key_value(k, v)) for k, v in resource.attributes.items())
    encoded = _field(0x0A, body)
    if len(_RESOURCES) < 64:
        _RESOURCES[id(resource)] = (resource, encoded)
    return encoded


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest``: spans grouped by resource, then instrumentation scope."""
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}  # by identity: hashing is slow
    for span in spans:
        resource = span._resource
        entry = grouped.get(id(resource))
        if entry is None:
            entry = grouped[id(resource)] = (resource, {})
        scope = span._instrumentation_scope or None
        by_scope = entry[1].get(id(scope))
        if by_scope is None:
            by_scope = entry[1][id(scope)] = (scope, [])
        by_scope[1].append(_field(0x12, encode_span(span)))
    out = []
    for resource, scopes in grouped.values():
        body = [_resource(resource)]
        for scope, encoded in scopes.values():
            head = _scope(scope)
            if isinstance(head, tuple):
                body.append(_field(0x12, head[0] + b"".join(encoded) + head[1]))
            else:
                body.append(_field(0x12, head + b"".join(encoded)))
        if resource.schema_url:
            body.append(_field(0x1A, resource.schema_url.encode()))
        out.append(_field(0x0A, b"".join(body)))
    return b"".join(out)


def _encode_or_fallback(spans: Sequence[ReadableSpan]) -> bytes:
    try:
        return encode_request(spans)
    except Exception:  # an unexpected shape: the SDK's encoder knows every one
        return encode_spans(spans).SerializePartialToString()


def http_exporter() -> SpanExporter:
    """The SDK's OTLP/HTTP exporter (endpoint, headers, TLS, compression, retries from ``OTEL_*``) with
    the fast encoder; the SDK's own if its internals are not the ones this was written against."""
    exporter = HttpSpanExporter()
    if not all(hasattr(exporter, name) for name in ("_client", "_metrics", "_shutdown", "_max_request_size")):
        return _SdkHttpExporter()
    return exporter


class HttpSpanExporter(_SdkHttpExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:  # as the SDK's, but the encoding
        if self._shutdown:
            log.warning("span exporter already shut down, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            data = _encode_or_fallback(spans)
            if 0 < self._max_request_size < len(data):
                log.warning("dropping a span batch of %d bytes (max_request_size %d)", len(data),
                            self._max_request_size)
                result.error = ValueError("span batch too large")
                return SpanExportResult.FAILURE
            outcome = self._client.export(data)
            if not outcome.success:
                result.error = outcome.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def grpc_exporter() -> SpanExporter:
    """The SDK's OTLP/gRPC exporter; its message is parsed (in C) from the fast encoder's bytes."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as SdkGrpcExporter

    class GrpcSpanExporter(SdkGrpcExporter):
        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            return ExportTraceServiceRequest.FromString(_encode_or_fallback(data))

    return GrpcSpanExporter()
