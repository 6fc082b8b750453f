"""The replicas of a shared SGLang deployment: their state, the choice among them, and the adapter that sends
an attempt to the chosen one.

A ``ReplicaPool`` belongs to one ``sglang/`` deployment with ``litellm_params.replicas``. It keeps, per replica,
what its poller last saw (``providers.sglang_poll``: health, running and waiting requests) and this sidecar's own
in-flight count, which is fresher than any poll. The router asks it two things, both from memory, never
waiting on a poll: ``spill_reason`` (before an attempt: is any replica healthy and under
``max_queue_per_replica``? if not, the deployment is skipped and the request goes straight to the group's other
deployments and its fallbacks) and, through ``attempt``, which replica takes the attempt — the choice itself is
``policy.ring``: the conversation's prefix on a consistent-hash ring with bounded loads, least loaded when the
request has no useful prefix. With ``replica_share: redis`` a new conversation under a long shared prefix is
placed by the fleet first (``place``, through ``state.placement``, before the attempt's ``prepare``).

``attempt`` wraps one attempt: it opens a ``Lease`` the adapter's ``prepare`` fills with the chosen replica
(``SGLangAdapter`` rewrites the call's URL to it), counts the attempt in flight until it ends, and learns from
the outcome: a replica that failed (a 5xx, a queue-full 503, an abort chunk, a timeout) gets no new request
for two poll intervals (at least ``AVOID_SECONDS``), so a retry goes to another replica (a queue-full 503
does not count against the deployment's breaker: one full replica is not a failing pool); a refused
connection takes it out of rotation until a poll finds it healthy; answers' cached prompt tokens are counted
per replica.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from hashlib import blake2b
from typing import Any, Protocol, TypeVar

from sidecar.config import Deployment
from sidecar.config.replicas import ReplicaSettings
from sidecar.core.errors import UpstreamConnectionError, UpstreamError, UpstreamServerError, UpstreamTimeout
from sidecar.core.types import ChatRequest, Usage
from sidecar.formats.sglang import Load
from sidecar.policy.ring import (
    ReplicaChoice,
    Ring,
    RingChoice,
    build_ring,
    choose,
    least_loaded,
    prefix_keys,
    ring_order,
    within,
)
from sidecar.providers.base import Adapter, UpstreamCall, WrappingAdapter

T = TypeVar("T")
log = logging.getLogger("sidecar.sglang")
MAX_REPLICAS = 256  # replicas a pool routes among (the first in URL order); a set's change re-sorts their ring
QUEUE_FULL = "queue is full"
CONVERSATIONS = 8192  # conversations a pool remembers the replica of (about 1 MiB at most)
AVOID_SECONDS = 1.0  # at least this long a replica that failed an attempt gets no new one (outlasts a retry's wait)


class Replica:
    """One replica: its base URL (with ``/v1``), what the last poll saw, and this sidecar's counts."""

    __slots__ = ("cached_tokens", "full_until", "healthy", "inflight", "inflight_at_poll", "load_source",
                 "max_running", "name", "polled", "removed", "requests", "root", "running", "url", "waiting")

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = url[:-3] if url.endswith("/v1") else url
        self.name = "r-" + blake2b(url.encode(), digest_size=6).hexdigest()  # stable, and no address in spans
        self.healthy = True  # until a poll says otherwise: a new sidecar routes at once
        self.running = self.waiting = 0.0
        self.max_running: int | None = None
        self.inflight = self.inflight_at_poll = 0
        self.requests = self.cached_tokens = 0
        self.full_until = 0.0
        self.polled = False
        self.removed = False
        self.load_source = "loads"  # /v1/loads until it fails, then /metrics

    def observe(self, load: Load, inflight_at_send: int) -> None:
        """A poll's answer: it counts what this sidecar had in flight when the poll was sent."""
        self.running, self.waiting, self.max_running = load.running, load.waiting, load.max_running
        self.inflight_at_poll = inflight_at_send
        self.polled = True

    def load(self) -> float:
        """Requests on the replica: the polled ones, plus this sidecar's sent since the poll, minus its own
        finished since (the poll counted them); never less than this sidecar's own in flight."""
        return max(float(self.inflight), self.running + self.waiting + self.inflight - self.inflight_at_poll)

    def queue(self) -> float:
        """Requests waiting on the replica (with this sidecar's change since the poll, past its running slots
        when the poll said how many it has)."""
        change = self.inflight - self.inflight_at_poll
        if self.max_running is not None:
            return max(0.0, self.running + self.waiting + change - self.max_running)
        return max(0.0, self.waiting + change)


class Lease:
    """One attempt's hold on a replica: set by ``SGLangAdapter.prepare``, released when the attempt ends.
    ``placed``: where the fleet's placement (``replica_share: redis``) sent a new conversation, asked before."""

    __slots__ = ("choice", "keys", "placed", "pool", "replica")

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.replica: Replica | None = None
        self.choice: ReplicaChoice | None = None
        self.placed: Replica | None = None
        self.keys: tuple[int, int] | None = None  # the request's prefix keys, when the placement computed them


class Placement(Protocol):
    """Where the fleet puts a new conversation under a long shared prefix (``state.placement``)."""

    async def place(self, pool: str, prefix: int, replicas: list[str], factor: float) -> tuple[str, str] | None:
        """(replica name, how) among ``replicas`` (eligible, in the prefix's ring order); None: place alone."""

    def record(self, pool: str, replica: str) -> None:
        """A conversation this sidecar placed alone (the ring, least loaded): counted with the fleet's."""


LEASE: ContextVar[Lease | None] = ContextVar("sidecar_sglang_lease", default=None)


class ReplicaPool:
    """The replicas of one deployment and the choice among them (the I/O that keeps them fresh is
    ``sglang_poll``). ``clock``: loop time."""

    def __init__(self, deployment: Deployment, settings: ReplicaSettings, clock: Callable[[], float]) -> None:
        self.deployment = deployment
        self.settings = settings
        self.clock = clock
        self.replicas: list[Replica] = []
        self.ring: Ring = build_ring(())
        self.turn = 0
        self.shared_first = settings.key == "shared"
        self.keep_factor = max(settings.keep_factor or settings.load_factor, settings.load_factor)
        self.conversations: OrderedDict[int, Replica] = OrderedDict()  # conversation key → its last replica
        self.placement: Placement | None = None  # replica_share: redis (set by the server's assembly)
        self.on_change: Callable[[list[Replica], list[Replica]], None] | None = None  # pollers follow the set
        self.set_urls(settings.urls)

    def set_urls(self, urls: tuple[str, ...] | list[str]) -> None:
        """A new replica set (static at start, or from DNS): kept replicas keep their state; removed ones
        get no new request while their requests finish."""
        known = {r.url: r for r in self.replicas}
        found = sorted(set(urls))
        wanted = found[:MAX_REPLICAS]  # a huge or hostile DNS answer: bounded, the same subset in every pod
        if wanted == [r.url for r in self.replicas]:
            return
        if len(found) > MAX_REPLICAS:
            log.warning("sglang replicas of %s: %d found, routing among the first %d", self.deployment.id,
                        len(found), MAX_REPLICAS)
        replicas = [known.get(url) or Replica(url) for url in wanted]
        added = [r for r in replicas if r.url not in known]
        removed = [r for r in self.replicas if r.url not in set(wanted)]
        for replica in removed:
            replica.removed = True
        self.replicas = replicas
        self.ring = build_ring([r.url for r in replicas], previous=self.ring)
        if self.on_change is not None:
            self.on_change(added, removed)

    def _eligible(self, now: float) -> list[bool]:
        limit = self.settings.max_queue
        return [r.healthy and r.full_until <= now and r.queue() < limit for r in self.replicas]

    def spill_reason(self) -> str | None:
        """Why no replica may take a request now (the deployment is skipped), or None."""
        if not any(r.healthy for r in self.replicas):
            return "no_healthy_replica"
        if not any(self._eligible(self.clock())):
            return "pool_saturated"
        return None

    def pick(self, body: Mapping[str, Any], placed: Replica | None = None,
             keys: tuple[int, int] | None = None) -> tuple[Replica | None, RingChoice]:
        """The replica for a request: its conversation's (sticky), else ``placed`` (the fleet's placement) while
        it is eligible, else the ring's choice for its placement key; least loaded without a useful prefix.
        ``keys``: ``prefix_keys(body, True)`` when already computed."""
        eligible = self._eligible(self.clock())
        loads = [r.load() for r in self.replicas]
        if keys is None:
            keys = prefix_keys(body, True)
        if keys is None:
            self.turn += 1
            replica, choice = self._at(least_loaded(loads, eligible, self.turn))
            if replica is not None and self.placement is not None:
                self.placement.record(self.deployment.id, replica.name)
            return replica, choice
        shared, conversation = keys
        placement = shared if self.shared_first else conversation
        known = self.conversations.get(conversation)
        if known is not None and not known.removed:
            index = self.replicas.index(known)
            # placed by the fleet, a conversation stays while its replica is eligible: new conversations keep
            # the balance, and moving one loses its cached history
            if eligible[index] if self.placement is not None else within(loads, eligible, self.keep_factor, index):
                self.conversations.move_to_end(conversation)
                return known, RingChoice(index, -1, (), "sticky")
        index = self.replicas.index(placed) if placed is not None and not placed.removed else -1
        if index >= 0 and eligible[index]:
            replica, choice = placed, RingChoice(index, -1, (), "shared")
        else:
            replica, choice = self._at(choose(self.ring, placement, loads, eligible, self.settings.load_factor,
                                              self.settings.spread))
        if replica is not None:
            if self.placement is not None and choice.how == "ring":
                self.placement.record(self.deployment.id, replica.name)
            self.conversations[conversation] = replica
            self.conversations.move_to_end(conversation)
            if len(self.conversations) > CONVERSATIONS:
                self.conversations.popitem(last=False)
        return replica, choice

    async def place(self, keys: tuple[int, int] | None) -> Replica | None:
        """Where the fleet's placement sends a new conversation under a long shared prefix (``keys``:
        ``prefix_keys(body, True)``; one Redis round trip, bounded); None for anything else — a later turn, no
        long shared prefix, Redis away."""
        if self.placement is None or keys is None or keys[0] == keys[1]:
            return None
        shared, conversation = keys
        known = self.conversations.get(conversation)
        if known is not None and not known.removed:
            return None
        order = ring_order(self.ring, shared, self._eligible(self.clock()))
        if not order:
            return None
        replicas = self.replicas
        answer = await self.placement.place(self.deployment.id, shared, [replicas[i].name for i in order],
                                            self.settings.load_factor)
        if answer is None:
            return None
        return next((replicas[i] for i in order if replicas[i].name == answer[0]), None)

    def _at(self, choice: RingChoice) -> tuple[Replica | None, RingChoice]:
        return (self.replicas[choice.replica] if choice.replica is not None else None), choice

    def lease(self, request: ChatRequest) -> Replica:
        """Choose the attempt's replica and count it in flight (under the current ``Lease`` if any)."""
        lease = LEASE.get()
        if lease is not None and lease.pool is not self:
            lease = None
        replica, choice = (self.pick(request.body) if lease is None else
                           self.pick(request.body, lease.placed, lease.keys))
        if replica is None:
            error = UpstreamServerError("every replica of the shared deployment is busy", cause="pool_saturated")
            error.counts_as_failure = False
            raise error
        replica.inflight += 1
        replica.requests += 1
        if lease is not None:
            if lease.replica is not None:  # a second prepare in one attempt: hand the first back
                lease.replica.inflight -= 1
            lease.replica = replica
            lease.choice = ReplicaChoice(self.deployment.id, replica.name, choice.how, choice.position, tuple(
                (self.replicas[i].name, load) for i, load in choice.passed_over), replica.load() - 1)
        return replica

    async def attempt(self, call: Awaitable[T], trail: list[object], usage: Callable[[T], Usage | None],
                      request: ChatRequest | None = None) -> T:
        """Run one attempt under a lease: in flight while it runs, what it teaches noted on its replica. With
        ``replica_share: redis``, a new conversation's placement is asked of Redis first (``place``)."""
        lease = Lease(self)
        if self.placement is not None and request is not None:
            try:
                lease.keys = prefix_keys(request.body, True)
                lease.placed = await self.place(lease.keys)
            except BaseException:  # cancelled while asking: the attempt never starts
                if isinstance(call, Coroutine):
                    call.close()
                raise
        token = LEASE.set(lease)
        try:
            result = await call
        except UpstreamError as error:
            self._learn(lease, error)
            raise
        finally:
            LEASE.reset(token)
            if lease.replica is not None:
                lease.replica.inflight -= 1
            if lease.choice is not None:
                trail.append(lease.choice)
        if lease.replica is not None:
            used = usage(result)
            if used is not None:
                lease.replica.cached_tokens += used.cached_tokens
        return result

    def _learn(self, lease: Lease, error: UpstreamError) -> None:
        """A replica that failed an attempt gets no new request until its next poll (a retry goes to another
        replica); one that refused the connection stays out until a poll finds it healthy."""
        replica = lease.replica
        if replica is None:
            return
        if isinstance(error, UpstreamConnectionError):
            replica.healthy = False
        elif isinstance(error, UpstreamServerError | UpstreamTimeout):
            replica.full_until = self.clock() + max(self.settings.poll_seconds * 2, AVOID_SECONDS)
        if error.upstream_status == 503 and QUEUE_FULL in error.message:
            error.counts_as_failure = False  # one full replica is not a failing deployment


class SGLangAdapter(WrappingAdapter):
    """The OpenAI-compatible adapter of an ``sglang/`` deployment, sending each call to the leased replica."""

    def __init__(self, inner: Adapter, pool: ReplicaPool) -> None:
        super().__init__(inner)
        self.pool = pool
        self.base = inner.deployment.api_base

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        call = self.inner.prepare(request)
        replica = self.pool.lease(request)
        url = replica.url + call.url[len(self.base):] if call.url.startswith(self.base) else call.url
        return UpstreamCall(url, call.headers, call.body, call.proxy, call.dropped)



def usage_of(result: object) -> Usage | None:
    """The usage an attempt's result carries (an answer's; a stream's progress has its reader's)."""
    usage = getattr(result, "usage", None)
    return usage if isinstance(usage, Usage) else None
