"""What the router works with and reports: its per-deployment state, one request's outcome and its way
through the plan, and the protocols of the things it writes to (a stream sink, a hedging race). Values
only; no routing here."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.config import Deployment
from sidecar.core.errors import ContextWindowExceeded, SidecarError
from sidecar.core.types import ChatRequest, StreamChunk, Usage
from sidecar.policy.breaker import CircuitBreaker
from sidecar.policy.limits import TokenBucket
from sidecar.policy.quota import Quota
from sidecar.policy.rules import Needs, RuleDecision
from sidecar.policy.stats import DeploymentStats
from sidecar.providers.base import Adapter
from sidecar.providers.sglang import ReplicaPool


@dataclass(slots=True, eq=False)
class Target:
    """A deployment with everything the router keeps about it: adapter, breaker, statistics, limits."""

    deployment: Deployment
    adapter: Adapter
    breaker: CircuitBreaker
    stats: DeploymentStats
    rpm: TokenBucket | None
    tpm: TokenBucket | None
    accepts_prefill: bool
    rate_limited: bool = False  # the breaker is open because the upstream said Retry-After
    pool: ReplicaPool | None = None  # an sglang deployment's replicas (providers.sglang); None for the rest
    quota: Quota | None = None  # the upstream's remaining quota, once its answers reported one (rate-limit headers)


@dataclass(slots=True)
class Outcome:
    """What the router did for one request: feeds response headers, logs and traces."""

    group: str
    deployment: str | None = None
    answered_group: str | None = None
    attempts: int = 0
    usage: Usage | None = None
    ttft: float | None = None
    skipped_events: int = 0
    catch_all: str | None = None
    failed: bool = False  # a committed stream that ended with an in-band error
    panic: str | None = None  # the deployment sent to although its breaker was open (nothing else was left)
    estimate: tuple[int, int] | None = None  # (prompt, prompt + completion budget) tokens, when needed
    dropped: tuple[str, ...] | None = None  # fields drop_params removed for the deployment that was called
    cache: str | None = None  # the response cache's verdict on a stream (hit, miss, coalesced): a header
    rule: str | None = None  # the request rule that decided (``policy.rules.RuleDecision``; also first on the trail)
    errors: list[str] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (deployment, error class, cause)
    trail: list[object] = field(default_factory=list)

    @property
    def fallback(self) -> str | None:
        """The model group that answered, when it was not the one asked for."""
        group = self.answered_group
        return group if group is not None and group != self.group else None


FAILED = object()  # what an attempt returns when its deployment is done for this request: move on


class StreamSink(Protocol):
    """Where a stream goes: the handler renders chunks in the app's wire format. Each step returns something to
    await — a coroutine, or what a sink in front of another returns from that one's step."""

    @property
    def started(self) -> bool: ...

    def start(self, outcome: Outcome) -> Awaitable[None]:
        """Commit: send status and headers. After this the router cannot fail over transparently."""

    def send(self, chunks: list[StreamChunk]) -> Awaitable[None]: ...

    def finish(self) -> Awaitable[None]: ...

    def fail(self, error: SidecarError) -> Awaitable[None]:
        """End the stream with an in-band error event (never a clean end)."""


class RaceState(Protocol):
    """What a hedged stream shares with the race: set ``committed`` when a target claims the app."""

    committed: asyncio.Event
    owner: Target | None


class Walk:
    """One request's way through its plan: how an attempt is made, the deadline, the groups left, and what
    was met on the way — for the final error, panic routing and context-window fallbacks. (A plain class:
    it is made for every request, and a dataclass with default factories costs twice as much.)"""

    __slots__ = ("attempt", "deadline", "decision", "eligible", "limited", "needed", "needs", "opened", "outcome",
                 "pending", "race", "refused", "rejected", "request", "session", "too_long", "tried", "unlimited")

    def __init__(self, request: ChatRequest, outcome: Outcome, attempt: Callable[[Target, float], Awaitable[object]],
                 deadline: float, pending: deque[str], race: RaceState | None = None) -> None:
        self.request = request
        self.outcome = outcome
        self.attempt = attempt
        self.deadline = deadline
        self.pending = pending
        self.race = race
        self.tried: set[str] = set()
        self.limited = 0  # candidates that were rate limited (or cooling down from it)
        self.unlimited = 0  # candidates that failed, or were skipped, for any other reason
        self.opened: list[tuple[Target, str]] = []  # skipped for an open breaker: the panic candidates
        self.needed = 0  # tokens the prompt is known to need at least (estimate, or a window that refused it)
        self.rejected: ContextWindowExceeded | None = None  # the first context-window rejection: what the app gets
        self.too_long: frozenset[tuple[str, str]] | None = None  # (provider, model)s that refused the prompt
        self.decision: RuleDecision | None = None  # the request rule that applies, if any
        self.needs: Needs | None = None  # what the request asks of a deployment, when capabilities are checked
        self.session: str | None = None  # the session key, when affinity is on and the request has one
        self.eligible = 0  # candidates the rule and the capability check let through
        self.refused: list[str] | None = None  # why the others were not (skip reasons), for the final error

    def count(self, limited: bool) -> None:
        if limited:
            self.limited += 1
        else:
            self.unlimited += 1


def model_of(target: Target) -> tuple[str, str]:
    """The upstream model a target serves: a prompt one deployment of it rejected as too long, all do."""
    return target.deployment.provider, target.deployment.model

