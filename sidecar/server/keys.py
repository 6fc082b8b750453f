"""Typed application keys and the state the API and admin apps share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sidecar.config import Config
from sidecar.routing.pipeline import Pipeline
from sidecar.routing.router import Router
from sidecar.state.budgets import Budgets
from sidecar.state.cache import ResponseCache
from sidecar.telemetry import RequestMetrics

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Tracing


@dataclass(slots=True)
class AppState:
    config: Config
    router: Router | None = None
    session: aiohttp.ClientSession | None = None
    draining: bool = False
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    tracing: Tracing | None = None  # None: tracing off (OTEL_* say so), and the request path skips it
    cache: ResponseCache | None = None  # None: no cache configured, and the request path skips it
    budgets: Budgets | None = None  # None: no budgets configured, and the request path skips them
    pipeline: Pipeline | None = None  # one request's steps around the router; set once both are up


STATE = web.AppKey("state", AppState)
