"""/healthz, /readyz and /metrics: read-only views of the process and the router."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from sidecar.server import keys, reload
from sidecar.telemetry.replicas import ReplicaRow, render_replicas

OK = b'{"status":"ok"}'


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=OK, content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[keys.STATE]
    router = state.router
    if router is None or state.draining:
        reason = "draining" if state.draining else "starting"
        return web.json_response({"status": reason}, status=503)
    missing = router.unavailable_groups()
    if missing:
        return web.json_response({"status": "unavailable", "model_groups": missing}, status=503)
    return web.Response(body=OK, content_type="application/json")


class Renders(Protocol):
    """A part of ``/metrics`` that renders its own lines."""

    def render(self) -> str: ...


async def metrics(request: web.Request) -> web.Response:
    state = request.app[keys.STATE]
    breakers = [(t.deployment.id, t.breaker.state) for t in state.router.all_targets()] if state.router else []
    text = state.metrics.render(breakers)
    if state.budgets is not None:
        text += state.budgets.render()
    pipeline = state.pipeline
    assembly = state.assembly
    parts: list[Renders | None] = [assembly.fleet, assembly.placement] if assembly is not None else []
    if pipeline is not None:
        parts += [pipeline.semantic, pipeline.coalescer, pipeline.locks]
    text += "".join(part.render() for part in parts if part is not None)
    text += reload.render(state)
    if state.router is not None:
        text += render_replicas(ReplicaRow(p.deployment.id, r.name, r.healthy, r.inflight, r.waiting, r.requests,
                                           r.cached_tokens) for p in state.router.pools() for r in p.replicas)
    return web.Response(body=text.encode(), headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"})
