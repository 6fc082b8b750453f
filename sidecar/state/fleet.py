"""Fleet-wide rate limits: a provider account's rpm/tpm shared by every pod through Redis, leased in batches.

Redis holds one token bucket per deployment and limit (``FLEET_BUCKET``, a Lua script: refilled at the
limit's rate on Redis's own clock, at most a minute's worth). A pod never asks Redis per request: its
``FleetBucket`` spends capacity it has leased, and when what it holds falls below half a batch it leases the
next batch in the background (one lease in flight per bucket). Redis grants what the fleet bucket has, so
the pods together never pass the limit by more than what is leased and unspent.

Redis down (the ``RedisGate`` is shut) → each pod falls back to its share, a local bucket of
``limit / expected_pods``; leasing resumes when the gate's probe succeeds. The router sees the same
interface as ``policy.limits.TokenBucket``: ``take`` → 0 granted, else seconds to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sidecar.config.shared import FleetSettings, RedisSettings
from sidecar.policy.limits import TokenBucket
from sidecar.state.redis import RedisGate, client, warm_up

log = logging.getLogger("sidecar.fleet")
LEASE_TIMEOUT = 0.25  # seconds a lease may take; slower is a failure (the gate shuts, the local share takes over)

# KEYS[1]: the bucket; ARGV: rate per second, burst, units wanted. Returns the units granted (whole units).
FLEET_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'level', 'at')
local level, at = tonumber(v[1]), tonumber(v[2])
if level == nil or at == nil then level, at = burst, now end
if now > at then level = math.min(burst, level + (now - at) * rate) end
local granted = math.min(want, math.floor(level))
if granted < 0 then granted = 0 end
level = level - granted
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return granted
"""


class Fleet:
    """The Redis side of every fleet bucket of one config: client, gate, lease counters."""

    def __init__(self, settings: FleetSettings, redis_settings: RedisSettings, namespace: str) -> None:
        self.settings = settings
        self.redis = client(redis_settings)
        self.gate = RedisGate("fleet rate limits", redis_settings)
        self.prefix = f"{namespace}:fleet:"
        self.script: Any = self.redis.register_script(FLEET_BUCKET)
        self.leases = 0  # lease calls made (for /metrics: Redis traffic)
        self.granted = 0  # units granted by them
        self.fallbacks = 0  # times a bucket fell back to its local share
        self._tasks: set[asyncio.Task[None]] = set()
        self.warming = asyncio.ensure_future(warm_up(self.redis, self.gate))  # buckets' first leases wait for it

    def bucket(self, deployment: str, kind: str, limit: int) -> FleetBucket:
        """A deployment's fleet bucket for ``kind`` (rpm or tpm); its first lease starts now."""
        bucket = FleetBucket(self, f"{self.prefix}{deployment}:{kind}", limit, self.settings.expected_pods)
        bucket._lease_soon()
        return bucket

    async def lease(self, key: str, per_second: float, burst: float, want: int) -> int | None:
        """Units granted by the fleet bucket, or None when Redis is not answering."""
        if not self.warming.done():
            await asyncio.wait({self.warming})  # bounded by warm_up's own timeout
        if not self.gate.open:
            return None
        self.leases += 1
        try:
            granted = int(await asyncio.wait_for(self.script(keys=[key], args=[per_second, burst, want]),
                                                 LEASE_TIMEOUT))
        except Exception as error:
            self.gate.failed(error)
            return None
        self.gate.succeeded()
        self.granted += granted
        return granted

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self.warming.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def render(self) -> str:
        return ("# HELP llm_sidecar_fleet_leases_total Capacity leases asked of Redis for fleet rate limits.\n"
                "# TYPE llm_sidecar_fleet_leases_total counter\n"
                f"llm_sidecar_fleet_leases_total {self.leases}\n"
                "# HELP llm_sidecar_fleet_leased_units_total Requests or tokens granted by those leases.\n"
                "# TYPE llm_sidecar_fleet_leased_units_total counter\n"
                f"llm_sidecar_fleet_leased_units_total {self.granted}\n"
                "# HELP llm_sidecar_fleet_fallbacks_total Times a fleet limit fell back to this pod's share.\n"
                "# TYPE llm_sidecar_fleet_fallbacks_total counter\n"
                f"llm_sidecar_fleet_fallbacks_total {self.fallbacks}\n")


class FleetBucket:
    """A deployment's rpm or tpm as this pod sees a fleet limit: leased units, spent locally."""

    __slots__ = ("batch", "burst", "fleet", "key", "leasing", "level", "limit", "local", "per_second", "retry_at",
                 "shared")

    def __init__(self, fleet: Fleet, key: str, limit: int, expected_pods: int) -> None:
        self.fleet = fleet
        self.key = key
        self.limit = limit
        self.per_second = limit / 60.0
        self.burst = float(limit)
        share = max(1.0, limit / expected_pods)
        # A batch: a tenth of this pod's share (at least 1), so a pod holds little the others could use.
        self.batch = max(1, int(share // 10))
        self.local = TokenBucket(share)  # this pod's share, for while Redis is away
        self.level = 0.0  # leased units not yet spent
        self.leasing = False
        self.retry_at = 0.0  # monotonic: the fleet had nothing left; no lease before the bucket refills a batch
        self.shared = True  # False while Redis is away and the local share decides

    def available(self, now: float) -> float:
        return self.level if self.shared else self.local.available(now)

    def take(self, n: float, now: float) -> float:
        if not self.shared:
            self._lease_soon()  # through the gate, which lets one probe go to Redis after its backoff
            return self.local.take(n, now)
        if self.level >= min(n, self.burst):
            self.level -= n
            if self.level < self.batch / 2:
                self._lease_soon()
            return 0.0
        self._lease_soon()
        return max(n - self.level, 1.0) / self.per_second

    def consume(self, n: float, now: float) -> None:
        """Charge (or refund, negative) the difference between a tpm estimate and what was used."""
        if self.shared:
            self.level = min(self.level - n, self.burst)
        else:
            self.local.consume(n, now)

    def _lease_soon(self) -> None:
        """Lease the next batch in the background — never more than one lease in flight, and none while the
        fleet is known to be out of capacity (at the limit, pods do not ask Redis per request)."""
        if not self.leasing and time.monotonic() >= self.retry_at:
            self.leasing = True
            self.fleet.spawn(self._lease())

    async def _lease(self) -> None:
        try:
            want = self.batch
            if self.level < 0:
                want += int(-self.level)  # pay back a tpm debt first
            granted = await self.fleet.lease(self.key, self.per_second, self.burst, want)
            if granted is None:  # Redis away: the gate decides when to ask it again; a look a second here
                self.retry_at = time.monotonic() + 1.0
                if self.shared:
                    self.shared = False
                    self.fleet.fallbacks += 1
                return
            if not self.shared:
                self.shared, self.level = True, 0.0  # back to the fleet: what was leased before is gone
            self.level += granted
            if granted < want:
                self.retry_at = time.monotonic() + (want - granted) / self.per_second
        finally:
            self.leasing = False
