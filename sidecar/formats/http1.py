"""Sans-I/O HTTP/1.1 response parser for the upstream client (``providers.wire``).

``ResponseParser.feed(bytes)`` returns the whole ``Response`` once it is complete, ``None`` while more bytes
are needed, or raises ``BadResponse``; ``eof()`` is called when the server closes the connection. In stream
mode (``reset(stream=True)``) ``feed_stream(bytes)`` parses the head (``status``, ``headers``) and then leaves
the de-chunked body bytes for ``take()`` as they arrive, never the whole body at once, with no size limit:
the reader's backpressure bounds what waits here. Bodies are
framed by content-length, chunked transfer-encoding (trailers read and dropped) or, failing both, by the
close of the connection. It parses only what our requests can meet: answers to a POST that asked for no
compression and no upgrade. Like ``formats.sse`` it does no I/O, so every byte split is unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 64 * 1024  # status line + headers; nginx's default limit for requests is 8 KiB
MAX_BODY = 64 * 1024 * 1024  # a chat answer is kilobytes; an embedding batch a few MiB
_NO_LIMIT = 1 << 62  # streams: bytes are handed on as they come, so their total is not held anywhere
_MAX_CHUNK_LINE = 4096  # a chunk size line with extensions
_HEX = b"0123456789abcdefABCDEF"

# Body framing, and the states inside a chunked body.
_LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2
_SIZE, _DATA, _TRAILER = 0, 1, 2


class BadResponse(Exception):
    """The bytes are not a valid HTTP/1.x response (or exceed our limits)."""


class TooLarge(BadResponse):
    """The response is bigger than ``max_body`` (or its head bigger than ``MAX_HEAD``)."""


class CutOff(Exception):
    """The connection closed after part of a response arrived, before its end."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated fields joined with ", "
    body: bytes
    reusable: bool  # keep-alive: HTTP/1.1, no ``connection: close``, and nothing after the body


class ResponseParser:
    """One response at a time; ``reset()`` before the next request on the same connection."""

    __slots__ = ("_buf", "_chunk", "_framing", "_headers", "_keep_alive", "_limit", "_pieces", "_remaining",
                 "_status", "_total", "max_body", "pending")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        self.reset()

    def reset(self, stream: bool = False) -> None:
        self._buf = bytearray()
        self._limit = _NO_LIMIT if stream else self.max_body
        self.pending = 0  # body bytes parsed and not yet taken (stream mode)
        self._status = 0  # 0 until the (final, non-1xx) head is parsed
        self._headers: dict[str, str] = {}
        self._framing = _LENGTH
        self._keep_alive = True
        self._remaining = 0
        self._chunk = _SIZE
        self._pieces: list[bytes] = []
        self._total = 0

    def feed(self, data: bytes) -> Response | None:
        buf = self._buf
        buf += data
        if not self._status and not self._head(buf):
            return None
        if self._framing == _LENGTH:
            if len(buf) < self._remaining:
                return None
            if len(buf) > self._remaining:  # bytes after the body: the connection's state is unknown
                self._keep_alive = False
                body = bytes(buf[:self._remaining])
            else:
                body = bytes(buf)
            buf.clear()
            return self._done(body)
        if self._framing == _CHUNKED:
            return self._done(b"".join(self._pieces)) if self._parse_chunks() else None
        self._take(len(buf))
        self._pieces.append(bytes(buf))
        buf.clear()
        return None

    # ---- stream mode ------------------------------------------------------------------------------------

    @property
    def status(self) -> int:
        """The status once the (final) head is in, else 0; stream mode only (``feed`` clears it when done)."""
        return self._status

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    @property
    def reusable(self) -> bool:
        return self._keep_alive

    def feed_stream(self, data: bytes) -> bool:
        """Parse ``data`` in stream mode: body bytes wait for ``take()``; True once the response is complete."""
        buf = self._buf
        buf += data
        if not self._status and not self._head(buf):
            return False
        framing = self._framing
        if framing == _CHUNKED:
            return self._parse_chunks()
        n = len(buf)
        if framing == _LENGTH:
            if n > self._remaining:  # bytes after the body: the connection's state is unknown
                self._keep_alive = False
                n = self._remaining
            self._remaining -= n
        if n:
            self._pieces.append(bytes(buf[:n]))
            self.pending += n
        buf.clear()
        return framing == _LENGTH and not self._remaining

    def take(self) -> bytes:
        """The body bytes parsed since the last ``take()`` (b"" if none)."""
        pieces = self._pieces
        if not pieces:
            return b""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.pending = 0
        return data

    def eof_stream(self) -> None:
        """The server closed the connection in stream mode: the end of a read-until-close body, else ``CutOff``."""
        if not (self._status and self._framing == _UNTIL_CLOSE):
            raise CutOff("the connection closed before the end of the response")

    # ---- both modes -----------------------------------------------------------------------------------

    def _head(self, buf: bytearray) -> bool:
        """Parse the head out of ``buf``; True once the final (non-1xx) one is in."""
        while not self._status:  # a loop: interim 1xx answers (103 Early Hints) come before the real one
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise TooLarge("response head too large")
                return False
            if end > MAX_HEAD:
                raise TooLarge("response head too large")
            head = buf[:end].decode("latin-1")
            del buf[:end + 4]
            self._parse_head(head)
        return True

    def eof(self) -> Response:
        """The server closed the connection: the end of a read-until-close body, otherwise ``CutOff``."""
        if self._status and self._framing == _UNTIL_CLOSE:
            return self._done(b"".join(self._pieces))
        raise CutOff("the connection closed before the end of the response")

    def _done(self, body: bytes) -> Response:
        response = Response(self._status, self._headers, body, self._keep_alive)
        self._status = 0  # the next feed() is unsolicited unless reset() is called
        return response

    def _take(self, n: int) -> None:
        self._total += n
        if self._total > self._limit:
            raise TooLarge("response body too large")

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if (version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit() or not code.isascii()
                or (len(rest) > 3 and rest[3] != " ")):
            raise BadResponse("malformed status line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            # No whitespace in or around a field name (RFC 9112 §5.1), no obsolete line folding.
            if not colon or not name or name != name.strip() or " " in name or "\t" in name:
                raise BadResponse("malformed header line")
            name = name.lower()
            value = value.strip(" \t")
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"
        status = int(code)
        if status < 200:
            if status == 101:
                raise BadResponse("unexpected protocol switch")
            return  # interim answer: the final one follows
        self._status, self._headers = status, headers
        self._keep_alive = version == "HTTP/1.1"
        connection = headers.get("connection")
        if connection is not None and "close" in (t.strip() for t in connection.lower().split(",")):
            self._keep_alive = False
        self._set_framing(status, headers)

    def _set_framing(self, status: int, headers: dict[str, str]) -> None:
        coding = headers.get("transfer-encoding")
        if status in (204, 304):
            self._framing, self._remaining = _LENGTH, 0
        elif coding is not None:
            if coding.lower().rsplit(",", 1)[-1].strip() == "chunked":
                self._framing = _CHUNKED
            else:  # RFC 9112 §6.3: a response with another final coding is read until the close
                self._framing, self._keep_alive = _UNTIL_CLOSE, False
        elif (length := headers.get("content-length")) is not None:
            self._framing, self._remaining = _LENGTH, _content_length(length)
            self._take(self._remaining)
        else:
            self._framing, self._keep_alive = _UNTIL_CLOSE, False

    def _parse_chunks(self) -> bool:
        """Consume what ``_buf`` holds of a chunked body; True once the last chunk and trailers are in."""
        buf = self._buf
        while True:
            if self._chunk == _DATA:
                need = self._remaining + 2
                if len(buf) < need:
                    return False
                if buf[need - 2:need] != b"\r\n":
                    raise BadResponse("malformed chunk")
                self._pieces.append(bytes(buf[:self._remaining]))
                self.pending += self._remaining
                del buf[:need]
                self._chunk = _SIZE
                continue
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > (_MAX_CHUNK_LINE if self._chunk == _SIZE else MAX_HEAD):
                    raise BadResponse("chunk size or trailer line too long")
                return False
            line = bytes(buf[:eol])
            del buf[:eol + 2]
            if self._chunk == _TRAILER:
                if not line:  # the empty line after the trailers ends the message
                    if buf:
                        self._keep_alive = False
                    return True
                self._take(len(line))  # trailers count against the body's limit
                continue
            size = line.split(b";", 1)[0].strip(b" \t")
            if not size or size.strip(_HEX):  # int(x, 16) alone would accept "0x1f", "+1f" and "1_f"
                raise BadResponse("malformed chunk size")
            self._remaining = int(size, 16)
            if self._remaining:
                self._take(self._remaining)
                self._chunk = _DATA
            else:
                self._chunk = _TRAILER


def _content_length(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        values = {v.strip() for v in value.split(",")}  # "5, 5": the same field repeated is allowed
        value = values.pop()
        if values or not (value.isascii() and value.isdigit()):
            raise BadResponse("invalid content-length")
    return int(value)
