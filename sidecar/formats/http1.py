"""Sans-I/O HTTP/1.1 response parsing for the upstream client (``providers.wire``), on httptools (llhttp).

llhttp — the parser of Node.js, used in Python by uvicorn — does the framing (content-length, chunked with
extensions and trailers, read-until-close) with its strictness: bare-LF line ends, control characters in
field values, obsolete line folding, a content-length together with chunked, a malformed chunk size are all
errors. On top of it this module adds what our client needs: a final status of 100-599 (interim 1xx
answers skipped, 101 refused), HTTP/1.0 or 1.1 only, a cap on the head and on any run of bytes that
makes no progress (an endless header or trailer line), a cap on a whole body and on the bytes all whole
bodies hold together, and the decoding of gzip/deflate bodies (both in ``formats.answer``).

``ResponseParser.feed(bytes)`` returns the whole ``Response`` once it is complete, ``None`` while more bytes
are needed, or raises ``BadResponse``; ``eof()`` is called when the server closes the connection. In stream
mode (``reset(stream=True)``) ``feed_stream(bytes)`` parses the head (``status``, ``headers``) and leaves the
de-chunked body bytes for ``take()`` as they arrive — a chunk announced as a gigabyte is handed on piece by
piece, never gathered whole; the reader's backpressure bounds what waits here.

Reference cycles are avoided on purpose: the llhttp parser holds its callbacks object (``_Message``), which
holds the parser only weakly, and errors met inside callbacks are noted, never raised through C, so a body
being read is freed by reference counting the moment its request lets go of it.
"""

from __future__ import annotations

import weakref

import httptools

from sidecar.formats.answer import (
    DECODE_STEP,
    AnswerMemory,
    BadEncoding,
    BadResponse,
    CutOff,
    Decoder,
    HeldResponse,
    OutOfMemory,
    Response,
    TooLarge,
    decode_body,
    decoder_for,
    fields,
)

__all__ = ["DECODE_STEP", "MAX_BODY", "MAX_HEAD", "AnswerMemory", "BadEncoding", "BadResponse", "CutOff", "Decoder",
           "HeldResponse", "OutOfMemory", "Response", "ResponseParser", "TooLarge", "decode_body", "decoder_for"]

MAX_HEAD = 64 * 1024  # status line + headers; also the most bytes fed in a row without progress
MAX_BODY = 64 * 1024 * 1024  # a whole answer's default cap (``sidecar_settings.limits`` sets the real one)
HOLD_FROM = 64 * 1024  # a whole body this large keeps its share of ``AnswerMemory`` for as long as it lives
_NO_LIMIT = 1 << 62


class _Llhttp(httptools.HttpResponseParser):
    __slots__ = ("__weakref__",)  # so that ``_Message`` can hold it weakly


class _Message:
    """httptools' callbacks for one response: what they learn, and the first error they met.

    Header fields get no callback each (most answers' headers are never read): the final head's raw bytes
    are kept, already validated by llhttp, and split into ``headers`` only when someone asks.
    """

    __slots__ = ("_headers", "coded", "complete", "error", "head_done", "interim", "keep_alive", "limit", "memory",
                 "parser", "pieces", "progress", "raw", "size", "status")

    def __init__(self, limit: int, memory: AnswerMemory | None) -> None:
        self.parser: weakref.ref[_Llhttp] | None = None
        self.restart(limit, memory)

    def restart(self, limit: int, memory: AnswerMemory | None) -> None:
        self.limit = limit
        self.memory = memory  # None in stream mode: a stream's bytes are not held
        self.status = 0  # 0 until the final (non-1xx) head is in
        self.interim = 0  # interim (1xx) heads before it
        self.raw = b""  # the final head's bytes
        self.coded = False  # the head names a content-encoding
        self._headers: dict[str, str] | None = None
        self.keep_alive = False
        self.head_done = False
        self.complete = False
        self.progress = False  # a head or body bytes came out of the last feed
        self.pieces: list[bytes] = []
        self.size = 0  # body bytes taken (and, in whole mode, taken from ``memory``)
        self.error: BadResponse | None = None

    @property
    def headers(self) -> dict[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = fields(self.raw)
        return headers

    def on_message_begin(self) -> None:
        if self.complete:  # a second response after ours: the connection's state is unknown
            self.keep_alive = False

    def on_headers_complete(self) -> None:
        parser = self.parser() if self.parser is not None else None
        assert parser is not None
        self.progress = True
        if self.head_done or self.error is not None:
            return
        status = parser.get_status_code()
        version = parser.get_http_version()
        if status < 100 or status > 599 or version not in ("1.1", "1.0"):
            self.error = BadResponse("malformed status line")
        elif status < 200:
            self.interim += 1  # an interim answer (103 Early Hints, 100 Continue): the final one follows
        else:
            self.status, self.head_done = status, True
            # llhttp's keep-alive: no "connection: close", and a body framed by length or chunks
            self.keep_alive = version == "1.1" and parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self.progress = True
        n = len(data)
        size = self.size + n
        if self.error is not None or self.complete:
            return
        if size > self.limit:
            self.error = TooLarge("response body too large")
            return
        memory = self.memory
        if memory is not None and not memory.take(n):
            self.error = OutOfMemory("upstream answers hold too much memory")
            return
        self.size = size
        self.pieces.append(data)

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True

    @property
    def until_close(self) -> bool:
        """The body ends with the connection (no content-length, no chunked framing)."""
        if self.status in (204, 304):
            return False
        headers = self.headers
        coding = headers.get("transfer-encoding")
        if coding is not None:  # RFC 9112 §6.3: a final coding other than chunked is read until the close
            return coding.lower().rsplit(",", 1)[-1].strip() != "chunked"
        return "content-length" not in headers

    def fail(self) -> BadResponse:
        """The error met, once; what the body held is given back."""
        error, self.error = self.error, None
        assert error is not None
        self.release()
        return error

    def release(self) -> None:
        """Give the body's bytes back to ``memory`` and forget them (idempotent)."""
        if self.memory is not None and self.size:
            self.memory.give(self.size)
        self.size = 0
        self.pieces = []


def _length(head: bytes, at: int) -> int:
    """The content-length value starting at ``at`` (llhttp checked it is digits, given once)."""
    end = head.find(b"\r", at)
    return int(head[at:end if end >= 0 else len(head)])


def _final_head(data: bytes, interim: int) -> bytes:
    """The final head's bytes (status line and fields, without the blank line) from the start of ``data``."""
    start = 0
    for _ in range(interim):
        start = data.index(b"\r\n\r\n", start) + 4
    return data[start:data.index(b"\r\n\r\n", start)]


class ResponseParser:
    """One response at a time; ``reset()`` before the next request on the same connection."""

    __slots__ = ("_head", "_llhttp", "_message", "_stalled", "max_body", "memory", "pending")

    def __init__(self, max_body: int = MAX_BODY, memory: AnswerMemory | None = None) -> None:
        self.max_body = max_body
        self.memory = memory
        self._message: _Message | None = None
        self.reset()

    def reset(self, stream: bool = False) -> None:
        limit, memory = (_NO_LIMIT, None) if stream else (self.max_body, self.memory)
        message = self._message
        if message is not None and message.complete and message.error is None and message.keep_alive:
            message.release()
            message.restart(limit, memory)  # llhttp is ready for the next response on this connection
        else:
            if message is not None:
                message.release()
            self._message = message = _Message(limit, memory)
            self._llhttp = parser = _Llhttp(message)
            message.parser = weakref.ref(parser)
        self._head = b""  # the bytes of a head that arrived in pieces
        self._stalled = 0
        self.pending = 0  # body bytes parsed and not yet taken (stream mode)

    def close(self) -> None:
        """The connection is gone: give back what the body held."""
        if self._message is not None:
            self._message.release()

    def feed(self, data: bytes) -> Response | None:
        message = self._parse(data)
        if not message.complete:
            return None
        return self._done(message)

    def eof(self) -> Response:
        """The server closed the connection: the end of a read-until-close body, otherwise ``CutOff``."""
        message = self._msg
        if message.status and not message.complete and message.until_close and message.error is None:
            message.complete = True
            return self._done(message)
        message.release()
        raise CutOff("the connection closed before the end of the response")

    @property
    def _msg(self) -> _Message:
        message = self._message
        assert message is not None
        return message

    def _done(self, message: _Message) -> Response:
        pieces = message.pieces
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        memory, held = message.memory, message.size
        message.pieces, message.size = [], 0  # what the body holds of ``memory`` goes with it from here
        try:
            coding = self.coding
            if coding is not None:
                body = decode_body(coding, body, self.max_body)
                if memory is not None:  # the decoded body takes the compressed one's place
                    if not memory.take(len(body)):
                        raise OutOfMemory("upstream answers hold too much memory")
                    memory.give(held)
                    held = len(body)
        except BaseException:
            if memory is not None:
                memory.give(held)
            raise
        status, message.status = message.status, 0  # the next feed() is unsolicited unless reset() is called
        if memory is None or held < HOLD_FROM:
            if memory is not None:
                memory.give(held)
            return Response(status, message._headers, body, message.keep_alive, message.raw)
        return HeldResponse(status, message._headers, body, message.keep_alive, message.raw, memory, held)

    def _parse(self, data: bytes) -> _Message:
        message = self._msg
        message.progress = False
        head_done = message.head_done
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserUpgrade:
            message.error = message.error or BadResponse("unexpected protocol switch")
        except httptools.HttpParserError:
            if message.complete:  # garbage after our response: the connection's state is unknown
                message.keep_alive = False
            elif message.error is None:
                message.error = BadResponse("malformed response")
        if not head_done and message.error is None:
            self._keep_head(message, data)
        if message.progress:
            self._stalled = 0
        else:
            self._stalled += len(data)
            if self._stalled > MAX_HEAD and message.error is None:
                message.error = TooLarge("response head, chunk line or trailers too large")
        if message.error is not None:
            raise message.fail()  # no local names the error: its traceback's frames do not hold it
        return message

    def _keep_head(self, message: _Message, data: bytes) -> None:
        """Keep the final head's bytes once it is in; until then, what arrived of it."""
        if message.head_done:
            message.raw = raw = _final_head(self._head + data if self._head else data, message.interim)
            self._head = b""
            lower = raw.lower()
            message.coded = b"\ncontent-encoding:" in lower
            at = lower.find(b"\ncontent-length:")
            if at >= 0 and _length(lower, at + 16) > message.limit:
                message.error = TooLarge("response body too large")  # refused before its bytes are read
        else:
            self._head += data  # bounded: MAX_HEAD bytes without a head are an error

    @property
    def coding(self) -> str | None:
        """The answer's content-encoding, if it has one (found without splitting the head when it has none)."""
        message = self._msg
        return message.headers.get("content-encoding") if message.coded else None

    # ---- stream mode ------------------------------------------------------------------------------------

    @property
    def status(self) -> int:
        """The status once the (final) head is in, else 0; stream mode only (``feed`` clears it when done)."""
        return self._msg.status

    @property
    def headers(self) -> dict[str, str]:
        return self._msg.headers

    def head(self) -> Response:
        """The head alone (no body), its fields split when read: what a stream keeps of it."""
        message = self._msg
        return Response(message.status, message._headers, b"", False, message.raw)

    @property
    def reusable(self) -> bool:
        return self._msg.keep_alive

    def feed_stream(self, data: bytes) -> bool:
        """Parse ``data`` in stream mode: body bytes wait for ``take()``; True once the response is complete."""
        message = self._parse(data)
        self.pending = message.size
        return message.complete

    def take(self) -> bytes:
        """The body bytes parsed since the last ``take()`` (b"" if none)."""
        message = self._msg
        pieces = message.pieces
        if not pieces:
            return b""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        message.size = self.pending = 0
        return data

    def eof_stream(self) -> None:
        """The server closed the connection in stream mode: the end of a read-until-close body, else ``CutOff``."""
        message = self._msg
        if not (message.status and message.until_close):
            raise CutOff("the connection closed before the end of the response")
