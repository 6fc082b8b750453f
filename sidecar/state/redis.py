"""The edge to Redis shared by the response cache and the budgets: client options and a failure gate.

Redis is optional help, never a dependency of a request: every call is bounded by a short timeout, a
failure is logged once per failure burst (with the server's host:port, never its URL or password), and
after one the gate stays shut for ``BACKOFF_SECONDS`` so requests do not each pay the timeout again.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from sidecar.config.shared import RedisSettings

log = logging.getLogger("sidecar.redis")
BACKOFF_SECONDS = 5.0
CONNECT_TIMEOUT = 0.25
SOCKET_TIMEOUT = 1.0
WARM_UP_TIMEOUT = 3.0  # the first contact: Sentinel's primary lookup, a Cluster's slot map


async def warm_up(redis: Any, gate: RedisGate) -> None:
    """One PING with time for the first contact, off the request path, so that the short per-call timeouts
    that follow do not meet discovery work (and shut the gate) on the first requests."""
    import asyncio

    try:
        await asyncio.wait_for(redis.ping(), WARM_UP_TIMEOUT)
    except Exception as error:
        gate.failed(error)
    else:
        gate.succeeded()


def connection_options(settings: RedisSettings, socket_timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """Keyword arguments for a redis-py connection: short timeouts and no retries of its own (the gate
    decides when to try again)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": socket_timeout,
                               "socket_connect_timeout": CONNECT_TIMEOUT}
    if settings.username:
        options["username"] = settings.username
    return options


def client(settings: RedisSettings, socket_timeout: float = SOCKET_TIMEOUT) -> Any:
    """A redis-py asyncio client for ``settings`` (imported only when a Redis is configured): a plain
    ``Redis``; for Sentinel, redis-py's ``Sentinel(...).master_for(service)``, which finds the current primary
    (again after a failover); for Cluster, redis-py's ``RedisCluster``, which follows the slot map.
    ``socket_timeout``: longer for a client that blocks in Redis on purpose (``XREAD BLOCK``)."""
    import redis.asyncio

    password = settings.password.value if settings.password else None
    if settings.mode == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        options = connection_options(settings, socket_timeout)
        sentinel = Sentinel(list(settings.nodes), sentinel_kwargs={
            "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT}, ssl=settings.ssl,
            password=password, db=settings.db, **options)
        return sentinel.master_for(settings.service or "mymaster", check_connection=False)
    if settings.mode == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options = connection_options(settings, socket_timeout)
        # the cluster client follows MOVED/ASK itself; one more try after a cluster error, at once (the gate
        # bounds the time)
        options["retry"] = Retry(NoBackoff(), 1)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in settings.nodes], password=password,
                            ssl=settings.ssl, **options)
    return redis.asyncio.Redis(host=settings.host, port=settings.port, db=settings.db, password=password,
                               ssl=settings.ssl, **connection_options(settings, socket_timeout))


class RedisGate:
    """Open while Redis answers; shut for ``backoff`` seconds after a failure. Logs the edges only."""

    __slots__ = ("address", "backoff", "clock", "down", "shut_until", "what")

    def __init__(self, what: str, settings: RedisSettings, *, backoff: float = BACKOFF_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.address = settings.address
        self.backoff = backoff
        self.clock = clock
        self.down = False
        self.shut_until = 0.0

    @property
    def open(self) -> bool:
        """True while Redis answers. After a failure, False until the backoff ends; then True for one
        caller (the probe) while the gate stays shut for the others until the probe reports back."""
        if not self.down:
            return True
        now = self.clock()
        if now < self.shut_until:
            return False
        self.shut_until = now + self.backoff
        return True

    def failed(self, error: BaseException) -> None:
        self.shut_until = self.clock() + self.backoff
        if not self.down:
            self.down = True
            # The class name only: redis-py's messages can carry the connection URL. The address is a field
            # (log messages are redacted of internal addresses; the operator's own setting is not).
            log.warning("redis unavailable for the %s (%s); going on without it, next try in %g s",
                        self.what, type(error).__name__, self.backoff, extra={"fields": {"redis": self.address}})

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            log.warning("redis is back for the %s", self.what, extra={"fields": {"redis": self.address}})


@functools.cache
def pod_id() -> str:
    """This process among the fleet's: the host (the pod's name in Kubernetes) and a random part; the same for
    the life of the process, across config reloads (a budget's field must stay this process's own)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
