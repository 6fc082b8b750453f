"""Keeping a ``ReplicaPool`` fresh, off the request path: one poller per replica, and DNS discovery.

Each replica's poller wakes every ``replica_poll_seconds`` (±20% jitter, so pods do not poll in step), asks
``GET /health`` (SGLang's generating probe: 200, or 503 while starting, stuck or shutting down; or
``replica_health_path``, e.g. ``/ready``, a flag check that costs the GPU nothing) and its load
from ``GET /v1/loads`` — or, when that route is missing (older servers), the ``sglang:`` gauges of
``/metrics`` — each under ``replica_poll_timeout_seconds``. A failed health poll takes the replica out of
rotation; the next good one brings it back. Requests never wait on any of this: they read the last values.

With ``replicas: dns`` a resolver task (``sglang_dns``) re-resolves the ``api_base`` host every
``replica_refresh_seconds`` and hands the address set to the pool; pollers start and stop with the replicas.

The pollers use their own small aiohttp session (GETs to replicas inside the cluster, no proxy), never the
upstream client of the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from urllib.parse import urlsplit

import aiohttp

from sidecar.formats.sglang import Load, parse_loads, parse_metrics
from sidecar.providers.sglang import Replica, ReplicaPool

log = logging.getLogger("sidecar.sglang")
JITTER = 0.2
POOL_TASK = "sglang-pool:"  # the name prefix of a pool's task (a reload keeps budget tasks, never these)
MAX_POLL_BODY = 1024 * 1024  # a /metrics exposition is tens of KiB; past this a poll answer is a bad answer
MAX_HEALTH_BODY = 64 * 1024  # /health answers with an empty body: read at most this (the rest closes the connection)


class PoolWatcher:
    """The background tasks of one pool: a poller per replica and, with DNS discovery, the resolver."""

    def __init__(self, pool: ReplicaPool, rng: random.Random | None = None) -> None:
        self.pool = pool
        self.rng = rng or random.Random()
        self.session: aiohttp.ClientSession | None = None
        self.pollers: dict[str, asyncio.Task[None]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        pool.on_change = self._changed

    def start(self) -> asyncio.Task[None]:
        """One task that owns everything (cancel it to stop the pollers and close their session)."""
        return asyncio.create_task(self._run(), name=poller_name(self.pool))

    async def _run(self) -> None:
        settings = self.pool.settings
        timeout = aiohttp.ClientTimeout(total=settings.poll_timeout)
        # identity encoding, and no decompression: a small gzip answer must not inflate into a huge one
        self.session = aiohttp.ClientSession(timeout=timeout, trust_env=False, auto_decompress=False,
                                             headers={"Accept-Encoding": "identity"},
                                             connector=aiohttp.TCPConnector(limit=32, ttl_dns_cache=None))
        try:
            self._changed(list(self.pool.replicas), [])
            if settings.dns:
                await self._resolve_forever()
            else:
                await asyncio.Event().wait()
        finally:
            for task in self.pollers.values():
                task.cancel()
            await asyncio.gather(*self.pollers.values(), return_exceptions=True)
            await self.session.close()

    def _changed(self, added: list[Replica], removed: list[Replica]) -> None:
        if self.session is None:
            return  # not started yet: _run starts pollers for every replica
        for replica in removed:
            task = self.pollers.pop(replica.url, None)
            if task is not None:
                task.cancel()
        for replica in added:
            if replica.url not in self.pollers:
                self.pollers[replica.url] = asyncio.create_task(self._poll_forever(replica))
        if added or removed:
            log.info("sglang replicas of %s: %d (+%d -%d)", self.pool.deployment.id, len(self.pool.replicas),
                     len(added), len(removed))

    async def _resolve_forever(self) -> None:
        from sidecar.providers.sglang_dns import Resolver  # dnspython loads only for dns discovery

        base = urlsplit(self.pool.deployment.api_base)
        resolver = Resolver(base.hostname or "", base.port or (443 if base.scheme == "https" else 80),
                            timeout=self.pool.settings.poll_timeout, server=self.pool.settings.dns_server)
        try:
            while True:
                try:
                    addresses = await resolver.resolve()
                except Exception as exc:  # any failed lookup (timeout, NXDOMAIN, no answer) keeps the last known set
                    log.warning("sglang replicas of %s: lookup failed (%s); keeping %d replicas",
                                self.pool.deployment.id, type(exc).__name__, len(self.pool.replicas))
                else:
                    path = base.path.rstrip("/")
                    self.pool.set_urls([f"{base.scheme}://{_host(ip)}:{port}{path}" for ip, port in addresses])
                await asyncio.sleep(self.pool.settings.refresh_seconds)
        finally:
            resolver.close()

    async def _poll_forever(self, replica: Replica) -> None:
        interval = self.pool.settings.poll_seconds
        await asyncio.sleep(self.rng.uniform(0, interval * JITTER))  # spread the first polls too
        while not replica.removed:
            await self.poll(replica)
            await asyncio.sleep(interval * self.rng.uniform(1 - JITTER, 1 + JITTER))

    async def poll(self, replica: Replica) -> None:
        """One round: health and load together; any failure of the health probe takes the replica out."""
        sent = replica.inflight  # what the load answer will count of ours (not what is in flight when it arrives)
        healthy, load = await asyncio.gather(self._health(replica), self._load(replica))
        if healthy != replica.healthy:
            log.warning("sglang replica %s of %s is %s", replica.name, self.pool.deployment.id,
                        "healthy again" if healthy else "unhealthy: out of rotation")
        replica.healthy = healthy
        if load is not None:
            replica.observe(load, sent)

    async def _health(self, replica: Replica) -> bool:
        assert self.session is not None
        try:
            url = replica.root + self.pool.settings.health_path
            async with self.session.get(url, allow_redirects=False) as answer:
                await _body(answer, MAX_HEALTH_BODY, strict=False)  # read, so the connection is kept
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _load(self, replica: Replica) -> Load | None:
        """The replica's load from ``/v1/loads``, or from ``/metrics`` when the server has no ``/v1/loads``
        (a 404: from then on) or its answer this time is not SGLang's shape; None when neither answers."""
        assert self.session is not None
        if replica.load_source == "loads":
            try:
                async with self.session.get(f"{replica.root}/v1/loads", params={"include": "core,queues"},
                                            allow_redirects=False) as answer:
                    if answer.status == 200:
                        return parse_loads(await _body(answer, MAX_POLL_BODY))
                    if answer.status != 404:
                        return None
                    replica.load_source = "metrics"  # an older server: read its gauges from now on
            except ValueError:
                pass  # not SGLang's shape, too large, or an implausible number: try the gauges this time
            except (aiohttp.ClientError, TimeoutError, OSError):
                return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
            async with self.session.get(f"{replica.root}/metrics", allow_redirects=False) as answer:
                if answer.status == 200:
                    return parse_metrics(await _body(answer, MAX_POLL_BODY))
        return None


async def _body(answer: aiohttp.ClientResponse, cap: int, strict: bool = True) -> bytes:
    """The whole body (however many reads it arrives in), at most ``cap`` bytes: past it, ``ValueError`` when
    ``strict``, else what was read (leaving the rest unread closes the connection instead of reusing it)."""
    if answer.content_length is not None and answer.content_length > cap and strict:
        raise ValueError("poll answer too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_any():
        size += len(chunk)
        if size > cap:
            if strict:
                raise ValueError("poll answer too large")
            break
        chunks.append(chunk)
    return b"".join(chunks)


def poller_name(pool: ReplicaPool) -> str:
    """The name of ``pool``'s watcher task: this pool object's, not another pool's of the same deployment id."""
    return f"{POOL_TASK}{pool.deployment.id}#{id(pool):x}"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
