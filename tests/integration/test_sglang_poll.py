"""The replica pollers against a hostile replica on loopback (a real aiohttp server and the real poller): answers
split over many reads, huge or compressed bodies, redirects, implausible numbers. A poll never takes more than
its cap of memory, never leaves the cluster address it was given, and a bad answer fails that poll only."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from sidecar.config import Deployment
from sidecar.config.replicas import ReplicaSettings
from sidecar.providers.sglang import ReplicaPool
from sidecar.providers.sglang_poll import MAX_HEALTH_BODY, PoolWatcher

LOADS = orjson.dumps({"loads": [{"dp_rank": r, "num_running_reqs": 3, "num_waiting_reqs": 1,
                                 "max_running_requests": 64, "token_usage": 0.5, "cache_hit_rate": 0.25,
                                 "memory": {"weight_gb": 15.3, "kv_cache_gb": 48.0}, "queues": {"waiting": 1}}
                                for r in range(8)]})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def _poll_once(url: str) -> PoolWatcher:
    settings = ReplicaSettings(urls=(url,), poll_timeout=5.0)
    deployment = Deployment(id="sglang/m", model_name="local", provider="sglang", model="m", api_base=url,
                            replicas=settings)
    watcher = PoolWatcher(ReplicaPool(deployment, settings, asyncio.get_running_loop().time))
    task = watcher.start()
    await asyncio.sleep(0)  # the session exists
    await asyncio.sleep(0.05)
    try:
        await watcher.poll(watcher.pool.replicas[0])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return watcher


async def _ok(_: web.Request) -> web.StreamResponse:
    return web.Response(text="")


async def _missing(_: web.Request) -> web.StreamResponse:
    return web.Response(status=404)


async def _in_pieces(request: web.Request) -> web.StreamResponse:
    """The answer of an 8-rank server, in segments with pauses between: several reads on the client."""
    answer = web.StreamResponse(headers={"content-type": "application/json"})
    answer.content_length = len(LOADS)
    await answer.prepare(request)
    for start in range(0, len(LOADS), 500):
        await answer.write(LOADS[start:start + 500])
        await asyncio.sleep(0.02)
    await answer.write_eof()
    return answer


def test_a_loads_answer_in_many_reads_is_read_whole() -> None:
    async def main() -> tuple[float, float, int | None, str]:
        runner, url = await _serve({"/health": _ok, "/v1/loads": _in_pieces, "/metrics": _missing})
        try:
            replica = (await _poll_once(url)).pool.replicas[0]
            return replica.running, replica.waiting, replica.max_running, replica.load_source
        finally:
            await runner.cleanup()
    assert asyncio.run(main()) == (24.0, 8.0, 512, "loads")


def test_an_odd_loads_answer_fails_that_poll_and_the_gauges_answer_it() -> None:
    async def odd(_: web.Request) -> web.StreamResponse:  # infinite counts: implausible, so a bad answer
        return web.Response(body=b'{"loads": [{"num_running_reqs": 1e999}]}', content_type="application/json")

    async def gauges(_: web.Request) -> web.StreamResponse:
        return web.Response(text="sglang:num_running_reqs 4\nsglang:num_queue_reqs 2\n")

    async def main() -> tuple[float, float, str]:
        runner, url = await _serve({"/health": _ok, "/v1/loads": odd, "/metrics": gauges})
        try:
            replica = (await _poll_once(url)).pool.replicas[0]
            return replica.running, replica.waiting, replica.load_source
        finally:
            await runner.cleanup()
    assert asyncio.run(main()) == (4.0, 2.0, "loads")  # /v1/loads is asked again next time: only a 404 switches


def test_a_huge_health_body_is_not_read_and_a_compressed_one_not_inflated() -> None:
    sent: list[int] = []
    encodings: list[str] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        encodings.append(request.headers.get("Accept-Encoding", ""))
        answer = web.StreamResponse()
        await answer.prepare(request)
        chunk = b"x" * 65536
        total = 0
        try:
            for _ in range(4096):  # 256 MiB, if anybody reads it
                await answer.write(chunk)
                total += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        sent.append(total)
        return answer

    async def bomb(request: web.Request) -> web.StreamResponse:
        encodings.append(request.headers.get("Accept-Encoding", ""))
        body = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB once inflated, about 64 KiB on the wire
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def main(health: Handler) -> bool:
        runner, url = await _serve({"/health": health, "/v1/loads": _missing, "/metrics": _missing})
        try:
            return (await _poll_once(url)).pool.replicas[0].healthy
        finally:
            await runner.cleanup()
    assert asyncio.run(main(endless))
    assert sent and sent[0] < 64 * MAX_HEALTH_BODY  # the poller stopped reading and closed the connection
    assert asyncio.run(main(bomb))
    assert encodings and set(encodings) == {"identity"}


def test_a_poll_never_follows_a_redirect() -> None:
    followed: list[str] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(str(request.url.with_path("/metadata")))

    async def metadata(request: web.Request) -> web.StreamResponse:
        followed.append(request.path)
        return web.Response(text='{"loads": [{"num_running_reqs": 1}]}')

    async def main() -> tuple[bool, bool]:
        runner, url = await _serve({"/health": elsewhere, "/v1/loads": elsewhere, "/metrics": elsewhere,
                                    "/metadata": metadata})
        try:
            replica = (await _poll_once(url)).pool.replicas[0]
            return replica.healthy, replica.polled
        finally:
            await runner.cleanup()
    assert asyncio.run(main()) == (False, False)
    assert followed == []
