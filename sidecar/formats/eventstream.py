"""AWS's binary ``application/vnd.amazon.eventstream`` framing (Bedrock's ConverseStream), read with a cap (pure).

A frame: a 12-byte prelude — total length, headers length (big-endian uint32 each) and the CRC32 of those 8
bytes — then the headers, the payload, and the CRC32 of everything before it. botocore's reader accepts a
frame of up to 24 MiB and appends to one ``bytes`` per read (quadratic in a large frame); this one refuses a
frame longer than the deployment's event limit (``upstream_sse_event_mb``) as soon as its prelude arrives, keeps
the pieces in a ``bytearray``, and raises ``FrameError`` for anything malformed, so that a reader never meets
a ``KeyError``, ``struct.error`` or ``UnicodeDecodeError`` of a parser's own.
"""

from __future__ import annotations

import struct
from zlib import crc32

PRELUDE = 12
MAX_HEADERS = 128 * 1024  # the service's own limit on a frame's headers
# value types (AWS event-stream specification): fixed-size values' lengths; 6 (bytes) and 7 (string) carry a length
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_INTS = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


class FrameError(ValueError):
    """The framing cannot be trusted from here on: a bad CRC, an impossible length, a malformed header.
    ``frames``: the whole frames of the same read before it (theirs to use)."""

    frames: list[tuple[dict[str, object], bytes]] = []


class TooLarge(FrameError):
    """A frame longer than the reader's limit."""


class FrameDecoder:
    """Bytes in any split → whole frames as (headers, payload); at most ``max_frame`` bytes per frame."""

    __slots__ = ("buffer", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.buffer = bytearray()
        self.max_frame = max_frame

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a whole frame."""
        return len(self.buffer)

    def feed(self, data: bytes) -> list[tuple[dict[str, object], bytes]]:
        self.buffer += data
        frames: list[tuple[dict[str, object], bytes]] = []
        try:
            self._frames(frames)
        except FrameError as error:
            error.frames = frames
            raise
        return frames

    def _frames(self, frames: list[tuple[dict[str, object], bytes]]) -> None:
        while len(self.buffer) >= PRELUDE:
            total, headers, prelude_crc = struct.unpack_from(">III", self.buffer)
            if crc32(self.buffer[:8]) != prelude_crc:
                raise FrameError("bad prelude checksum")
            if headers > MAX_HEADERS or total < PRELUDE + headers + 4:
                raise FrameError("impossible frame lengths")
            if total > self.max_frame:
                raise TooLarge(f"a frame of {total} bytes")
            if len(self.buffer) < total:
                break
            frame = bytes(self.buffer[:total])
            del self.buffer[:total]
            if crc32(frame[:-4]) != struct.unpack_from(">I", frame, total - 4)[0]:
                raise FrameError("bad message checksum")
            frames.append((_headers(frame[PRELUDE:PRELUDE + headers]), frame[PRELUDE + headers:-4]))


def _headers(data: bytes) -> dict[str, object]:
    headers: dict[str, object] = {}
    at = 0
    try:
        while at < len(data):
            size = data[at]
            name = data[at + 1:at + 1 + size].decode()
            kind = data[at + 1 + size]
            at += 2 + size
            if kind in _FIXED:
                length = _FIXED[kind]
                raw = data[at:at + length]
                if len(raw) != length:
                    raise FrameError("a header value runs past the headers")
                value: object = kind == 0 if kind in (0, 1) else \
                    struct.unpack(_INTS[kind], raw)[0] if kind in _INTS else raw
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", data, at)
                at += 2
                raw = data[at:at + length]
                if len(raw) != length:
                    raise FrameError("a header value runs past the headers")
                value = raw.decode() if kind == 7 else raw
            else:
                raise FrameError(f"unknown header value type {kind}")
            headers[name] = value
            at += length
    except (IndexError, struct.error, UnicodeDecodeError):
        raise FrameError("malformed headers") from None
    return headers
