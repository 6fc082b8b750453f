"""Start and stop the two servers: the API app on its port, the admin app on its own, each within its limits.

Stopping honours ``shutdown_grace_seconds`` once, counted from the signal: the API port stops accepting and
its idle connections close, in-flight requests and streams get the grace to finish, and whatever is still
running when it ends is cut. (aiohttp's own shutdown waits its timeout for the handlers, then as long again
after cancelling them: streams ran to twice the grace, past a pod's ``terminationGracePeriodSeconds``.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from aiohttp import web

from sidecar.config import Config
from sidecar.server.app import create_admin_app, create_app
from sidecar.server.keys import AppState
from sidecar.server.listener import Guard, Listener, api_connection_cap, listen, raise_open_file_limit

log = logging.getLogger("sidecar")
CUT_SECONDS = 0.5  # after the grace: how long cancelled handlers get to unwind
DRAIN_POLL_SECONDS = 0.05


class StartupError(Exception):
    """The servers could not start; the message is one line for the operator (no traceback)."""


class Servers:
    """The API and admin servers of one process, sharing one ``AppState``."""

    def __init__(self, config: Config, host: str, port: int, admin_host: str, admin_port: int, *,
                 config_path: str | None = None, digest: str = "") -> None:
        self.config = config  # as started: listeners and the grace are read once (a reload says so)
        self.state = AppState(config, config_path=config_path, digest=digest)
        self.addresses = ((host, port), (admin_host, admin_port))
        access_log = logging.getLogger("aiohttp.access") if config.sidecar.access_log else None
        self.access_log = access_log
        self.api = web.AppRunner(create_app(self.state), handle_signals=False, handler_cancellation=True,
                                 shutdown_timeout=CUT_SECONDS, access_log=access_log)
        self.admin = web.AppRunner(create_admin_app(self.state), handle_signals=False,
                                   shutdown_timeout=CUT_SECONDS, access_log=None)
        self.api_listener: Listener | None = None

    async def start(self) -> None:
        """Set both apps up and listen; ``StartupError`` when a port cannot be bound."""
        settings = self.config.sidecar.listeners
        guards = self._guards()
        await self.api.setup()
        await self.admin.setup()
        (host, port), (admin_host, admin_port) = self.addresses
        where = f"{host}:{port}"
        try:
            self.api_listener = await listen(self.api, host, port, guards[0], idle_timeout=settings.idle_timeout,
                                             access_log=self.access_log)
            where = f"{admin_host}:{admin_port}"
            await listen(self.admin, admin_host, admin_port, guards[1], idle_timeout=settings.idle_timeout)
        except OSError as exc:
            await self.api.cleanup()
            await self.admin.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {where}: {reason}") from None

    def _guards(self) -> tuple[Guard, Guard]:
        """Each port's cap; the API's lowered if the open-file limit cannot hold it next to the others."""
        sidecar = self.config.sidecar
        settings = sidecar.listeners
        open_files = raise_open_file_limit()
        hosts = {urlsplit(d.api_base).netloc for d in self.config.deployments}
        upstream = sidecar.max_connections_per_host * len(hosts)
        cap = api_connection_cap(settings.max_connections, settings.admin_max_connections, open_files, upstream)
        if cap < settings.max_connections:
            log.warning("open-file limit %d: the API port takes at most %d connections (not %d)", open_files, cap,
                        settings.max_connections)
        return (Guard("api", cap, settings.header_timeout),
                Guard("admin", settings.admin_max_connections, settings.header_timeout))

    async def stop(self) -> None:
        """Drain within the grace (once), then close both servers."""
        loop = asyncio.get_running_loop()
        grace = self.config.sidecar.shutdown_grace_seconds
        deadline = loop.time() + grace
        log.info("shutting down: draining in-flight requests for up to %gs", grace)
        self.state.draining = True
        if self.api_listener is not None:
            await self.api_listener.stop()  # no new connections
        server = self.api.server
        if server is not None:
            server.pre_shutdown()  # idle keep-alive connections close; busy ones after their answer
        metrics = self.state.metrics
        # Polled: an event set by every request's end would cost each request a check, for one shutdown.
        while metrics.in_flight > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        await self.api.cleanup()  # cuts what still runs (CUT_SECONDS to unwind)
        await self.admin.cleanup()
        log.info("stopped")
