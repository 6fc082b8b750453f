"""Sans-I/O Server-Sent Events: feed bytes in, get whole events out; encode events back.

Only what LLM streams use: ``event:`` and ``data:`` fields (multi-line data joined with ``\\n``), comments
ignored, LF, CRLF or CR line endings. The decoder never holds more than one unfinished event.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE = b"[DONE]"


@dataclass(frozen=True, slots=True)
class Event:
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Incremental decoder: ``feed(chunk)`` returns the events completed by that chunk."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A lone trailing CR may be the first half of CRLF: keep it until the next chunk decides.
            tail = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(tail)].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        events: list[Event] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            event = _parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[Event]:
        """Events left when the stream ended without a final blank line."""
        block, self._buffer = self._buffer.rstrip(b"\r\n"), b""
        event = _parse_block(block.replace(b"\r\n", b"\n")) if block else None
        return [event] if event is not None else []

    @property
    def pending(self) -> int:
        """Bytes of an event not yet complete."""
        return len(self._buffer)


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
    """One SSE event. ``data`` must not contain a blank line (JSON from orjson never does)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


DONE_EVENT = encode_event(DONE)
