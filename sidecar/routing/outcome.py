"""What the router works with and reports: its per-deployment state, one request's outcome, and the
protocols of the things it writes to (a stream sink, a hedging race). Values only; no routing here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.config import Deployment
from sidecar.core.errors import SidecarError
from sidecar.core.types import StreamChunk, Usage
from sidecar.policy.breaker import CircuitBreaker
from sidecar.policy.limits import TokenBucket
from sidecar.policy.stats import DeploymentStats
from sidecar.providers.base import Adapter


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
    estimate: tuple[int, int] | None = None  # (prompt, prompt + completion budget) tokens, when needed
    errors: list[str] = field(default_factory=list)
    trail: list[object] = field(default_factory=list)

    @property
    def fallback(self) -> str | None:
        """The model group that answered, when it was not the one asked for."""
        group = self.answered_group
        return group if group is not None and group != self.group else None


class StreamSink(Protocol):
    """Where a stream goes: the handler renders chunks in the app's wire format."""

    @property
    def started(self) -> bool: ...

    async def start(self, outcome: Outcome) -> None:
        """Commit: send status and headers. After this the router cannot fail over transparently."""

    async def send(self, chunks: list[StreamChunk]) -> None: ...

    async def finish(self) -> None: ...

    async def fail(self, error: SidecarError) -> None:
        """End the stream with an in-band error event (never a clean end)."""


class RaceState(Protocol):
    """What a hedged stream shares with the race: set ``committed`` when a target claims the app."""

    committed: asyncio.Event
    owner: Target | None
