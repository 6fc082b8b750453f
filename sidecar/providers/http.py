"""The only caller of the upstream client: send a call, or open a stream, with our deadlines.

What is where:
- ``providers.wire``: our keep-alive HTTP/1.1 client (``wire.Pool``: connections per host, request heads
  encoded once per URL); ``Pool.post`` reads whole answers, for ``send`` (a third of the CPU aiohttp's
  client cost per request);
- ``providers.wire_stream``: streamed answers on the same connections, handed over as they arrive with
  backpressure and per-read deadlines, for ``stream`` / ``UpstreamStream``;
- ``formats.http1``: the sans-I/O response parser both use.

The router holds an ``aiohttp.ClientSession`` as the handle of its upstream client: the server attaches
the ``wire.Pool`` to it (``attach_pool``) and ``close`` closes both. The session itself sends nothing.
Every client, asyncio and socket failure is mapped here, once, into ``core.errors`` — like httpx's
``map_httpcore_exceptions`` — so the router reasons only about error classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

import aiohttp

from sidecar.core.errors import UpstreamAuthError, UpstreamConnectionError, UpstreamServerError, UpstreamTimeout
from sidecar.formats import http1
from sidecar.providers import connect, wire, wire_stream
from sidecar.providers.base import UpstreamCall

# Header lines added to the calls of the current attempt: the W3C trace context (``traceparent`` of its CLIENT
# span, or the app's own when unsampled), encoded once by telemetry (``trace_fields``); empty otherwise.
TRACE_HEADERS: ContextVar[bytes] = ContextVar("sidecar_trace_headers", default=b"")
trace_fields = wire.trace_fields


Answer = wire.Response  # status, headers (lower-case names; split from the head when read: only on errors), body


@contextmanager
def map_errors(phase: str) -> Iterator[None]:
    """Wire, asyncio and socket exceptions → UpstreamTimeout / UpstreamConnectionError / UpstreamServerError
    (UpstreamAuthError for a proxy's 407), each with its ``cause`` for logs, spans and metrics.

    ``phase`` names the limit in force (connect, first_byte, idle, total) for timeouts and traces.
    Messages never include the upstream's address.
    """
    try:
        yield
    except connect.ConnectTimeout:
        raise UpstreamTimeout("could not connect to the upstream in time", phase="connect",
                              cause="connect_timeout") from None
    except TimeoutError:
        raise UpstreamTimeout(f"the upstream did not answer in time ({phase})", phase=phase,
                              cause=f"{phase}_timeout") from None
    except connect.ProxyAuthFailed as exc:
        raise UpstreamAuthError("the egress proxy refused our credentials", cause=exc.cause) from None
    except wire.ConnectFailed as exc:
        raise UpstreamConnectionError("could not connect to the upstream", cause=exc.cause) from None
    except wire.Disconnected as exc:
        raise UpstreamConnectionError("the upstream closed the connection", cause=exc.cause) from None
    except wire.CutOff:
        raise UpstreamServerError("the upstream's answer was cut off", cause="cut_off") from None
    except http1.OutOfMemory:
        raise UpstreamServerError("the upstream's answer is too large", cause="memory") from None
    except wire.TooLarge:
        raise UpstreamServerError("the upstream's answer is too large", cause="too_large") from None
    except http1.BadEncoding:
        raise UpstreamServerError("the upstream's answer could not be decoded", cause="encoding") from None
    except wire.BadResponse:
        raise UpstreamServerError("the upstream sent an invalid HTTP response", cause="bad_response") from None
    except OSError as exc:
        raise UpstreamConnectionError("the connection to the upstream failed", cause=connect.cause_of(exc)) from None


# The wire pool of each session, attached by the server (the router passes only the session around).
_POOLS: dict[aiohttp.ClientSession, wire.Pool] = {}


def attach_pool(session: aiohttp.ClientSession, pool: wire.Pool) -> None:
    """``send`` and ``stream`` with ``session`` use ``pool``; ``close(session)`` closes both."""
    _POOLS[session] = pool


def pool_of(session: aiohttp.ClientSession) -> wire.Pool:
    return _POOLS[session]


async def close(session: aiohttp.ClientSession) -> None:
    pool = _POOLS.pop(session, None)
    if pool is not None:
        await pool.close()
    await session.close()


async def send(session: aiohttp.ClientSession, call: UpstreamCall, deadline: float) -> Answer:
    """POST and read the whole answer before ``deadline`` (loop time)."""
    pool = _POOLS[session]
    with map_errors("total"):
        async with asyncio.timeout_at(deadline):
            return await pool.post(call, TRACE_HEADERS.get())


class UpstreamStream:
    """An open streaming answer: status and headers known, body read chunk by chunk under deadlines."""

    __slots__ = ("_max_body", "_stream", "status", "total_deadline")

    def __init__(self, stream: wire_stream.Stream, total_deadline: float, max_body: int) -> None:
        self._stream = stream
        self.status = stream.status
        self.total_deadline = total_deadline
        self._max_body = max_body

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-case names; split from the head when read (only on errors)."""
        return self._stream.headers

    def quota_fields(self) -> Mapping[str, str] | None:
        """The headers, when they have rate-limit fields (else None, and nothing is split)."""
        return self._stream.quota_fields()

    async def read_body(self) -> bytes:
        """The whole body of a non-2xx answer, under the total deadline (the block's own)."""
        with map_errors("total"):
            return await self._stream.read_all(self._max_body)

    async def next_chunk(self, until: float, phase: str) -> bytes:
        """The next bytes of the body (b"" at its end), or UpstreamTimeout(phase) if ``until`` passes first.

        ``until`` bounds only this wait, so time spent between reads writing to a slow app is not
        mistaken for a stalled upstream; the total deadline bounds the whole block.
        """
        if until >= self.total_deadline:
            with map_errors("total"):
                return await self._stream.read()
        with map_errors(phase):
            return await self._stream.read(until)


@asynccontextmanager
async def stream(session: aiohttp.ClientSession, call: UpstreamCall, *, first_byte_deadline: float,
                 total_deadline: float) -> AsyncIterator[UpstreamStream]:
    """Open a streaming POST whose headers must arrive before ``first_byte_deadline``.

    Leaving the block early (an error, a cancellation, the app gone, a lost hedge) aborts the upstream
    connection, so the upstream sees it; a fully read body returns the connection to the pool.
    """
    pool = _POOLS[session]
    opened: wire_stream.Stream | None = None
    try:
        async with asyncio.timeout_at(min(first_byte_deadline, total_deadline)) as timeout:
            with map_errors("first_byte"):
                opened = await wire_stream.open_stream(pool, call, TRACE_HEADERS.get())
            timeout.reschedule(total_deadline)
            try:
                yield UpstreamStream(opened, total_deadline, pool.max_body)
            finally:
                opened.close()
    except TimeoutError:
        # The block's deadline fired outside a timed read: while opening, or (between reads) the total.
        phase = "first_byte" if opened is None else "total"
        raise UpstreamTimeout(f"the upstream did not answer in time ({phase})", phase=phase) from None
