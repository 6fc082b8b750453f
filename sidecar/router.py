"""The one place policy meets I/O: one request's attempts, from plan to answer.

For each request: the model group and its fallbacks give the groups to try; the group's strategy orders
its deployments; each attempt goes through the adapter and ``providers.http`` under one shrinking
deadline; the outcome is recorded and the next step asked of policy. A stream may move to another
deployment only before ``StreamSink.start`` — the commit point — after which it can only finish or fail.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from sidecar.config import Config, Deployment
from sidecar.core.errors import (
    DeadlineExceeded,
    NoHealthyUpstream,
    SidecarError,
    UnknownModel,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
)
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk, Usage
from sidecar.providers import bind, http
from sidecar.providers.base import Adapter

IDLE_TIMEOUT = 30.0  # no chunk for this long mid-stream: the upstream has stalled


@dataclass(slots=True)
class Target:
    """A deployment with its bound adapter (and, as resilience grows, its breaker and stats)."""

    deployment: Deployment
    adapter: Adapter


@dataclass(slots=True)
class Outcome:
    """What the router did for one request: feeds response headers, logs and traces."""

    group: str
    deployment: str | None = None
    attempts: int = 0
    fallback: str | None = None
    usage: Usage | None = None
    ttft: float | None = None
    skipped_events: int = 0
    errors: list[str] = field(default_factory=list)


class StreamSink(Protocol):
    """Where a stream goes: the handler renders chunks in the app's wire format."""

    async def start(self, outcome: Outcome) -> None:
        """Commit: send status and headers. After this the router cannot fail over transparently."""

    async def send(self, chunks: list[StreamChunk]) -> None: ...

    async def finish(self) -> None: ...

    async def fail(self, error: SidecarError) -> None:
        """End the stream with an in-band error event (never a clean end)."""


class Router:
    def __init__(self, config: Config, session: aiohttp.ClientSession, *,
                 rng: random.Random | None = None, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.session = session
        self.rng = rng or random.Random()
        self.clock = clock or asyncio.get_running_loop().time
        self.targets: Mapping[str, tuple[Target, ...]] = {
            name: tuple(Target(d, bind(d)) for d in group.deployments) for name, group in config.groups.items()
        }
        self.timeout = config.router.timeout

    def has_group(self, name: str) -> bool:
        return name in self.targets

    def refresh_credentials(self) -> None:
        for targets in self.targets.values():
            for target in targets:
                key = target.deployment.api_key
                if key is not None and key.refresh():
                    target.adapter.refresh_credentials()

    def unavailable_groups(self) -> list[str]:
        """Model groups with no deployment that can be tried now (for /readyz)."""
        return [name for name, targets in self.targets.items() if not targets]

    def _candidates(self, group: str) -> list[Target]:
        targets = self.targets[group]
        if len(targets) == 1:
            return [targets[0]]
        weights = [t.deployment.weight for t in targets]
        remaining, ordered = list(targets), []
        while remaining:
            pick = self.rng.choices(range(len(remaining)), weights=weights)[0] if sum(weights) else 0
            ordered.append(remaining.pop(pick))
            weights.pop(pick)
        return ordered

    def _check(self, request: ChatRequest) -> None:
        if request.model not in self.targets:
            raise UnknownModel(f"the model '{request.model}' does not exist", param="model")

    async def complete(self, request: ChatRequest) -> tuple[ChatResponse, Outcome]:
        self._check(request)
        outcome = Outcome(request.model)
        deadline = self.clock() + self.timeout
        last: UpstreamError | None = None
        for target in self._candidates(request.model):
            outcome.attempts += 1
            try:
                response = await self._call(target, request, deadline)
            except UpstreamBadRequest:
                raise
            except UpstreamError as error:
                outcome.errors.append(error.error_class)
                last = error
                continue
            outcome.deployment = target.deployment.id
            outcome.usage = response.usage
            return response, outcome
        raise self._exhausted(last, deadline)

    async def _call(self, target: Target, request: ChatRequest, deadline: float) -> ChatResponse:
        adapter = target.adapter
        call = adapter.prepare(request)
        limit = target.deployment.timeout
        attempt_deadline = min(deadline, self.clock() + limit) if limit else deadline
        answer = await http.send(self.session, call, attempt_deadline)
        if answer.status != 200:
            raise adapter.classify_error(answer.status, answer.headers, answer.body)
        return adapter.read_response(request, answer.body)

    async def stream(self, request: ChatRequest, sink: StreamSink) -> Outcome:
        self._check(request)
        outcome = Outcome(request.model)
        started = self.clock()
        deadline = started + self.timeout
        last: UpstreamError | None = None
        for target in self._candidates(request.model):
            outcome.attempts += 1
            try:
                await self._stream_from(target, request, sink, outcome, deadline)
                return outcome
            except UpstreamBadRequest:
                raise
            except UpstreamError as error:
                outcome.errors.append(error.error_class)
                if outcome.ttft is not None:  # committed: the app already has part of the answer
                    await sink.fail(error)
                    return outcome
                last = error
        raise self._exhausted(last, deadline)

    async def _stream_from(self, target: Target, request: ChatRequest, sink: StreamSink, outcome: Outcome,
                           deadline: float) -> None:
        adapter = target.adapter
        start = self.clock()
        first_byte = start + self._ttft_limit(target.deployment)
        async with http.stream(self.session, adapter.prepare(request), first_byte_deadline=first_byte,
                               total_deadline=deadline) as upstream:
            if upstream.status != 200:
                body = await upstream.read_body()
                raise adapter.classify_error(upstream.status, upstream.headers, body)
            reader = adapter.stream_reader(request)
            chunks: list[StreamChunk] = []
            while not chunks:
                data = await upstream.next_chunk(first_byte, "first_byte")
                chunks = reader.feed(data) if data else reader.finish()
                if not data and not chunks:
                    raise UpstreamServerError("the upstream ended the stream before any content")
            outcome.deployment = target.deployment.id
            outcome.ttft = self.clock() - start
            await sink.start(outcome)
            finished = _finishes(chunks)
            await sink.send(chunks)
            while data:
                data = await upstream.next_chunk(self.clock() + IDLE_TIMEOUT, "idle")
                chunks = reader.feed(data) if data else reader.finish()
                if chunks:
                    finished = finished or _finishes(chunks)
                    await sink.send(chunks)
            outcome.usage = reader.usage
            outcome.skipped_events = reader.skipped
            if not (reader.done or finished):
                raise UpstreamServerError("the upstream stream was cut off before the answer finished")
        await sink.finish()

    def _ttft_limit(self, deployment: Deployment) -> float:
        limit = deployment.stream_timeout or self.config.router.stream_timeout
        if limit is None:
            limit = max(1.0, min(60.0, (deployment.timeout or self.timeout) / 3))
        return limit

    def _exhausted(self, last: UpstreamError | None, deadline: float) -> SidecarError:
        if self.clock() >= deadline:
            return DeadlineExceeded("the request ran out of time before an upstream answered")
        if last is not None and last.status == 429:
            return last
        return NoHealthyUpstream("no upstream could answer the request; try again later")


def _finishes(chunks: list[StreamChunk]) -> bool:
    for chunk in chunks:
        for choice in chunk.data.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                return True
    return False
