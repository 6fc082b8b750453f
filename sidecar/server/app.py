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
from sidecar.providers import http, wire
from sidecar.providers.base import UpstreamCall
from sidecar.routing.pipeline import Pipeline
from sidecar.routing.router import Router
from sidecar.server import routes
from sidecar.server.keys import STATE, AppState
from sidecar.state.budgets import Budgets
from sidecar.state.cache import ResponseCache
from sidecar.telemetry import exporter_names, metrics_export_requested
from sidecar.telemetry.logs import flush_request_log

CREDENTIAL_REFRESH_SECONDS = 10.0
USER_AGENT = f"llm-sidecar/{__version__}"
LOG_FLUSH_SECONDS = 0.25
log = logging.getLogger("sidecar.server")


def create_app(state: AppState) -> web.Application:
    sidecar = state.config.sidecar
    # One byte over the limit so our own check (with its clear message) fires first.
    app = web.Application(client_max_size=sidecar.max_body_bytes + 1)
    app[STATE] = state
    app.add_routes(routes.api_routes(sidecar.inbound_api_keys))
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_shared_state)
    app.on_startup.append(_pipeline)
    app.on_shutdown.append(_drain)
    return app


def create_admin_app(state: AppState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.add_routes([*routes.health_routes(), routes.catch_all()])
    return app


def new_session(config: Config) -> aiohttp.ClientSession:
    """The router's handle on the upstream client: a ``wire.Pool`` (keep-alive, at most
    ``max_connections_per_host`` connections per host) attached to an aiohttp session that sends nothing
    itself — ``providers.http`` uses the pool for whole answers and streams alike."""
    session = aiohttp.ClientSession()
    http.attach_pool(session, wire.Pool(limit=config.sidecar.max_connections_per_host, user_agent=USER_AGENT,
                                        keepalive=60.0))
    return session


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.session = new_session(state.config)
    if any(d.api_base.startswith("https:") for d in state.config.deployments):
        await asyncio.get_running_loop().run_in_executor(None, http.pool_of(state.session).load_tls)
    if exporter_names(os.environ):
        from sidecar.telemetry import export  # the OTel SDK loads only when tracing is on
        from sidecar.telemetry.tracing import Tracing

        post = _collector_post(state.session, export.endpoint(os.environ))
        state.tracing = Tracing.from_env(state.config, os.environ, post)
    state.router = Router(state.config, state.session, observer=state.tracing)
    exporter = None
    if metrics_export_requested(os.environ):
        from sidecar.telemetry.otel_metrics import OTelMetrics  # the SDK loads only when export is on

        router = state.router
        exporter = OTelMetrics(state.metrics, lambda: [(t.deployment.id, t.breaker.state)
                                                       for t in router.all_targets()], os.environ)
        state.metrics.exporter = exporter
    timers = [asyncio.create_task(_refresh_credentials(state.router)), asyncio.create_task(_flush_logs())]
    if state.tracing is not None:
        timers += [asyncio.create_task(p.run()) for p in state.tracing.exporters]
    yield
    for timer in timers:
        timer.cancel()
    await asyncio.gather(*timers, return_exceptions=True)
    flush_request_log()
    if state.tracing is not None:
        await state.tracing.aclose()  # before the pool closes: the last spans go through it
    await http.close(state.session)
    if exporter is not None:
        await asyncio.get_running_loop().run_in_executor(None, exporter.shutdown)


async def _shared_state(app: web.Application) -> AsyncIterator[None]:
    """The response cache and the budgets, when configured (else they stay None: nothing per request)."""
    state = app[STATE]
    shared = state.config.sidecar.shared
    if shared.cache is not None:
        state.cache = ResponseCache.from_settings(shared.cache)
    refresh = None
    if shared.budgets:
        state.budgets = Budgets.from_settings(shared, state.config.groups)
        _warn_unpriced(state.config)
        if state.budgets.redis is not None:
            refresh = asyncio.create_task(state.budgets.run())
    yield
    if refresh is not None:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
    if state.budgets is not None:
        await state.budgets.aclose()
    if state.cache is not None:
        await state.cache.aclose()


async def _pipeline(app: web.Application) -> None:
    """Assembled last: the router (``_upstreams``) and the cache and budgets (``_shared_state``) exist now."""
    state = app[STATE]
    assert state.router is not None
    state.pipeline = Pipeline(state.router, state.metrics, cache=state.cache, budgets=state.budgets,
                              tracing=state.tracing)


def _warn_unpriced(config: Config) -> None:
    """Budgets count the cost from model_info prices: say so at start when a covered deployment has none."""
    for budget in config.sidecar.shared.budgets:
        unpriced = sorted({d.id for d in config.deployments if (not budget.models or d.model_name in budget.models)
                           and d.model_info.input_cost_per_token is None
                           and d.model_info.output_cost_per_token is None})
        if unpriced:
            log.warning("budget '%s': no model_info prices for %s; their answers cost nothing against it",
                        budget.name, ", ".join(unpriced))


def _collector_post(session: aiohttp.ClientSession,
                    url: str) -> Callable[[bytes, Mapping[str, str], float], Awaitable[int]]:
    """Span batches go to the collector through the same pooled client as upstream calls."""
    loop = asyncio.get_running_loop()

    async def post(body: bytes, headers: Mapping[str, str], seconds: float) -> int:
        answer = await http.send(session, UpstreamCall(url, headers, body), loop.time() + seconds)
        return answer.status

    return post


async def _refresh_credentials(router: Router) -> None:
    """File secrets (mounted Kubernetes Secrets) are re-read on a timer, never on the request path."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(CREDENTIAL_REFRESH_SECONDS)
        await loop.run_in_executor(None, router.refresh_credentials)


async def _flush_logs() -> None:
    """Request log lines are buffered (no write per request); push them out a few times a second."""
    while True:
        await asyncio.sleep(LOG_FLUSH_SECONDS)
        flush_request_log()


async def _drain(app: web.Application) -> None:
    app[STATE].draining = True
