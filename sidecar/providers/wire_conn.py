"""One upstream connection (``Conn``) and the connections to one host (``Host``) of ``providers.wire``'s pool.

A ``Conn`` carries one request at a time: it writes the request, parses the answer (``formats.http1``) as its
bytes arrive, and tells how the answer ended — whole, cut, refused, or closed before any byte of it. A ``Host``
counts its connections and queues the requests waiting for one, first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from sidecar.formats.http1 import AnswerMemory, BadResponse, CutOff, Response, ResponseParser
from sidecar.providers.connect import ProxyAuthFailed, WireError


class Disconnected(WireError):
    """The connection closed or was reset after the request was written, before any byte of the answer.

    The upstream may have started on the request: it is not sent again here — the retry policy decides.
    """

    def __init__(self, message: str, cause: str = "closed") -> None:
        super().__init__(message)
        self.cause = cause


class Stale(Disconnected):
    """The connection was found closed before the request was written: it may be sent on a fresh one."""


class Host:
    """The connections to one (scheme, host, port, proxy); requests waiting for one are served in order."""

    __slots__ = ("count", "idle", "waiters")

    def __init__(self) -> None:
        self.count = 0  # open or opening connections, idle ones included
        self.idle: list[Conn] = []  # LIFO: the most recently used connection is the likeliest alive
        # FIFO. A cancelled request's future stays here until its task runs again and takes it out.
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()

    def waiting(self) -> bool:
        """Whether a request is waiting (cancelled ones at the front are dropped first)."""
        waiters = self.waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return bool(waiters)

    def hand_over(self, conn: Conn) -> bool:
        """Give a released connection to the longest-waiting request, if any."""
        if not self.waiting():
            return False
        self.waiters.popleft().set_result(conn)
        return True

    def give_place(self) -> None:
        """A connection closed (``count`` already lowered): the longest-waiting request may open one."""
        if self.waiting():
            self.count += 1
            self.waiters.popleft().set_result(None)


class StreamReader(Protocol):
    """What reads a streamed answer off a ``Conn`` (``wire_stream.Stream``): it takes the bytes and the close."""

    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: Exception | None) -> None: ...


class Conn(asyncio.Protocol):
    """One connection; at most one request in flight (no pipelining).

    While a streamed answer is read, ``stream`` (a ``StreamReader``) takes the bytes and the close.
    """

    def __init__(self, host: Host, max_body: int, memory: AnswerMemory | None = None, via_proxy: bool = False) -> None:
        self.host = host
        self.via_proxy = via_proxy  # to an http proxy, requests in absolute form: a 407 is the proxy's
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(max_body, memory)
        self.waiter: asyncio.Future[Response] | None = None
        self.received = False  # a byte of the current answer arrived
        self.lost = False
        self.idle = False
        self.idle_since = 0.0
        self.dropped = True  # until the pool counts it (after connect); then once dropped, never counted again
        self.stream: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    # The request is written first: no byte of the answer can arrive before the loop runs again.

    def exchange(self, data: bytes) -> asyncio.Future[Response]:
        self._write(data)
        self.parser.reset()
        self.received = False
        self.waiter = waiter = asyncio.get_running_loop().create_future()
        return waiter

    def begin_stream(self, stream: StreamReader, data: bytes) -> None:
        """Send a request whose answer ``stream`` reads as it arrives."""
        self._write(data)
        self.parser.reset(stream=True)
        self.stream = stream

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise Stale("the connection is closed")
        try:
            transport.write(data)
        except (OSError, RuntimeError):  # uvloop raises on a transport closed under us
            raise Stale("the connection is closed") from None

    def data_received(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(data)
            return
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection's state is unknown
            self.drop()
            return
        self.received = True
        try:
            response = self.parser.feed(data)
        except BadResponse as exc:
            self.waiter = None
            waiter.set_exception(exc.with_traceback(None))  # its frames would hold this chunk and the waiter
            return
        if response is not None:
            self.waiter = None
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.stream is not None:
            self.stream.lost(exc)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if not self.received:
                waiter.set_exception(closed_before_answer(exc))
            elif exc is not None:
                waiter.set_exception(self.cut_off())
            else:
                try:
                    waiter.set_result(self.parser.eof())
                except (BadResponse, CutOff) as error:  # a cut body, or a read-until-close one that does not decode
                    waiter.set_exception(error.with_traceback(None))
        if self.idle:  # the server closed an idle connection (its keep-alive ran out): forget it now
            self.drop()

    def cut_off(self) -> WireError | CutOff:
        """The answer was cut by a reset: a proxy refusing our credentials often resets as it answers 407."""
        if self.via_proxy and self.parser.status == 407:
            return ProxyAuthFailed("the proxy refused our credentials (407)", "proxy_auth")
        return CutOff("the connection was reset mid-answer")

    def drop(self, graceful: bool = False) -> None:
        """Close the connection and give its place in the pool back (idempotent)."""
        self._close(graceful)
        if self.dropped:
            return
        self.dropped = True
        host = self.host
        if self.idle:
            self.idle = False
            host.idle.remove(self)
        host.count -= 1
        host.give_place()

    def vacate(self) -> None:
        """Close the connection but keep its place in the pool: the caller opens a new one in it."""
        self._close(False)
        self.dropped = True

    def _close(self, graceful: bool) -> None:
        self.parser.close()  # what a body being read holds goes back to the pool's memory
        if self.transport is not None and not self.lost:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()


def closed_before_answer(exc: Exception | None) -> Disconnected:
    if exc is None:
        return Disconnected("the upstream closed the connection before answering", "closed")
    return Disconnected("the connection was reset before the answer", "reset")
