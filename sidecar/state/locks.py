"""Cross-pod coalescing: a short Redis lease per cache key, so that when several pods miss the same answer at
the same time one of them calls the upstream and the others read its answer from the Redis cache.

The leader of a local flight (``routing.coalesce``) asks before it calls:

- ``SET <key>:lock <token> NX PX <lease>`` succeeds: the lease is ours. It is renewed every third of the lease
  while the call runs (so a call may outlast the lease, and a pod that dies lets it lapse within one lease),
  and released — only while it is still ours: compare-and-delete in a Lua script — once the answer is stored
  in Redis, or at once when the call failed.
- another pod holds it (``claim``, whole answers only): poll, 10 ms doubling to 200 ms, for the answer in the
  cache; it is served as coalesced. The lock gone without an answer (the holder's call failed, or it died and
  the lease lapsed) → try to take it again; the wait never passes ``wait`` seconds (the request's deadline).
  Each poll reads the lock before the answer: the holder stores the answer before it releases, so "no lock,
  no answer" really means the holder gave up.
- Redis slow, down, or not contacted yet: no lease, the pod just calls. Every call is bounded by the cache's
  lookup timeout and reports to the cache's ``RedisGate``, so Redis trouble costs a request at most one
  timeout, and none while the gate is shut.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable
from typing import Any

from sidecar.state.cache import GET_TIMEOUT, SET_TIMEOUT, ResponseCache

FIRST_POLL, LAST_POLL = 0.01, 0.2  # seconds between looks for another pod's answer
POD = f"{os.environ.get('HOSTNAME') or socket.gethostname()}:{os.getpid()}"
FAILED = object()  # what ``_ask`` returns when Redis did not answer in time
OURS, HELD, NONE = "ours", "held", "none"
# KEYS[1]: the lock; ARGV[1]: our token (ARGV[2]: the lease in ms). Act only while the lock is still ours.
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


class Lease:
    """A lock this pod holds on one cache key, and the task that keeps it alive."""

    __slots__ = ("key", "renewal", "token")

    def __init__(self, key: str) -> None:
        self.key = key
        self.token = f"{POD}:{secrets.token_hex(6)}"
        self.renewal: asyncio.Task[None] | None = None


class FleetLocks:
    """Leases over the Redis tier of ``cache`` (which must have one), ``lease_ms`` long."""

    def __init__(self, cache: ResponseCache, lease_ms: int) -> None:
        assert cache.gate is not None
        self.cache = cache
        self.gate = cache.gate
        self.lease_ms = lease_ms
        self.served = 0  # requests answered from another pod's call
        self.lapsed = 0  # waits that ended without the other pod's answer (this pod then called)
        self._tasks: set[asyncio.Task[None]] = set()

    def _lock_key(self, key: str) -> str:
        return f"{self.cache.remote.build_key(key)}:lock"

    def _usable(self) -> bool:
        warming = self.cache.warming
        return (warming is None or warming.done()) and self.gate.open

    async def _ask(self, command: Awaitable[Any], within: float = GET_TIMEOUT) -> Any:
        """``command``'s reply, or ``FAILED`` when Redis failed or was slow (the gate shuts)."""
        try:
            reply = await asyncio.wait_for(command, within)
        except Exception as error:
            self.gate.failed(error)
            return FAILED
        self.gate.succeeded()
        return reply

    async def take(self, key: str) -> Lease | None:
        """Our lease on ``key``, or None (another pod holds it, or Redis is not there): a stream takes the lock
        when it is free, so other pods' whole-answer requests can wait for its answer, but never waits itself."""
        lease, state = await self._take(key)
        return lease if state == OURS else None

    async def _take(self, key: str) -> tuple[Lease, str]:
        lease = Lease(self._lock_key(key))
        if not self._usable():
            return lease, NONE
        reply = await self._ask(self.cache.remote.client.set(lease.key, lease.token, nx=True, px=self.lease_ms))
        if reply is FAILED:
            return lease, NONE
        if not reply:
            return lease, HELD
        lease.renewal = asyncio.create_task(self._renew(lease))
        return lease, OURS

    async def claim(self, key: str, wait: float) -> tuple[bytes | None, Lease | None]:
        """Before a whole-answer call: (the answer another pod's call stored, or None; our lease, to
        ``release`` after the call, or None: call without one). Waits at most ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            lease, state = await self._take(key)
            if state == OURS:
                return None, lease
            if state == NONE:
                return None, None
            answer, gone = await self._answer(key, lease.key, deadline)
            if answer is not None:
                self.served += 1
                return answer, None
            if not gone:
                self.lapsed += 1
                return None, None

    async def _answer(self, key: str, lock: str, deadline: float) -> tuple[bytes | None, bool]:
        """(another pod's answer, True) once it is in the cache; (None, True) when the lock is gone without
        one; (None, False) at the deadline or when Redis fails."""
        delay = FIRST_POLL
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, LAST_POLL)
            if not self._usable():
                return None, False
            held = await self._ask(self.cache.remote.client.exists(lock))  # before the answer: see above
            if held is FAILED:
                return None, False
            answer = await self.cache.get(key)
            if answer is not None or not held:
                return answer, True
        return None, False

    async def _renew(self, lease: Lease) -> None:
        """Extend the lease every third of its length while it is ours; stop at the first failure (it lapses)."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if not self.gate.open:
                return
            reply = await self._ask(self.cache.remote.client.eval(RENEW, 1, lease.key, lease.token, self.lease_ms),
                                    SET_TIMEOUT)
            if reply != 1:
                return

    def release(self, lease: Lease, stored: asyncio.Task[None] | None = None) -> None:
        """Give the lock up once ``stored`` (the answer's store in Redis) is done — at once when there is
        none — in the background."""
        if lease.renewal is not None:
            lease.renewal.cancel()
        task = asyncio.create_task(self._release(lease, stored))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, lease: Lease, stored: asyncio.Task[None] | None) -> None:
        if stored is not None:
            await asyncio.wait((stored,))
        if self.gate.open:  # shut: the lease lapses on its own
            await self._ask(self.cache.remote.client.eval(RELEASE, 1, lease.key, lease.token), SET_TIMEOUT)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def render(self) -> str:
        return ("# HELP llm_sidecar_fleet_coalesced_requests_total Requests answered from another pod's upstream "
                "call (through its Redis lock and the Redis cache).\n"
                "# TYPE llm_sidecar_fleet_coalesced_requests_total counter\n"
                f"llm_sidecar_fleet_coalesced_requests_total {self.served}\n"
                "# HELP llm_sidecar_fleet_lock_lapsed_total Waits for another pod's answer that ended without it "
                "(this pod called).\n# TYPE llm_sidecar_fleet_lock_lapsed_total counter\n"
                f"llm_sidecar_fleet_lock_lapsed_total {self.lapsed}\n")
