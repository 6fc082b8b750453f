"""Opening one upstream connection: resolve the name, connect, tunnel through a proxy, TLS — all under one timeout.

Only a new connection pays for this; ``wire.Pool`` reuses its keep-alive connections.

* Every address the name resolves to is tried, in RFC 8305 (Happy Eyeballs) order: families interleaved,
  the next attempt started 250 ms after the last one unless it failed sooner — a silently dropped first
  address costs 250 ms, not the request's deadline (``aiohappyeyeballs``, aiohttp's own implementation).
* Name lookups run in the loop's executor (``getaddrinfo`` blocks); concurrent lookups of one name share
  one call, and a result is kept ``DNS_TTL`` seconds, as aiohttp does.
* Through a proxy (``config.egress``): an https upstream is reached in a ``CONNECT`` tunnel, then TLS with
  the upstream end to end; an http one needs no tunnel (the request goes to the proxy in absolute form).
* ``ConnectFailed.cause`` tells what failed — ``dns``, ``refused``, ``unreachable``, ``reset``,
  ``tls_verify``, ``tls``, ``connect_timeout``, and for the proxy ``proxy_dns``, ``proxy_refused``,
  ``proxy_auth`` (a 407, or a 401 to the tunnel request), ``proxy_denied`` (another refusal of the tunnel),
  ``proxy_bad_response`` — for logs, spans and metrics; the app only ever sees a generic message.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import aiohappyeyeballs

from sidecar.config.egress import Proxy

HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305 §8: the recommended Connection Attempt Delay
DNS_TTL = 10.0
_MAX_PROXY_HEAD = 16 * 1024
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN})
P = TypeVar("P", bound=asyncio.Protocol)
AddrInfo = tuple[Any, ...]


class WireError(Exception):
    """Base of the upstream client's own failures."""


class ConnectFailed(WireError):
    """No connection: ``cause`` says why (see the module docstring)."""

    def __init__(self, message: str, cause: str = "connect") -> None:
        super().__init__(message)
        self.cause = cause


class ConnectTimeout(ConnectFailed):
    """The connection (lookup, TCP, tunnel, TLS) was not made within the connect timeout."""


class ProxyAuthFailed(ConnectFailed):
    """The proxy answered the tunnel request with 407: our proxy credentials are missing or wrong."""


class Resolver:
    """``getaddrinfo`` off the loop, shared by concurrent lookups of one name, kept ``DNS_TTL`` seconds."""

    def __init__(self, ttl: float = DNS_TTL) -> None:
        self.ttl = ttl
        self._known: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Task[list[AddrInfo]]] = {}

    async def resolve(self, host: str, port: int) -> list[AddrInfo]:
        literal = _literal(host, port)
        if literal is not None:
            return literal
        loop = asyncio.get_running_loop()
        key = (host, port)
        known = self._known.get(key)
        if known is not None and known[0] > loop.time():
            return known[1]
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = loop.create_task(self._lookup(key))
        return await asyncio.shield(task)  # one waiter's cancellation leaves the others' lookup alone

    async def _lookup(self, key: tuple[str, int]) -> list[AddrInfo]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM)
        finally:
            del self._pending[key]
        if len(self._known) >= 1024:  # names come from the config; bounded all the same
            self._known.clear()
        self._known[key] = (loop.time() + self.ttl, infos)
        return infos


def _literal(host: str, port: int) -> list[AddrInfo] | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


async def open_connection(factory: Callable[[], P], host: str, port: int, *, tls: ssl.SSLContext | None,
                          proxy: Proxy | None, timeout: float, resolver: Resolver) -> P:  # noqa: ASYNC109
    """A connected protocol from ``factory`` to ``host:port`` (through ``proxy``), or ``ConnectFailed``."""
    try:
        async with asyncio.timeout(timeout) as scope:
            return await _open(factory, host, port, tls, proxy, resolver)
    except TimeoutError:
        if scope.expired():
            raise ConnectTimeout("the connection was not made in time", "connect_timeout") from None
        raise


async def _open(factory: Callable[[], P], host: str, port: int, tls: ssl.SSLContext | None, proxy: Proxy | None,
                resolver: Resolver) -> P:
    loop = asyncio.get_running_loop()
    via = "proxy_" if proxy is not None else ""
    dial_host, dial_port = (proxy.host, proxy.port) if proxy is not None else (host, port)
    try:
        infos = await resolver.resolve(dial_host, dial_port)
        sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
    except (OSError, RuntimeError) as exc:  # uvloop may raise RuntimeError for a socket error
        raise ConnectFailed("could not connect", via + cause_of(exc)) from None
    try:
        if proxy is not None and tls is not None:
            await _tunnel(loop, sock, host, port, proxy)
        _, protocol = await loop.create_connection(factory, sock=sock, ssl=tls,
                                                   server_hostname=host if tls is not None else None)
    except ssl.SSLCertVerificationError:
        sock.close()
        raise ConnectFailed("the upstream's certificate was not accepted", "tls_verify") from None
    except ssl.SSLError:
        sock.close()
        raise ConnectFailed("the TLS handshake failed", "tls") from None
    except (OSError, RuntimeError) as exc:
        sock.close()
        raise ConnectFailed("could not connect", via + cause_of(exc)) from None
    except BaseException:  # a ConnectFailed from the tunnel, a timeout, a cancellation
        sock.close()
        raise
    return protocol


def cause_of(exc: BaseException) -> str:
    """The cause an OS-level connection failure is reported under."""
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    return "connect"


async def _tunnel(loop: asyncio.AbstractEventLoop, sock: socket.socket, host: str, port: int, proxy: Proxy) -> None:
    """``CONNECT host:port`` through the proxy; returns once it answered 2xx (the tunnel is open)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization is not None:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (head + "\r\n").encode("latin-1"))
    answer = b""
    while b"\r\n\r\n" not in answer:  # a proxy sends nothing after its answer until we start TLS
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ConnectFailed("the proxy closed the connection", "proxy_bad_response")
        answer += data
        if len(answer) > _MAX_PROXY_HEAD:
            raise ConnectFailed("the proxy's answer is too large", "proxy_bad_response")
    parts = answer.partition(b"\r\n")[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
        raise ConnectFailed("the proxy's answer is not HTTP", "proxy_bad_response")
    status = int(parts[1])
    if status in (401, 407):  # 407 by the standard; some proxies (tinyproxy) refuse wrong credentials with 401
        raise ProxyAuthFailed(f"the proxy refused our credentials ({status})", "proxy_auth")
    if not 200 <= status < 300:
        raise ConnectFailed(f"the proxy refused the tunnel ({status})", "proxy_denied")
    if answer.index(b"\r\n\r\n") + 4 != len(answer):
        raise ConnectFailed("the proxy sent bytes after its answer", "proxy_bad_response")
