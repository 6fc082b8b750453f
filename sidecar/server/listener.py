"""The two listening ports, with the limits aiohttp's server lacks: no client connection can pin the sidecar.

aiohttp's ``AppRunner`` keeps an idle keep-alive connection for an hour, has no limit on the time a client
may take to send a request's head, and accepts connections until the process runs out of descriptors. Each
``Listener`` here serves one app on one port through ``GuardedHandler``, aiohttp's own ``RequestHandler``
with:

* a cap on open connections (``sidecar_settings.listeners``): at it, the oldest connection that is idle
  (waiting for a request, none in progress) is closed to make room; with none idle a new connection gets a
  503 and is closed at once. So a flood of connections to the admin port (reachable from the cluster) cannot
  take the descriptors the API port needs — the API's own cap leaves room for upstream connections — and
  connections that only sit there cannot keep the kubelet's probes out;
* a head timeout from a request's first byte to its last header (slowloris), answered with a 408 — for a new
  connection, from the moment it opens (one that sends nothing holds a slot no longer than that);
* the idle keep-alive timeout between requests;
* low-level HTTP errors (a bad request line, oversized headers) answered in our JSON error shape and logged
  as one line, not a traceback.

The body's own timeout is the handler's (``handlers.read_body``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from sidecar.formats import openai as openai_format
from sidecar.routing.coalesce import keep_running

log = logging.getLogger("sidecar.server")
LINGERING_SECONDS = 2.0  # reading and dropping an unread body before closing (aiohttp's default is 10 s)


def canned(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error answer written straight to a connection that has no request object."""
    body = openai_format.error_body(message, "invalid_request_error" if status < 500 else "api_error", None, code)
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


TOO_MANY = canned(503, "Service Unavailable", "too many open connections to this port; retry later",
                  "too_many_connections")
HEAD_TIMEOUT = canned(408, "Request Timeout", "the request's headers did not arrive in time", "request_timeout")


PROBLEMS = {  # aiohttp's parser exceptions → what the app is told
    "LineTooLong": "the request line or a header is too long",
    "BadStatusLine": "invalid request line",
    "BadHttpMethod": "invalid method",
    "BadHttpMessage": "invalid request",
    "InvalidHeader": "invalid header",
    "InvalidURLError": "invalid URL",
    "ContentLengthError": "invalid Content-Length",
    "TransferEncodingError": "invalid Transfer-Encoding",
}


@dataclass(slots=True)
class Guard:
    """One port's open connections against its cap, and the head timeout of its connections."""

    name: str
    max_connections: int
    header_timeout: float
    open: int = 0
    refused: int = 0
    handlers: dict[GuardedHandler, None] = field(default_factory=dict)  # the open ones, oldest first

    def make_room(self) -> bool:
        """At the cap: close the oldest idle connection (waiting for a request, none in progress); False
        when every connection is busy."""
        for handler in self.handlers:
            if handler.idle():
                handler.evict()
                return True
        return False


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a connection cap, a head timeout and JSON low-level errors."""

    __slots__ = ("_counted", "_guard", "_head_timer", "_refused")

    def __init__(self, manager: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False  # in the port's count (not refused, not evicted)
        self._refused = False  # refused at the cap: aiohttp never saw it
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections and not guard.make_room():
            guard.refused += 1
            self._refused = True
            transport.write(TOO_MANY)  # type: ignore[attr-defined]
            transport.close()
            return
        guard.open += 1
        guard.handlers[self] = None
        self._counted = True
        super().connection_made(transport)
        # the first request's head is due within header_timeout of the connection, not of its first byte
        self._head_timer = self._loop.call_later(guard.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._counted:  # else evicted: counted out then
            self._uncount()
        self._stop_head_timer()
        if self._task_handler is not None and keep_running(self._task_handler):
            self._task_handler = None  # it makes a call other requests wait for: aiohttp will not cancel it
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # A head begins with bytes that come while the connection waits for its next request (aiohttp's own
        # test for an idle connection: its request loop awaits ``_waiter``; before the first request, nothing
        # was parsed yet) — not with body bytes, which come while a request is queued or handled. The head is
        # complete once the parser queued the request. A head that arrives whole — nearly always — never needs
        # a timer; one still incomplete after these bytes gets one. (Called for every segment: kept lean.)
        if self._head_timer is None:
            awaiting = self._awaiting_head()
            RequestHandler.data_received(self, data)
            if awaiting and not self._messages and self.transport is not None:
                self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_too_slow)
        else:
            RequestHandler.data_received(self, data)
            if self._messages:
                self._stop_head_timer()

    def _uncount(self) -> None:
        self._counted = False
        self._guard.open -= 1
        self._guard.handlers.pop(self, None)

    def idle(self) -> bool:
        """No request under way or queued: waiting for one (new, kept alive, or part of a head come so far)."""
        return self._counted and self._awaiting_head()

    def evict(self) -> None:
        """Closed to make room for a new connection (counted out now: the slot is the newcomer's)."""
        self._uncount()
        self._stop_head_timer()
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def _awaiting_head(self) -> bool:
        if self._messages:
            return False
        waiter = self._waiter
        return (waiter is not None and not waiter.done()) or self._request_count == 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport is not None and self._awaiting_head():
            self.transport.write(HEAD_TIMEOUT)
            self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (or, never expected, an exception past our handlers): our JSON
        error shape, one log line for the client's mistakes, a traceback only for our own."""
        if status >= 500:
            log.error("unhandled error in the HTTP server", exc_info=exc)
            text = "internal error in the sidecar"
        else:  # the exception's own text quotes the client's bytes: name the kind of problem only
            text = f"malformed HTTP request: {PROBLEMS.get(type(exc).__name__, 'the request could not be parsed')}"
            log.warning("%s (%s port)", text, self._guard.name)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is closed instead")
        body = openai_format.error_body(text, "invalid_request_error" if status < 500 else "api_error", None,
                                        None)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class Listener(web.BaseSite):
    """One port of an ``AppRunner``, served through ``GuardedHandler``."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(self, runner: web.AppRunner, host: str, port: int, factory: Callable[[], GuardedHandler], *,
                 backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._factory = host, port, factory

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self._host, self._port, backlog=self._backlog,
                                                reuse_address=True)


async def listen(runner: web.AppRunner, host: str, port: int, guard: Guard, *, idle_timeout: float,
                 access_log: logging.Logger | None = None) -> Listener:
    """Serve ``runner``'s app (already set up) on ``host:port`` within ``guard``'s limits."""
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {"loop": loop, "keepalive_timeout": idle_timeout, "lingering_time": LINGERING_SECONDS,
                              "access_log": access_log}

    def factory() -> GuardedHandler:
        return GuardedHandler(server, guard, **kwargs)

    listener = Listener(runner, host, port, factory)
    await listener.start()
    return listener


def raise_open_file_limit() -> int:
    """Raise the soft limit on open descriptors to the hard limit (often 1,024 soft against far more hard);
    return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def api_connection_cap(configured: int, admin: int, open_files: int, upstream: int) -> int:
    """The API port's cap, lowered when the descriptors cannot hold it next to the admin port's connections,
    ``upstream`` connections and a margin for files, Redis and the collector."""
    room = open_files - admin - upstream - 64
    return max(16, min(configured, room))
