"""The floor a Python proxy can reach: a bare aiohttp pass-through (no parsing, no routing, no uvloop).

    python bench/bare.py UPSTREAM_URL PORT

``make bench`` runs it next to the sidecar, pinned to the same core, so each run shows how far the full
request path is from it. It is the baseline the performance issue names, not a gateway.
"""

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = sys.argv[1]
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {"content-type": "application/json"}
    async with request.app[SESSION].post(UPSTREAM, data=body, headers=headers) as upstream:
        data = await upstream.read()
        return web.Response(body=data, status=upstream.status, content_type="application/json")


async def session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession()
    yield
    await app[SESSION].close()


app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_post("/v1/chat/completions", proxy)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
