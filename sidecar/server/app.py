"""Application factories: the API app on loopback and the admin app for probes and Prometheus."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web

from sidecar import __version__
from sidecar.config import Config
from sidecar.config.model import MIB
from sidecar.formats.http1 import AnswerMemory
from sidecar.providers import http, wire
from sidecar.providers.base import UpstreamCall
from sidecar.server import routes
from sidecar.server.assembly import Process, assemble, retire
from sidecar.server.keys import STATE, AppState
from sidecar.server.memory import trim_after_large_answers
from sidecar.server.reload import Reloader
from sidecar.telemetry import exporter_names, metrics_export_requested
from sidecar.telemetry.logs import flush_request_log

USER_AGENT = f"llm-sidecar/{__version__}"
LOG_FLUSH_SECONDS = 0.25
log = logging.getLogger("sidecar.server")


def create_app(state: AppState) -> web.Application:
    sidecar = state.config.sidecar
    # One byte over the limit so our own check (with its clear message) fires first.
    app = web.Application(client_max_size=sidecar.max_body_bytes + 1)
    app[STATE] = state
    state.keys.secrets, state.keys.owners = sidecar.inbound_api_keys, sidecar.key_owners
    app.add_routes(routes.api_routes(state.keys))
    app.cleanup_ctx.append(_upstreams)
    app.on_shutdown.append(_drain)
    return app


def create_admin_app(state: AppState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.add_routes(routes.admin_routes())
    return app


def new_session(config: Config) -> aiohttp.ClientSession:
    """The router's handle on the upstream client: a ``wire.Pool`` (keep-alive, at most
    ``max_connections_per_host`` connections per host) attached to an aiohttp session that sends nothing
    itself — ``providers.http`` uses the pool for whole answers and streams alike."""
    sidecar = config.sidecar
    limits = sidecar.limits
    session = aiohttp.ClientSession()
    http.attach_pool(session, wire.Pool(
        limit=sidecar.max_connections_per_host, user_agent=USER_AGENT, keepalive=60.0,
        max_body=int(limits.upstream_answer_mb * MIB), memory=AnswerMemory(int(limits.upstream_answers_total_mb * MIB)),
        proxies=sidecar.proxies, connect_timeout=sidecar.connect_timeout_seconds))
    return session


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The process's upstream client, tracing and metrics export, the config's assembly (router, pipeline,
    cache, budgets) and the reloader that replaces it; closed in reverse at shutdown."""
    state = app[STATE]
    state.session = new_session(state.config)
    if exporter_names(os.environ):
        from sidecar.telemetry import export  # the OTel SDK loads only when tracing is on
        from sidecar.telemetry.tracing import Tracing

        post = _collector_post(state.session, export.endpoint(os.environ))
        state.tracing = Tracing.from_env(state.config, os.environ, post)
    state.install(await assemble(state.config, state.digest, Process(state.session, state.metrics, state.tracing)))
    exporter = None
    if metrics_export_requested(os.environ):
        from sidecar.telemetry.otel_metrics import OTelMetrics  # the SDK loads only when export is on

        exporter = OTelMetrics(state.metrics, lambda: [(t.deployment.id, t.breaker.state)
                                                       for t in state.router.all_targets()] if state.router else [],
                               os.environ)
        state.metrics.exporter = exporter
    state.reloader = Reloader(state)
    timers = [asyncio.create_task(state.reloader.run()), asyncio.create_task(_flush_logs()),
              asyncio.create_task(trim_after_large_answers())]
    if state.tracing is not None:
        timers += [asyncio.create_task(p.run()) for p in state.tracing.exporters]
    yield
    for timer in timers:
        timer.cancel()
    await asyncio.gather(*timers, return_exceptions=True)
    await state.reloader.aclose()
    if state.assembly is not None:
        await retire(state.assembly, None)
    flush_request_log()
    if state.tracing is not None:
        await state.tracing.aclose()  # before the pool closes: the last spans go through it
    await http.close(state.session)
    if exporter is not None:
        await asyncio.get_running_loop().run_in_executor(None, exporter.shutdown)


def _collector_post(session: aiohttp.ClientSession,
                    url: str) -> Callable[[bytes, Mapping[str, str], float], Awaitable[int]]:
    """Span batches go to the collector through the same pooled client as upstream calls."""
    loop = asyncio.get_running_loop()

    async def post(body: bytes, headers: Mapping[str, str], seconds: float) -> int:
        answer = await http.send(session, UpstreamCall(url, headers, body), loop.time() + seconds)
        return answer.status

    return post


async def _flush_logs() -> None:
    """Request log lines are buffered (no write per request); push them out a few times a second."""
    while True:
        await asyncio.sleep(LOG_FLUSH_SECONDS)
        flush_request_log()


async def _drain(app: web.Application) -> None:
    app[STATE].draining = True
