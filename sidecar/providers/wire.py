"""A minimal keep-alive HTTP/1.1 client: ``Pool.post(call)`` for whole answers (streams: ``wire_stream``).

Why not the aiohttp client: per request it builds a ClientRequest, several header multidicts, connector
bookkeeping and (on Python 3.11) a task to write the body — about 30% of the sidecar's CPU. Our calls are
all alike (a POST of JSON to a handful of configured hosts), so this client does the minimum: the request
line and headers are encoded once per upstream URL and header mapping (``wire_head``), a request is one
``write`` on an ``asyncio.Protocol`` (uvloop-friendly), and the answer is parsed by ``formats.http1`` (llhttp).

Connections are pooled per (scheme, host, port, proxy), at most ``limit`` open per host; requests that wait
for one are served first come, first served — a freed connection (or the place of a closed one) is handed
to the longest-waiting request, never taken by a newcomer. Idle ones are closed after ``keepalive`` seconds.
New connections are made by ``connect`` (every resolved address, Happy Eyeballs, proxies, TLS, one timeout).

A request is sent again — once, on a fresh connection — only when its pooled connection is found closed
before the request was written (``Stale``). A connection that closes after the request was written, even
before the first byte of the answer, is a ``Disconnected`` failure: the upstream may be working on it (a
second POST could bill twice), so whether to try again is the retry policy's decision, counted and traced.
Any other failure, a timeout or a cancellation (the app went away, a hedge lost) closes the connection;
it never goes back to the pool mid-answer. Deadlines are the caller's (``providers.http.send``), and so is
the mapping of the errors raised here (``WireError`` subclasses, ``formats.http1`` errors, OSError) into
``core.errors``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from sidecar.config.egress import Proxy, ProxySettings
from sidecar.formats.http1 import MAX_BODY, AnswerMemory, BadResponse, CutOff, Response, TooLarge
from sidecar.providers.base import UpstreamCall
from sidecar.providers.connect import ConnectFailed, ProxyAuthFailed, Resolver, WireError, open_connection
from sidecar.providers.wire_conn import Conn, Disconnected, Host, Stale, StreamReader, closed_before_answer
from sidecar.providers.wire_head import TRACE_FIELDS, Target, build_target, trace_fields

__all__ = [
    "TRACE_FIELDS",
    "BadResponse",
    "Conn",
    "ConnectFailed",
    "CutOff",
    "Disconnected",
    "Host",
    "Pool",
    "Response",
    "Stale",
    "StreamReader",
    "TooLarge",
    "WireError",
    "closed_before_answer",
    "trace_fields",
]



T = TypeVar("T")


class Pool:
    """Keep-alive connections to every upstream, ``limit`` per (scheme, host, port, proxy)."""

    def __init__(self, *, limit: int, user_agent: str, keepalive: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None, max_body: int = MAX_BODY,
                 memory: AnswerMemory | None = None, proxies: ProxySettings | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.limit = limit
        self.user_agent = user_agent
        self.keepalive = keepalive
        self._ssl_context = ssl_context  # the system's CAs: ``load_tls`` (start-up, off the loop) or first use
        self.max_body = max_body
        self.memory = memory  # what all whole answers may hold together (None: no bound beyond ``max_body``)
        self.proxies = proxies or ProxySettings()
        self.connect_timeout = connect_timeout
        self.resolver = Resolver()
        self.closed = False
        self._hosts: dict[tuple[str, str, int, Proxy | None], Host] = {}
        self._targets: dict[str, Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def load_tls(self) -> None:
        """Load the system's CAs now (~30 ms of blocking file reads): the server calls this in a worker
        thread at start-up when an upstream is https, so no request pays for it on the event loop."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()

    def connections(self) -> int:
        """Open (or opening) connections, over all hosts."""
        return sum(h.count for h in self._hosts.values())

    def idle_connections(self) -> int:
        return sum(len(h.idle) for h in self._hosts.values())

    async def post(self, call: UpstreamCall, trace: bytes = b"") -> Response:
        """POST ``call`` (with ``trace`` context fields) and return the whole answer; the caller bounds the time.

        The request is sent again (once, on a fresh connection) only if its connection was found closed
        before it was written; any failure after that is the caller's to retry or not.
        """
        host, target, data = self.prepare(call, trace)
        conn, waiter = await self.send(host, target, lambda c: c.exchange(data))
        try:
            response = await waiter
        except BaseException:
            conn.drop()  # failed, timed out or cancelled: never back to the pool mid-answer
            raise
        finally:
            waiter = None  # type: ignore[assignment]  # the raised error's frames must not hold its future
        self.release(host, conn, response.reusable)
        if response.status == 407 and target.proxy is not None:  # the proxy's answer, not the upstream's
            raise ProxyAuthFailed("the proxy refused our credentials (407)", "proxy_auth")
        return response

    async def send(self, host: Host, target: Target, write: Callable[[Conn], T]) -> tuple[Conn, T]:
        """A connection with the request written on it by ``write``: on a pooled connection found closed
        before the request was written, once more on a fresh one in its place."""
        conn = await self.acquire(host, target)
        try:
            return conn, write(conn)
        except Stale:
            conn = await self.replace(host, conn, target)
        try:
            return conn, write(conn)
        except Stale:
            conn.drop()
            raise Disconnected("the upstream closed a new connection at once", "closed") from None

    def prepare(self, call: UpstreamCall, trace: bytes = b"") -> tuple[Host, Target, bytes]:
        """The host's connections, the target and the request's bytes; ``trace``: the W3C trace context's
        header lines (``trace_fields``), which replace any configured ones."""
        target = self._target(call)
        if trace:
            data = b"%s%scontent-length: %d\r\n\r\n%s" % (target.untraced, trace, len(call.body), call.body)
        else:
            data = b"%s%d\r\n\r\n%s" % (target.head, len(call.body), call.body)
        host = self._hosts.get(target.key)
        if host is None:
            host = self._hosts[target.key] = Host()
        return host, target, data

    async def close(self) -> None:
        """Close every idle connection; busy ones close when their answer is in."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for host in self._hosts.values():
            for conn in list(host.idle):
                conn.drop(graceful=True)
            while host.waiting():  # waiting requests see the pool closed
                host.waiters.popleft().set_exception(ConnectFailed("the connection pool is closed", "closing"))
        await asyncio.sleep(0)  # let the transports run connection_lost before the loop closes

    # ---- connections ---------------------------------------------------------------------------------

    async def acquire(self, host: Host, target: Target) -> Conn:
        """An idle connection, a new one while the host is under its limit, or the next one freed — in the
        order requests asked (a newcomer never takes a connection from a request already waiting)."""
        if self.closed:
            raise ConnectFailed("the connection pool is closed", "closing")
        if not host.waiting():
            conn = self._idle(host)
            if conn is not None:
                return conn
            if host.count < self.limit:
                host.count += 1
                return await self._connect(host, target)
        waiter: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
        host.waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(host, waiter.result())  # our turn came, but we will not use it
            else:
                if waiter in host.waiters:
                    host.waiters.remove(waiter)
                self._serve_waiting(host)  # a newcomer may have queued behind us while a connection was free
            raise
        if conn is not None and not conn.lost:
            return conn
        if conn is not None:  # it closed on its way to us: its place is ours
            conn.vacate()
        return await self._connect(host, target)

    def _idle(self, host: Host) -> Conn | None:
        now = asyncio.get_running_loop().time()
        while host.idle:
            conn = host.idle.pop()
            conn.idle = False
            if not conn.lost and now - conn.idle_since < self.keepalive:
                return conn
            conn.drop()
        return None

    def _serve_waiting(self, host: Host) -> None:
        """Give waiting requests what is free: idle connections, then places under the limit."""
        while host.waiting():
            conn = self._idle(host)
            if conn is not None:
                host.hand_over(conn)
            elif host.count < self.limit:
                host.give_place()
            else:
                return

    def _pass_on(self, host: Host, conn: Conn | None) -> None:
        if conn is None:
            host.count -= 1
            host.give_place()
        else:
            self.release(host, conn, True)

    async def replace(self, host: Host, conn: Conn, target: Target) -> Conn:
        """A fresh connection in the place of ``conn``, found closed before a request was written on it."""
        conn.vacate()
        return await self._connect(host, target)

    async def _connect(self, host: Host, target: Target) -> Conn:
        """A new connection in a place already counted in ``host.count``."""
        try:
            via_proxy = target.proxy is not None and target.ssl is None
            conn = await open_connection(lambda: Conn(host, self.max_body, self.memory, via_proxy), target.host,
                                         target.port, tls=target.ssl, proxy=target.proxy,
                                         timeout=self.connect_timeout, resolver=self.resolver)
        except BaseException:
            host.count -= 1
            host.give_place()
            raise
        conn.dropped = False  # counted from here on
        return conn

    def release(self, host: Host, conn: Conn, reusable: bool) -> None:
        """An answer was read to its end: the connection goes to the next waiting request, back to the pool,
        or is closed."""
        if reusable and not self.closed and not conn.lost and not conn.dropped:
            if host.hand_over(conn):
                return
            conn.idle = True
            conn.idle_since = asyncio.get_running_loop().time()
            host.idle.append(conn)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)
        else:
            conn.drop(graceful=True)

    def _sweep(self) -> None:
        """Close connections idle for ``keepalive`` seconds; re-armed while any connection is idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest = now
        for host in self._hosts.values():
            for conn in list(host.idle):
                if now - conn.idle_since >= self.keepalive:
                    conn.drop(graceful=True)
                else:
                    oldest = min(oldest, conn.idle_since)
        if any(h.idle for h in self._hosts.values()):
            self._sweeper = loop.call_later(max(0.1, oldest + self.keepalive - now), self._sweep)

    # ---- request heads -------------------------------------------------------------------------------

    def _target(self, call: UpstreamCall) -> Target:
        target = self._targets.get(call.url)
        if target is None or target.override != call.proxy or (
                target.headers is not call.headers and target.headers != call.headers):
            if len(self._targets) >= 4096:  # URLs come from the config; bounded all the same
                self._targets.clear()
            https = call.url[:6].lower() == "https:"
            if https:
                self.load_tls()
            target = self._targets[call.url] = build_target(call.url, call.headers, call.proxy, self.user_agent,
                                                            self.proxies, self._ssl_context if https else None)
        return target
