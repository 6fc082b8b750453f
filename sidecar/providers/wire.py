"""A minimal keep-alive HTTP/1.1 client: ``Pool.post(call)`` for whole answers (streams: ``wire_stream``).

Why not the aiohttp client: per request it builds a ClientRequest, several header multidicts, connector
bookkeeping and (on Python 3.11) a task to write the body — about 30% of the sidecar's CPU. Our calls are
all alike (a POST of JSON to a handful of configured hosts), so this client does the minimum: the request
line and headers are encoded once per upstream URL and header mapping, a request is one ``write`` on an
``asyncio.Protocol`` (uvloop-friendly), and the answer is parsed by ``formats.http1``.

Connections are pooled per (scheme, host, port), at most ``limit`` open per host (callers wait for a free
one), idle ones closed after ``keepalive`` seconds. A pooled connection the server closed while it was idle
is detected when the request cannot be written or the connection closes before any byte of the answer:
the request is then sent once more, on a fresh connection — never after a byte of the answer arrived.
Any other failure, a timeout or a cancellation (the app went away, a hedge lost) closes the connection;
it never goes back to the pool mid-answer. Deadlines are the caller's (``providers.http.send``), and so is
the mapping of the errors raised here (``WireError`` subclasses, ``formats.http1`` errors, OSError) into
``core.errors``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

from sidecar.formats.http1 import MAX_BODY, BadResponse, CutOff, Response, ResponseParser, TooLarge
from sidecar.providers.base import UpstreamCall

__all__ = ["BadResponse", "ConnectFailed", "CutOff", "Disconnected", "Pool", "Response", "TooLarge", "WireError"]

# Hop-by-hop or framing fields we own; accept-encoding is dropped so answers come uncompressed.
_OWN_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                         "upgrade", "accept-encoding", "expect"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class WireError(Exception):
    """Base of this client's own failures."""


class ConnectFailed(WireError):
    """No connection: refused, unreachable, DNS, TLS handshake, or the pool is closed."""


class Disconnected(WireError):
    """The connection closed or was reset before any byte of the answer."""


class Stale(Disconnected):
    """A pooled connection was found closed: the request may be sent again on a fresh one."""


@dataclass(slots=True)
class _Target:
    """What one upstream URL and header mapping turn into, computed once."""

    key: tuple[str, str, int]
    host: str
    port: int
    ssl: ssl.SSLContext | None
    headers: Mapping[str, str]  # the mapping this was built from (identity checked first, then equality)
    head: bytes  # request line and header lines, then b"content-length: "
    untraced: bytes  # request line and header lines without trace context ones, without content-length


class Host:
    """The connections to one (scheme, host, port)."""

    __slots__ = ("count", "idle", "waiters")

    def __init__(self) -> None:
        self.count = 0  # open or opening connections, idle ones included
        self.idle: list[Conn] = []  # LIFO: the most recently used connection is the likeliest alive
        self.waiters: deque[asyncio.Future[None]] = deque()

    def wake(self) -> None:
        """A connection was released or closed: let one waiting request look again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class StreamReader(Protocol):
    """What reads a streamed answer off a ``Conn`` (``wire_stream.Stream``): it takes the bytes and the close."""

    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: Exception | None) -> None: ...


class Conn(asyncio.Protocol):
    """One connection; at most one request in flight (no pipelining).

    While a streamed answer is read, ``stream`` (a ``StreamReader``) takes the bytes and the close.
    """

    def __init__(self, host: Host, max_body: int) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(max_body)
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
            waiter.set_exception(exc)
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
                waiter.set_exception(Stale("the upstream closed the connection"))
            elif exc is not None:
                waiter.set_exception(CutOff("the connection was reset mid-answer"))
            else:
                try:
                    waiter.set_result(self.parser.eof())
                except CutOff as error:
                    waiter.set_exception(error)
        if self.idle:  # the server closed an idle connection (its keep-alive ran out): forget it now
            self.drop()

    def drop(self, graceful: bool = False) -> None:
        """Close the connection and give its place in the pool back (idempotent)."""
        if self.transport is not None and not self.lost:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()
        if self.dropped:
            return
        self.dropped = True
        host = self.host
        if self.idle:
            self.idle = False
            host.idle.remove(self)
        host.count -= 1
        host.wake()


class Pool:
    """Keep-alive connections to every upstream, ``limit`` per (scheme, host, port)."""

    def __init__(self, *, limit: int, user_agent: str, keepalive: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None, max_body: int = MAX_BODY) -> None:
        self.limit = limit
        self.user_agent = user_agent
        self.keepalive = keepalive
        self._ssl_context = ssl_context  # the system's CAs: ``load_tls`` (start-up, off the loop) or first use
        self.max_body = max_body
        self.closed = False
        self._hosts: dict[tuple[str, str, int], Host] = {}
        self._targets: dict[str, _Target] = {}
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
        """POST ``call`` (with ``trace`` context fields) and return the whole answer; the caller bounds the time."""
        host, target, data = self.prepare(call, trace)
        conn, reused = await self.acquire(host, target, fresh=False)
        if reused:
            try:
                return await self._exchange(host, conn, data)
            except Stale:
                pass  # closed by the server while idle: once more, on a fresh connection
            conn, _ = await self.acquire(host, target, fresh=True)
        return await self._exchange(host, conn, data)

    def prepare(self, call: UpstreamCall, trace: bytes = b"") -> tuple[Host, _Target, bytes]:
        """The host's connections, the target and the request's bytes; ``trace``: the W3C trace context's
        header lines (``trace_fields``), which replace any configured ones."""
        target = self._target(call.url, call.headers)
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
            while host.waiters:  # waiting requests see the pool closed
                host.wake()
        await asyncio.sleep(0)  # let the transports run connection_lost before the loop closes

    # ---- connections ---------------------------------------------------------------------------------

    async def acquire(self, host: Host, target: _Target, *, fresh: bool) -> tuple[Conn, bool]:
        """An idle connection (unless ``fresh``) or a new one once the host is under its limit; True if reused."""
        loop = asyncio.get_running_loop()
        while True:
            if self.closed:
                raise ConnectFailed("the connection pool is closed")
            if not fresh and host.idle:
                now = loop.time()
                while host.idle:
                    conn = host.idle.pop()
                    conn.idle = False
                    if not conn.lost and now - conn.idle_since < self.keepalive:
                        return conn, True
                    conn.drop()
            if host.count < self.limit:
                break
            waiter = loop.create_future()
            host.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    host.wake()  # we were woken but will not use it: pass the turn on
                raise
        host.count += 1
        try:
            _, conn = await loop.create_connection(
                lambda: Conn(host, self.max_body), target.host, target.port, ssl=target.ssl,
                server_hostname=target.host if target.ssl is not None else None)
        except BaseException as exc:
            host.count -= 1
            host.wake()
            if isinstance(exc, OSError):
                raise ConnectFailed(f"could not connect: {type(exc).__name__}") from exc
            raise
        conn.dropped = False  # counted from here on
        return conn, False

    async def _exchange(self, host: Host, conn: Conn, data: bytes) -> Response:
        try:
            response = await conn.exchange(data)
        except BaseException:
            conn.drop()  # failed, timed out or cancelled: never back to the pool mid-answer
            raise
        self.release(host, conn, response.reusable)
        return response

    def release(self, host: Host, conn: Conn, reusable: bool) -> None:
        """An answer was read to its end: the connection goes back to the pool, or is closed."""
        if reusable and not self.closed and not conn.lost and not conn.dropped:
            conn.idle = True
            conn.idle_since = asyncio.get_running_loop().time()
            host.idle.append(conn)
            host.wake()
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

    def _target(self, url: str, headers: Mapping[str, str]) -> _Target:
        target = self._targets.get(url)
        if target is None or (target.headers is not headers and target.headers != headers):
            if len(self._targets) >= 4096:  # URLs come from the config; bounded all the same
                self._targets.clear()
            target = self._targets[url] = self._build(url, headers)
        return target

    def _build(self, url: str, headers: Mapping[str, str]) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("upstream URLs must be http:// or https:// with a host")
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[scheme]
        authority = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            authority = f"{authority}:{port}"
        fields: dict[str, str] = {"host": authority, "user-agent": self.user_agent}
        if parts.username is not None:  # credentials in the URL, as aiohttp would send them
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fields["authorization"] = "Basic " + base64.b64encode(secret).decode("ascii")
        for name, value in headers.items():
            if name.lower() not in _OWN_FIELDS:
                fields[name.lower()] = value
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in path for c in " \r\n"):
            raise ValueError("invalid character in the upstream URL's path")
        line = f"POST {path} HTTP/1.1\r\n".encode()
        encoded = line + _encode_fields(fields)
        untraced = line + _encode_fields({k: v for k, v in fields.items() if k not in TRACE_FIELDS})
        if scheme == "https":
            self.load_tls()
        return _Target((scheme, host, port), host, port, self._ssl_context if scheme == "https" else None,
                       headers, encoded + b"content-length: ", untraced)


TRACE_FIELDS = frozenset(("traceparent", "tracestate"))


def trace_fields(fields: Mapping[str, str]) -> bytes:
    """W3C trace context header lines for ``prepare``, checked like every other field."""
    return _encode_fields({name.lower(): value for name, value in fields.items()})


def _encode_fields(fields: Mapping[str, str]) -> bytes:
    """Header lines; CR, LF or NUL in a name or value would let it inject fields, so they are refused."""
    text = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    if any(c in name or c in str(value) for name, value in fields.items() for c in "\r\n\0") or any(
            not name or ":" in name or " " in name for name in fields):
        raise ValueError("invalid character in an upstream request header")
    return text.encode()
