"""OTLP traces on the wire: a request's spans encoded straight to ``ExportTraceServiceRequest`` bytes.

The SDK builds a ``Span`` object per span, then a tree of protobuf objects per batch, then serializes it:
more CPU than the sidecar's whole request path. Here each span becomes protobuf bytes once, when its
request ends. What never changes for a deployment (the span's name, the provider, the address) is encoded
at config load; everything else is one byte-formatting operation per attribute. Every exporter sends
these bytes (``telemetry.export``); the tests parse them with the real protobuf classes.

Pure: no I/O, no OpenTelemetry import. Tags are wire tags (field number << 3 | wire type) of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_VARINT2 = struct.Struct("<H").pack  # n in 128..16383 as a two-byte varint: (n & 0x7F | 0x80) | (n >> 7) << 8
_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano (7) and end_time_unix_nano (8), fixed64

# Where a KeyValue goes: Span.attributes (9), Span.Event.attributes (3), Resource.attributes (1).
SPAN_ATTRIBUTE = 0x4A
EVENT_ATTRIBUTE = 0x1A
RESOURCE_ATTRIBUTE = 0x0A

# Span.kind (6): SPAN_KIND_INTERNAL = 1, SERVER = 2, CLIENT = 3.
INTERNAL = b"\x30\x01"
SERVER = b"\x30\x02"
CLIENT = b"\x30\x03"

# Span.status (15): code (3) UNSET = 0 (an empty Status), ERROR = 2.
UNSET = b"\x7a\x00"
ERROR = b"\x7a\x02\x18\x02"

# Span.flags (16, fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE (0x100), | IS_REMOTE (0x200) when the parent
# came from another process — as the SDK's encoder sets them.
LOCAL_PARENT = b"\x85\x01\x00\x01\x00\x00"
REMOTE_PARENT = b"\x85\x01\x00\x03\x00\x00"

_KEYS: dict[str, bytes] = {}  # attribute key → its encoded KeyValue.key field
_STRINGS: dict[tuple[int, str], bytes] = {}  # span and event names → their encoded field


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
        return b"%c%c%s" % (tag, n, payload)
    if n < 0x4000:
        return b"%c%s%s" % (tag, _VARINT2((n & 0x7F | 0x80) | (n >> 7) << 8), payload)
    return bytes((tag,)) + _varint(n) + payload


def string(tag: int, text: str) -> bytes:
    """A string field; names recur (span and event names), so their encodings are kept."""
    encoded = _STRINGS.get((tag, text))
    if encoded is None:
        encoded = _field(tag, text.encode())
        if len(_STRINGS) < 1024:
            _STRINGS[(tag, text)] = encoded
    return encoded


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message body."""
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
        return _field(0x32, b"".join([_field(0x0A, _field(0x0A, str(k).encode()) + _field(0x12, _any_value(v)))
                                      for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def attribute(tag: int, key: str, value: Any) -> bytes:
    """One attribute: a ``tag`` field holding a KeyValue. Short strings, ints below 16384, floats and
    short lists of short strings — nearly every attribute the sidecar sets — take one formatting step."""
    name = _KEYS.get(key)
    if name is None:
        name = _field(0x0A, key.encode())
        if len(_KEYS) < 4096:
            _KEYS[key] = name
    kind = value.__class__
    if kind is str:
        text = value.encode()
        n = len(text)
        size = len(name) + n + 4
        if size < 0x80:
            return b"%c%c%s\x12%c\x0a%c%s" % (tag, size, name, n + 2, n, text)
    elif kind is int:
        if 0 <= value < 0x80 and len(name) < 0x7C:
            return b"%c%c%s\x12\x02\x18%c" % (tag, len(name) + 4, name, value)
        if 0x80 <= value < 0x4000 and len(name) < 0x7B:
            return b"%c%c%s\x12\x03\x18%c%c" % (tag, len(name) + 5, name, (value & 0x7F) | 0x80, value >> 7)
    elif kind is float:
        if len(name) < 0x75:
            return b"%c%c%s\x12\x09\x21%s" % (tag, len(name) + 11, name, _DOUBLE(value))
    elif kind is list or kind is tuple:
        values = _strings(value)
        n = len(values)
        size = len(name) + n + 4
        if size < 0x80 and n < 0x7E:
            return b"%c%c%s\x12%c\x2a%c%s" % (tag, size, name, n + 2, n, values)
    return _field(tag, name + _field(0x12, _any_value(value)))


class _Key:
    """One attribute key's encodings, so that an attribute costs a lookup and a join: the KeyValue field's
    head for an int below 128, one below 16384, a float, and a string of each byte length (built as
    values need them). Keys too long for one-byte lengths (``short`` false) take ``attribute``."""

    __slots__ = ("float_head", "int1_head", "int2_head", "name", "short", "str_heads", "str_limit", "tag")

    def __init__(self, tag: int, key: str) -> None:
        self.tag = tag
        self.name = name = _field(0x0A, key.encode())
        self.short = len(name) < 0x70
        size = len(name) if self.short else 0
        self.int1_head = b"%c%c%s\x12\x02\x18" % (tag, size + 4, name)
        self.int2_head = b"%c%c%s\x12\x03\x18" % (tag, size + 5, name)
        self.float_head = b"%c%c%s\x12\x09\x21" % (tag, size + 11, name)
        self.str_limit = 0x7C - size if self.short else 0
        self.str_heads: list[bytes | None] = [None] * self.str_limit

    def str_head(self, n: int) -> bytes:
        """The head for a string value of ``n`` bytes (``n`` < ``str_limit``)."""
        name = self.name
        head = self.str_heads[n] = b"%c%c%s\x12%c\x0a%c" % (self.tag, len(name) + n + 4, name, n + 2, n)
        return head


_TABLES: dict[int, dict[str, _Key]] = {}
_SMALL = [bytes((n,)) for n in range(0x80)]


def attributes(tag: int, values: Mapping[str, Any]) -> bytes:
    """``values`` as ``tag`` fields: ``attribute`` for each, with the common cases inlined."""
    table = _TABLES.get(tag)
    if table is None:
        table = _TABLES[tag] = {}
    out: list[bytes] = []
    for key, value in values.items():
        encoder = table.get(key)
        if encoder is None:
            encoder = _Key(tag, key)
            if len(table) < 4096:
                table[key] = encoder
        if encoder.short:
            kind = value.__class__
            if kind is str:
                text = value.encode()
                n = len(text)
                if n < encoder.str_limit:
                    out += (encoder.str_heads[n] or encoder.str_head(n), text)
                    continue
            elif kind is int:
                if 0 <= value < 0x80:
                    out += (encoder.int1_head, _SMALL[value])
                    continue
                if 0x80 <= value < 0x4000:
                    out += (encoder.int2_head, _VARINT2((value & 0x7F | 0x80) | (value >> 7) << 8))
                    continue
            elif kind is float:
                out += (encoder.float_head, _DOUBLE(value))
                continue
            elif kind is list or kind is tuple:
                values_ = _strings(value)
                n = len(values_)
                if n < encoder.str_limit:  # the same length limit as a string's: the array is one more level
                    out += (b"%c%c%s\x12%c\x2a%c" % (tag, len(encoder.name) + n + 4, encoder.name, n + 2, n), values_)
                    continue
        out.append(attribute(tag, key, value))
    return b"".join(out)


def _strings(values: Sequence[Any]) -> bytes:
    """An ArrayValue's body (its ``values``, 1) for short strings; any other element takes ``_any_value``."""
    out = []
    for value in values:
        if value.__class__ is str:
            text = value.encode()
            if len(text) < 0x7E:
                out.append(b"\x0a%c\x0a%c%s" % (len(text) + 2, len(text), text))
                continue
        out.append(_field(0x0A, _any_value(value)))
    return b"".join(out)


def retag(field: bytes, tag: int) -> bytes:
    """One encoded attribute field under another tag: what follows the tag byte does not depend on it."""
    return b"%c%s" % (tag, field[1:])


def error_status(message: str) -> bytes:
    """Status ERROR with a description."""
    return _field(0x7A, _field(0x12, message.encode()) + b"\x18\x02")


def event(time: int, body: bytes) -> bytes:
    """A ``Span.events`` field: time (1, fixed64), then ``body``: its name (2, ``string(0x12, …)``) and
    attributes (3), encoded."""
    return _field(0x5A, b"\x09" + _FIXED64(time) + body)


def trace_state(header: str) -> bytes:
    """The ``Span.trace_state`` field (3) for a W3C ``tracestate`` value; nothing when empty."""
    return _field(0x1A, header.encode()) if header else b""


def ids(trace_id: bytes, span_id: bytes, parent_id: bytes | None, state: bytes = b"") -> bytes:
    """A span's first fields: trace id (1), span id (2), trace state (3), parent span id (4). Ids are the
    big-endian bytes the W3C headers show in hex."""
    if parent_id is None:
        return b"\x0a\x10%s\x12\x08%s%s" % (trace_id, span_id, state)
    return b"\x0a\x10%s\x12\x08%s%s\x22\x08%s" % (trace_id, span_id, state, parent_id)


def span(ids_: bytes, name: bytes, kind: bytes, start: int, end: int, body: bytes, status: bytes,
         flags: bytes) -> bytes:
    """One ``ScopeSpans.spans`` entry: ``ids_`` from ``ids``, ``name`` an encoded field (``string(0x2A, …)``),
    ``body`` its attributes then its events (already encoded). Fields in the .proto's order."""
    return _field(0x12, b"".join((ids_, name, kind, _TIMES(0x39, start, 0x41, end), body, status, flags)))


class Envelope:
    """The resource and instrumentation scope this process's spans share, encoded once; ``request``
    wraps a batch of encoded spans into an ``ExportTraceServiceRequest``."""

    __slots__ = ("resource", "schema", "scope")

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str,
                 schema_url: str = "") -> None:
        self.resource = _field(0x0A, attributes(RESOURCE_ATTRIBUTE, resource))
        self.scope = _field(0x0A, _field(0x0A, scope_name.encode()) + _field(0x12, scope_version.encode()))
        self.schema = _field(0x1A, schema_url.encode()) if schema_url else b""

    def request(self, spans: Sequence[bytes]) -> bytes:
        """One ``ResourceSpans`` (1) holding one ``ScopeSpans`` (2): the spans are copied once."""
        inner = len(self.scope) + sum(map(len, spans))
        inner_size = _varint(inner)
        outer = len(self.resource) + 1 + len(inner_size) + inner + len(self.schema)
        return b"".join((b"\x0a", _varint(outer), self.resource, b"\x12", inner_size, self.scope, *spans,
                         self.schema))
