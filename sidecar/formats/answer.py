"""A whole HTTP answer and what its body costs: ``Response``, the memory all whole answers may hold
(``AnswerMemory``), content codings (gzip, deflate), and the errors of reading one. Used by ``http1``'s parser;
no I/O.
"""

from __future__ import annotations

import zlib

DECODE_STEP = 256 * 1024  # most decoded bytes a stream's decoder hands out per call


class BadResponse(Exception):
    """The bytes are not a valid HTTP/1.x response (or exceed our limits)."""


class TooLarge(BadResponse):
    """The response is bigger than ``max_body`` (or its head bigger than ``MAX_HEAD``)."""


class OutOfMemory(TooLarge):
    """Taking this body would exceed the memory all upstream answers may hold together."""


class BadEncoding(BadResponse):
    """A content-encoding we do not decode, or compressed bytes that do not decode."""


class CutOff(Exception):
    """The connection closed after part of a response arrived, before its end."""


class Response:
    """A whole answer. ``headers`` (lower-cased names; repeated fields joined with ", ") are split from the
    raw head only when read — on the success path nobody reads them."""

    __slots__ = ("_headers", "_raw", "body", "reusable", "status")

    def __init__(self, status: int, headers: dict[str, str] | None, body: bytes, reusable: bool,
                 raw: bytes = b"") -> None:
        self.status = status
        self._headers = headers
        self._raw = raw
        self.body = body
        self.reusable = reusable  # keep-alive: HTTP/1.1, no ``connection: close``, and nothing after the body

    @property
    def headers(self) -> dict[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = fields(self._raw)
        return headers

    def quota_fields(self) -> dict[str, str] | None:
        """The headers when the head has rate-limit fields (``x-ratelimit-*``, ``anthropic-ratelimit-*``), else
        None — found with a search of the raw head, so an answer without them is not split."""
        if self._headers is None:
            raw = self._raw
            if b"atelimit-" not in raw and b"ateLimit-" not in raw:  # x-ratelimit-, X-RateLimit-, anthropic-ratelimit-
                return None
        return self.headers

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Response) and (self.status, self.headers, self.body, self.reusable) == (
            other.status, other.headers, other.body, other.reusable)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers!r}, {len(self.body)} bytes, reusable={self.reusable})"


class HeldResponse(Response):
    """A large answer: what its body takes of ``AnswerMemory`` is given back when the answer is let go of
    (after the adapter parsed it), not when it left the connection."""

    __slots__ = ("_held", "_memory")

    def __init__(self, status: int, headers: dict[str, str] | None, body: bytes, reusable: bool, raw: bytes,
                 memory: AnswerMemory, held: int) -> None:
        super().__init__(status, headers, body, reusable, raw)
        self._memory, self._held = memory, held

    def __del__(self) -> None:
        self._memory.give(self._held)


class AnswerMemory:
    """The bytes that whole (non-streamed) upstream answers hold in memory at once, over all requests.

    A parser takes from it as body bytes arrive and gives everything back when the answer is handed on,
    fails, or its connection is dropped; a body that would take more than is left is refused (``OutOfMemory``).
    """

    __slots__ = ("limit", "peak", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        used = self.used + n
        if used > self.limit:
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def give(self, n: int) -> None:
        self.used -= n


def fields(raw: bytes) -> dict[str, str]:
    """Header fields of a head llhttp accepted: lower-case names, repeated fields joined with ", "."""
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        name, value = name.lower(), value.strip(" \t")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    return headers


class Decoder:
    """Decodes a gzip or deflate body as it arrives, at most ``DECODE_STEP`` bytes out per call.

    ``feed(data)`` returns what ``data`` decodes to (b"" if it needs more input); while ``more`` is True,
    ``feed(b"")`` gives the rest without more input — so a small compressed piece that expands hugely is
    handed on step by step, never decoded whole. ``finish()`` checks the compressed stream ended.
    """

    __slots__ = ("_fed", "_gzip", "_z")

    def __init__(self, coding: str) -> None:
        self._gzip = coding in ("gzip", "x-gzip")
        self._z = zlib.decompressobj(31) if self._gzip else None
        self._fed = False  # a compressed byte arrived (an empty body is left alone)

    @property
    def more(self) -> bool:
        return self._z is not None and bool(self._z.unconsumed_tail)

    def feed(self, data: bytes) -> bytes:
        z = self._z
        if z is None:  # deflate: zlib-wrapped as RFC 9110 says, or raw as some servers send it
            if not data:
                return b""
            z = self._z = zlib.decompressobj(15 if _zlib_header(data) else -15)
        self._fed = self._fed or bool(data)
        try:
            if z.unconsumed_tail:
                data = z.unconsumed_tail + data
            out = z.decompress(data, DECODE_STEP)
            if z.eof and z.unused_data and self._gzip:  # concatenated gzip members
                rest = z.unused_data
                self._z = zlib.decompressobj(31)
                out += self._z.decompress(rest, DECODE_STEP)
        except zlib.error:
            raise BadEncoding("the compressed body does not decode") from None
        return out

    def finish(self) -> None:
        if self._fed and self._z is not None and not self._z.eof:
            raise BadEncoding("the compressed body ended early")


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def decoder_for(coding: str | None) -> Decoder | None:
    """A decoder for an answer's content-encoding (None for none or identity); ``BadEncoding`` for others."""
    if coding is None:
        return None
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise BadEncoding(f"unsupported content-encoding {coding[:32]!r}")
    return Decoder(coding)


def decode_body(coding: str, body: bytes, limit: int) -> bytes:
    """A whole body decoded; ``TooLarge`` once the decoded bytes pass ``limit``."""
    decoder = decoder_for(coding)
    if decoder is None:
        return body
    pieces, size = [], 0
    piece = decoder.feed(body)
    while piece:
        size += len(piece)
        if size > limit:
            raise TooLarge("decoded response body too large")
        pieces.append(piece)
        piece = decoder.feed(b"") if decoder.more else b""
    decoder.finish()
    return b"".join(pieces)
