"""Typed application keys and the state the API and admin apps share."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from sidecar.config import Config
from sidecar.router import Router
from sidecar.telemetry import RequestMetrics


@dataclass(slots=True)
class AppState:
    config: Config
    router: Router | None = None
    session: aiohttp.ClientSession | None = None
    draining: bool = False
    metrics: RequestMetrics = field(default_factory=RequestMetrics)


STATE = web.AppKey("state", AppState)
