"""Sans-I/O Server-Sent Events: feed bytes in, get whole events out; encode events back.

Only what LLM streams use: ``event:`` and ``data:`` fields (multi-line data joined with ``\\n``), comments
ignored, LF, CRLF or CR line endings. The decoder holds at most one unfinished event, of at most
``max_event`` bytes — a longer one is the upstream's error, not a memory spike — and its work is linear
in the bytes fed: each piece is scanned once, however long the event it belongs to.
"""

from __future__ import annotations

from typing import NamedTuple

from sidecar.core.errors import UpstreamServerError

DONE = b"[DONE]"
MAX_EVENT = 4 * 1024 * 1024  # the default of sidecar_settings.limits.upstream_sse_event_mb


class Event(NamedTuple):  # a tuple: cheaper to make than a frozen dataclass, one per event
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Incremental decoder: ``feed(chunk)`` returns the events completed by that chunk."""

    __slots__ = ("_cr", "_max", "_newline", "_parts", "_size")

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._max = max_event
        self._parts: list[bytes] = []  # the unfinished event, line ends already normalized to LF
        self._size = 0
        self._newline = False  # the unfinished event ends with LF: a chunk starting with LF completes it
        self._cr = False  # the last chunk ended with CR, maybe the first half of CRLF: the next one decides

    def feed(self, chunk: bytes) -> list[Event]:
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[Event] = []
        start = 0
        parts = self._parts
        if parts:  # the event begun in earlier chunks: only this chunk is searched for its end
            if self._newline and chunk[:1] == b"\n":
                block, start = b"".join(parts)[:-1], 1
            else:
                end = chunk.find(b"\n\n")
                if end < 0:
                    self._hold(chunk)
                    return events
                block, start = b"".join(parts) + chunk[:end], end + 2
            parts.clear()
            self._size = 0
            _append(events, block)
        while True:
            end = chunk.find(b"\n\n", start)
            if end < 0:
                break
            _append(events, chunk[start:end])
            start = end + 2
        if start < len(chunk):
            self._hold(chunk[start:] if start else chunk)
        return events

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._size > self._max:
            self._parts.clear()
            self._size = 0
            raise UpstreamServerError(f"an event of the upstream's stream is longer than {self._max} bytes",
                                      upstream_status=200, cause="sse_event_too_large")
        self._parts.append(piece)
        self._newline = piece.endswith(b"\n")

    def flush(self) -> list[Event]:
        """Events left when the stream ended without a final blank line."""
        block = b"".join(self._parts).rstrip(b"\n")
        self._parts.clear()
        self._size, self._cr = 0, False
        event = _parse_block(block) if block else None
        return [event] if event is not None else []

    @property
    def pending(self) -> int:
        """Bytes of an event not yet complete."""
        return self._size


def _append(events: list[Event], block: bytes) -> None:
    event = _parse_block(block)
    if event is not None:
        events.append(event)


def _parse_block(block: bytes) -> Event | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # the common case: one data line
        return Event(block[6:])
    data: list[bytes] = []
    name: str | None = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data and name is None:
        return None
    return Event(b"\n".join(data), name)


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One SSE event. ``data`` with line breaks (an upstream's event of several ``data:`` lines) gets one
    ``data:`` line per line, so that no line inside it can end the event or start another."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


DONE_EVENT = encode_event(DONE)
