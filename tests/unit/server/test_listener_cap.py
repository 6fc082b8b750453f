"""A port at its connection cap (in process, a real aiohttp app behind the guarded listener): an idle
connection makes room for a new one, the oldest first; a connection with a request under way never does, and
with every connection busy a newcomer gets the 503."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from sidecar.server.listener import Guard, listen


async def _serve(guard: Guard) -> tuple[web.AppRunner, int]:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(text="ok")

    async def fast(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    runner = web.AppRunner(app)
    await runner.setup()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    await listen(runner, "127.0.0.1", port, guard, idle_timeout=30)
    return runner, port


async def _ask(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def test_busy_connections_keep_their_slots_and_a_newcomer_is_refused() -> None:
    async def main() -> bytes:
        guard = Guard("api", 2, 5.0)
        runner, port = await _serve(guard)
        try:
            busy = [await _ask(port, "/slow") for _ in range(2)]
            await asyncio.sleep(0.2)
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            refused = await asyncio.wait_for(reader.read(200), 3)
            for busy_reader, _ in busy:  # both answered: neither was closed for the newcomer
                assert (await asyncio.wait_for(busy_reader.readline(), 3)).startswith(b"HTTP/1.1 200")
            return refused
        finally:
            await runner.cleanup()
    assert asyncio.run(main()).startswith(b"HTTP/1.1 503")


def test_idle_connections_make_room_oldest_first() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        guard = Guard("admin", 2, 5.0)
        runner, port = await _serve(guard)
        try:
            silent = await asyncio.open_connection("127.0.0.1", port)  # never sends anything
            kept = await _ask(port, "/fast")  # answered, then idle keep-alive
            assert (await asyncio.wait_for(kept[0].readline(), 3)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.1)
            probe = await _ask(port, "/fast")  # at the cap: the silent one (the oldest idle) makes room
            answer = await asyncio.wait_for(probe[0].readline(), 3)
            evicted = await asyncio.wait_for(silent[0].read(100), 3)
            again = await _ask(port, "/fast")  # and now the kept one, idle since its answer
            return answer, evicted, await asyncio.wait_for(again[0].readline(), 3)
        finally:
            await runner.cleanup()
    answer, evicted, again = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 200") and evicted == b"" and again.startswith(b"HTTP/1.1 200")
