"""Typed application keys and the state the API and admin apps share."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sidecar.config import Config
from sidecar.routing.pipeline import Pipeline
from sidecar.routing.router import Router
from sidecar.server.assembly import Assembly
from sidecar.server.middleware import InboundKeys
from sidecar.state.budgets import Budgets
from sidecar.state.cache import ResponseCache
from sidecar.telemetry import RequestMetrics

if TYPE_CHECKING:
    from sidecar.server.reload import Reloader
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
    # Live reload: the config file (watched, and re-read on SIGHUP) and the sha256 of what is served.
    config_path: str | None = None
    digest: str = ""
    keys: InboundKeys = field(default_factory=InboundKeys)  # the routes' inbound keys, replaced on reload
    assembly: Assembly | None = None
    reloader: Reloader | None = None
    reloads: Counter[str] = field(default_factory=Counter)  # llm_sidecar_config_reloads_total by result

    def install(self, assembly: Assembly) -> None:
        """Serve ``assembly`` from now on. One synchronous step: no request sees half of a config, and a
        request that already holds the previous pipeline finishes on it."""
        self.assembly = assembly
        self.config, self.digest = assembly.config, assembly.digest
        self.router, self.pipeline, self.tracing = assembly.router, assembly.pipeline, assembly.tracing
        self.cache, self.budgets = assembly.cache, assembly.budgets
        self.keys.secrets = assembly.config.sidecar.inbound_api_keys
        self.keys.owners = assembly.config.sidecar.key_owners


STATE = web.AppKey("state", AppState)
