"""Streamed answers on the wire client, through ``providers.http.stream`` (the seam), against real local servers.

The async tests run on both asyncio's loop and uvloop, the server's (``conftest.py``): their transports'
pause/resume and abort are separate implementations.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.errors import UpstreamConnectionError, UpstreamServerError, UpstreamTimeout
from sidecar.providers import http, wire, wire_stream
from sidecar.providers.base import UpstreamCall
from tests.unit.providers.local_servers import Handler, Server, answering, in_pieces, reset, serving

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
SSE_BODY = b"data: hi\n\n"
SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE_BODY), SSE_BODY)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def opened(session: aiohttp.ClientSession, url: str, first_byte: float = 2.0,
           total: float = 5.0) -> AbstractAsyncContextManager[http.UpstreamStream]:
    now = asyncio.get_running_loop().time()
    return http.stream(session, UpstreamCall(url, {"content-type": "application/json"}, b'{"stream":true}'),
                       first_byte_deadline=now + first_byte, total_deadline=now + total)


async def read_all(upstream: http.UpstreamStream, idle: float = 2.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    pieces = [await upstream.next_chunk(loop.time() + idle, "first_byte")]
    while pieces[-1]:
        pieces.append(await upstream.next_chunk(loop.time() + idle, "idle"))
    return pieces[:-1]


# ---- bodies ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.booleans(), st.lists(st.integers(min_value=1, max_value=300), max_size=10),
       st.integers(min_value=1, max_value=900))
def test_any_split_across_tcp_writes(body: bytes, use_chunked: bool, sizes: list[int], piece: int) -> None:
    if use_chunked:
        wire_body = b"".join(chunk(body[i:i + piece]) for i in range(0, len(body), piece))
        response = HEAD + wire_body + b"0\r\nt: 1\r\n\r\n"
    else:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def scenario() -> None:
        session = aiohttp.ClientSession()
        http.attach_pool(session, wire.Pool(limit=2, user_agent="t"))
        try:
            async with serving(in_pieces(response, sizes)) as (server, url):
                for _ in range(2):
                    async with opened(session, url) as upstream:
                        assert upstream.status == 200
                        assert b"".join(await read_all(upstream)) == body
                assert server.accepted == 1  # a complete stream gives its connection back
        finally:
            await http.close(session)

    asyncio.run(scenario())


async def test_bytes_are_handed_over_as_they_arrive(session: aiohttp.ClientSession) -> None:
    go_on = asyncio.Event()

    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(HEAD + chunk(b"data: 1\n\n"))
        await go_on.wait()  # the rest only once the client has the first event
        writer.write(chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await server.read_request(reader)

    async with serving(handler) as (_, url), opened(session, url) as upstream:
        loop = asyncio.get_running_loop()
        assert upstream.headers["content-type"] == "text/event-stream"
        assert await upstream.next_chunk(loop.time() + 2, "first_byte") == b"data: 1\n\n"
        go_on.set()
        assert await read_all(upstream) == [b"data: 2\n\n"]


async def test_error_answer_body_and_reuse(session: aiohttp.ClientSession) -> None:
    busy = b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy"
    async with serving(answering(busy, SSE)) as (server, url):
        async with opened(session, url) as upstream:
            assert (upstream.status, upstream.headers["retry-after"]) == (429, "3")
            assert await upstream.read_body() == b"busy"
        async with opened(session, url) as upstream:
            assert b"".join(await read_all(upstream)) == SSE_BODY
        assert server.accepted == 1 and http.pool_of(session).idle_connections() == 1


async def test_read_until_close_stream(session: aiohttp.ClientSession) -> None:
    async with serving(answering(b"HTTP/1.0 200 OK\r\n\r\ndata: old\n\n", then_close=True)) as (_, url):
        async with opened(session, url) as upstream:
            assert b"".join(await read_all(upstream)) == b"data: old\n\n"
        await asyncio.sleep(0.02)
        assert http.pool_of(session).connections() == 0


# ---- deadlines ------------------------------------------------------------------------------------


def trickle(*delays: float) -> Handler:
    """Send the head, then an event after each delay, then stall."""
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(HEAD)
        for delay in delays:
            await asyncio.sleep(delay)
            writer.write(chunk(b"data: x\n\n"))
        await reader.read()
    return handler


async def test_slow_producer_within_idle_then_idle_timeout(session: aiohttp.ClientSession) -> None:
    async with serving(trickle(0.0, 0.1, 0.1)) as (_, url):
        with pytest.raises(UpstreamTimeout) as caught:
            async with opened(session, url) as upstream:
                await read_all(upstream, idle=0.3)
        assert caught.value.phase == "idle"
        assert http.pool_of(session).connections() == 0


async def test_first_byte_timeout_waiting_for_the_head(session: aiohttp.ClientSession) -> None:
    async def silent(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(silent) as (_, url):
        with pytest.raises(UpstreamTimeout) as caught:
            async with opened(session, url, first_byte=0.1):
                pass
        assert caught.value.phase == "first_byte"


async def test_first_byte_timeout_waiting_for_the_first_chunk(session: aiohttp.ClientSession) -> None:
    async with serving(trickle(1.0)) as (_, url):
        with pytest.raises(UpstreamTimeout) as caught:
            async with opened(session, url, first_byte=0.2) as upstream:  # the head comes at once
                await upstream.next_chunk(asyncio.get_running_loop().time() + 0.1, "first_byte")
        assert caught.value.phase == "first_byte"


async def test_a_slow_app_is_not_upstream_idleness_but_total_still_bounds(session: aiohttp.ClientSession) -> None:
    async with serving(trickle(0.0, 0.0, 0.0)) as (_, url):
        loop = asyncio.get_running_loop()
        with pytest.raises(UpstreamTimeout) as caught:
            async with opened(session, url, total=0.5) as upstream:
                got = b""
                while len(got) < 3 * len(b"data: x\n\n"):
                    got += await upstream.next_chunk(loop.time() + 0.1, "idle")
                    await asyncio.sleep(0.12)  # writing to a slow app: longer than the idle limit
                await asyncio.sleep(1)  # the total deadline fires between reads
        assert caught.value.phase == "total"


# ---- failures and early exits -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_cut_mid_stream(session: aiohttp.ClientSession, how: str) -> None:
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer) if how == "reset" else writer.close()

    async with serving(handler) as (_, url):
        pieces: list[bytes] = []
        with pytest.raises(UpstreamServerError, match="cut off"):
            async with opened(session, url) as upstream:
                loop = asyncio.get_running_loop()
                while data := await upstream.next_chunk(loop.time() + 2, "idle"):
                    pieces.append(data)
        assert pieces == [b"data: 1\n\n"]
        assert http.pool_of(session).connections() == 0


async def test_closed_before_any_byte(session: aiohttp.ClientSession) -> None:
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    async with serving(handler) as (server, url):
        with pytest.raises(UpstreamConnectionError):
            async with opened(session, url):
                pass
        assert server.accepted == 1


async def test_stale_pooled_connection_is_retried_once(session: aiohttp.ClientSession) -> None:
    async with serving(answering(SSE, then_close=True)) as (server, url):
        for _ in range(2):
            async with opened(session, url) as upstream:
                assert b"".join(await read_all(upstream)) == SSE_BODY
            await asyncio.sleep(0.02)
        assert server.accepted == 2


async def test_cancellation_closes_the_connection(session: aiohttp.ClientSession) -> None:
    closed = asyncio.Event()

    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(HEAD + chunk(b"data: 1\n\n"))
        try:
            await reader.read()  # until the client closes
        finally:
            closed.set()

    async def consume(url: str) -> None:
        async with opened(session, url) as upstream:
            await read_all(upstream, idle=5)

    async with serving(handler) as (_, url):
        task = asyncio.create_task(consume(url))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert http.pool_of(session).connections() == 0
        await asyncio.wait_for(closed.wait(), 2)


async def test_early_exit_does_not_reuse_the_connection(session: aiohttp.ClientSession) -> None:
    answer = HEAD + chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n") + b"0\r\n\r\n"
    async with serving(answering(answer)) as (server, url):
        async with opened(session, url) as upstream:  # leaves after the first event, the body unread
            assert await upstream.next_chunk(asyncio.get_running_loop().time() + 2, "first_byte")
        assert http.pool_of(session).connections() == 0
        async with opened(session, url) as upstream:
            assert b"".join(await read_all(upstream)) == b"data: 1\n\ndata: 2\n\n"
        assert server.accepted == 2 and http.pool_of(session).idle_connections() == 1


# ---- backpressure ---------------------------------------------------------------------------------


async def test_a_paused_consumer_pauses_the_socket(session: aiohttp.ClientSession) -> None:
    event = b"data: " + b"x" * 1000 + b"\n\n"
    count = 20_000  # ~20 MiB: far more than the socket buffers and the high-water mark hold
    sent = 0
    done = asyncio.Event()

    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await server.read_request(reader)
        writer.write(HEAD)
        for _ in range(count):
            writer.write(chunk(event))
            await writer.drain()
            sent += 1
        writer.write(b"0\r\n\r\n")
        done.set()
        await server.read_request(reader)

    async with serving(handler) as (server, url), opened(session, url) as upstream:
        loop = asyncio.get_running_loop()
        first = await upstream.next_chunk(loop.time() + 2, "first_byte")
        await asyncio.sleep(0.3)  # a slow app: the producer runs ahead until the socket is paused
        stream: wire_stream.Stream = upstream._stream
        conn = stream._conn
        assert conn is not None and conn.transport is not None
        assert not conn.transport.is_reading()
        assert conn.parser.pending <= wire_stream.HIGH_WATER + 256 * 1024  # one read past the mark at most
        assert sent < count and not done.is_set()  # the producer is held back, not buffered without bound
        total = len(first) + sum(len(p) for p in await read_all(upstream))
        assert total == count * len(event)
        assert server.accepted == 1 and http.pool_of(session).idle_connections() == 1
