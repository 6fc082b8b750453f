"""Streamed answers on ``providers.wire`` connections: ``open_stream(pool, call)`` → ``Stream.read(until)``.

The body is handed over as it arrives, de-chunked by ``formats.http1`` in stream mode, never gathered
whole. Backpressure: once more than ``HIGH_WATER`` bytes wait for a slow reader, the socket is no longer
read (``transport.pause_reading``) — the kernel buffers fill and TCP slows the upstream down; reading
resumes when the reader takes them (it takes all that waits, so the buffer is then empty, below any
low-water mark). Deadlines are per read (``until``, a loop time) and apply only while the caller waits
for bytes, so time it spends elsewhere (writing to a slow app) is not upstream idleness; the overall
deadline is the caller's.

Only a body read to its end (``read`` returned b"") gives the connection back to the pool; ``close()``
before that — an error, a cancellation, a lost hedge — aborts it, so the upstream sees the client gone.
As for whole answers, the request is sent again (once, on a fresh connection) only if its pooled connection
is found closed before it was written. A gzip or deflate answer is decoded as it arrives, a bounded step
at a time. Errors raised are those of ``wire`` (mapped by ``providers.http``) and ``TimeoutError``.
"""

from __future__ import annotations

import asyncio

from sidecar.formats.http1 import BadResponse, CutOff, Decoder, Response, TooLarge, decoder_for
from sidecar.providers.base import UpstreamCall
from sidecar.providers.connect import ProxyAuthFailed
from sidecar.providers.wire import Conn, Host, Pool, closed_before_answer

HIGH_WATER = 256 * 1024  # bytes parsed and not yet read before the socket is paused; SSE events are ~100-300 B


async def open_stream(pool: Pool, call: UpstreamCall, trace: bytes = b"") -> Stream:
    """POST ``call`` and return once the answer's head is in; the caller bounds the time."""
    host, target, data = pool.prepare(call, trace)
    _, stream = await pool.send(host, target, lambda conn: Stream(pool, host, conn).begin(data))
    await stream.start()
    if stream.status == 407 and target.proxy is not None:  # the proxy's answer, not the upstream's
        stream.close()
        raise ProxyAuthFailed("the proxy refused our credentials (407)", "proxy_auth")
    return stream


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Stream:
    """One answer read as it arrives: ``status`` and ``headers`` (lower-case names), then ``read()``."""

    __slots__ = ("_conn", "_decoder", "_done", "_error", "_head", "_host", "_paused", "_pool", "_received",
                 "_waiter", "status")

    def __init__(self, pool: Pool, host: Host, conn: Conn) -> None:
        self._pool = pool
        self._host = host
        self._conn: Conn | None = conn  # None once released or closed
        self._waiter: asyncio.Future[None] | None = None
        self._received = False  # a byte of the answer arrived
        self._done = False  # the whole answer arrived
        self._error: Exception | None = None
        self._paused = False
        self._decoder: Decoder | None = None  # a gzip or deflate answer's
        self.status = 0
        self._head: Response | None = None  # the head, its fields split when read

    def begin(self, data: bytes) -> Stream:
        """Write the request (``Stale`` if the connection is found closed first)."""
        assert self._conn is not None
        self._conn.begin_stream(self, data)
        return self

    async def start(self) -> Stream:
        """Wait for the answer's head."""
        conn = self._conn
        assert conn is not None
        try:
            parser = conn.parser
            while not parser.status:
                if self._error is not None:
                    raise self._take_error()
                await self._wait(None)
            self._decoder = decoder_for(parser.coding)
        except BaseException:
            self.close()
            raise
        self.status = parser.status
        self._head = parser.head()
        return self

    @property
    def headers(self) -> dict[str, str]:
        return self._head.headers if self._head is not None else {}

    def quota_fields(self) -> dict[str, str] | None:
        """The head's rate-limit fields, if it has any (``Response.quota_fields``)."""
        return self._head.quota_fields() if self._head is not None else None

    async def read(self, until: float | None = None) -> bytes:
        """The body bytes that arrived since the last read, waiting for some until ``until`` (loop time).

        b"" at the end of the body (the connection is then back in the pool); ``TimeoutError`` if
        ``until`` passes first; ``CutOff`` / ``BadResponse`` once the bytes before the failure are read.
        """
        conn = self._conn
        if conn is None:
            return b""
        decoder = self._decoder
        while True:
            if decoder is not None and decoder.more:  # a compressed piece that decodes to more than one step
                data = decoder.feed(b"")
                if data:
                    return data
            data = conn.parser.take()
            if data:
                if self._paused:
                    self._paused = False
                    if conn.transport is not None and not conn.lost:
                        conn.transport.resume_reading()
                if decoder is not None:
                    data = self._decode(decoder, data)
                    if not data:
                        continue
                return data
            if self._error is not None:
                raise self._take_error()
            if self._done:
                if decoder is not None:
                    self._decode(decoder, None)
                self._release(conn)
                return b""
            await self._wait(until)

    def _decode(self, decoder: Decoder, data: bytes | None) -> bytes:
        """``data`` decoded, or with None the check that the compressed body ended; closes on an error."""
        try:
            if data is None:
                decoder.finish()
                return b""
            return decoder.feed(data)
        except BadResponse:
            self.close()
            raise

    async def read_all(self, limit: int) -> bytes:
        """The rest of the body (an error answer), refused beyond ``limit`` bytes."""
        pieces: list[bytes] = []
        size = 0
        while data := await self.read():
            size += len(data)
            if size > limit:
                raise TooLarge("response body too large")
            pieces.append(data)
        return b"".join(pieces)

    def close(self) -> None:
        """Leave the answer: unless it was read to its end, the connection is aborted (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.stream = None
            conn.drop()

    # ---- called by the connection (``wire.Conn``) ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self._done or self._error is not None:  # bytes nobody asked for
            if conn is not None:
                conn.drop()
            return
        self._received = True
        try:
            self._done = conn.parser.feed_stream(data)
        except BadResponse as exc:
            self._error = exc.with_traceback(None)  # its frames would hold this chunk, and this stream: a cycle
            conn.drop()
        else:
            if not self._done and not self._paused and conn.parser.pending > HIGH_WATER:
                self._paused = True
                if conn.transport is not None:
                    conn.transport.pause_reading()
        self._wake()

    def lost(self, exc: Exception | None) -> None:
        conn = self._conn
        if conn is None or self._done or self._error is not None:
            return
        if not self._received:
            self._error = closed_before_answer(exc)
        elif exc is not None:
            self._error = conn.cut_off()
        else:
            try:
                conn.parser.eof_stream()
                self._done = True
            except CutOff as error:
                self._error = error.with_traceback(None)
        self._wake()

    # ---- internals ---------------------------------------------------------------------------------

    def _take_error(self) -> Exception:
        """The failure, to raise; a fresh one stays for later reads. Never is an exception both kept here and
        raised: its traceback's frames would refer back to this stream — a cycle only the collector frees."""
        error = self._error
        assert error is not None
        self._error = CutOff("the answer had already failed")
        return error

    async def _wait(self, until: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = None if until is None else loop.call_at(until, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = waiter = None  # a raised TimeoutError's frames must not hold the future holding it
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release(self, conn: Conn) -> None:
        self._conn = None
        conn.stream = None
        self._pool.release(self._host, conn, conn.parser.reusable)
