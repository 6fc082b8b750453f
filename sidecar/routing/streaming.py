"""One streaming attempt for the router: open, wait for the first token, pump chunks to the sink.

Before the first chunk reaches the sink, any failure is an ordinary failed attempt and the router moves
on. After it, the attempt marks its error ``committed``; the router then calls ``run`` on the next
candidate, which continues the answer where it broke — by prefill where the deployment accepts one, else
by splicing a full new answer (``formats.continuation``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

import aiohttp

from sidecar.config import Deployment, StallSettings
from sidecar.core.errors import (
    NoHealthyUpstream,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
)
from sidecar.core.types import ChatRequest, ChatResponse
from sidecar.formats.continuation import Diverged, Splicer, StreamProgress, prefill_body
from sidecar.formats.openai import chunks_from_completion
from sidecar.policy.stall import StallDetector
from sidecar.providers import http
from sidecar.routing.outcome import Outcome, StreamSink, Target


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What a stream attempt needs from the router: its upstream session, its clock, the time allowed to
    the first token and between reads (per deployment), and the pace rule for stalls (None: off)."""

    session: aiohttp.ClientSession
    clock: Callable[[], float]
    ttft: Callable[[Deployment], float]
    idle: Callable[[Deployment], float]
    stall: StallSettings | None


class StreamAttempt:
    """The state one streamed request carries across attempts: what the app already has."""

    def __init__(self, limits: StreamLimits, request: ChatRequest, sink: StreamSink, outcome: Outcome) -> None:
        self.limits = limits
        self.request = request
        self.sink = sink
        self.outcome = outcome
        self.progress = StreamProgress()
        self.committed = asyncio.Event()  # set when an attempt sends the app its first chunk (hedging)
        self.owner: Target | None = None

    async def run(self, target: Target, deadline: float) -> StreamProgress:
        """Stream from ``target``; the progress it returns tells telemetry what the app received."""
        if not self.sink.started:
            await self._pump(target, self.request, deadline, None)
            return self.progress
        if not self.progress.continuable:
            raise NoHealthyUpstream("the upstream stream broke and this answer cannot be resumed elsewhere")
        sent, stream_id = self.progress.text, self.progress.id
        if target.accepts_prefill and sent:  # nothing sent yet: a fresh answer is the continuation
            body = prefill_body(self.request.body, sent)
            prefilled = dataclasses.replace(self.request, body=body, continuation=True)
            try:
                await self._pump(target, prefilled, deadline, Splicer(sent, prefilled=True, stream_id=stream_id))
                return self.progress
            except UpstreamBadRequest:
                target.accepts_prefill = False  # learnt: this deployment rejects prefill; splice from now on
        await self._pump(target, self.request, deadline, Splicer(sent, prefilled=False, stream_id=stream_id))
        return self.progress

    async def _pump(self, target: Target, request: ChatRequest, deadline: float, splicer: Splicer | None) -> None:
        limits, sink, outcome = self.limits, self.sink, self.outcome
        adapter, deployment = target.adapter, target.deployment
        start = limits.clock()
        started = perf_counter()  # the loop's clock moves in whole milliseconds under uvloop: too coarse for TTFT
        first_byte = start + limits.ttft(deployment)
        total = min(deadline, start + deployment.timeout) if deployment.timeout else deadline
        try:
            async with http.stream(limits.session, adapter.prepare(request), first_byte_deadline=first_byte,
                                   total_deadline=total) as upstream:
                if upstream.status != 200:
                    body = await upstream.read_body()
                    raise adapter.classify_error(upstream.status, upstream.headers, body)
                reader = adapter.stream_reader(request)
                until, phase = first_byte, "first_byte"
                pace = StallDetector(limits.idle(deployment), limits.stall)
                waiting: float | None = None  # when the last wait for bytes began (after the first byte)
                data = b"-"
                while data:
                    data = await upstream.next_chunk(until, phase)
                    if waiting is not None:
                        pace.waited(limits.clock() - waiting)
                    chunks = reader.feed(data) if data else reader.finish()
                    if splicer is not None:
                        chunks = splicer.feed(chunks)
                    if chunks:
                        if not sink.started:
                            self.owner = target
                            self.committed.set()
                            outcome.ttft = perf_counter() - started
                            outcome.deployment, outcome.answered_group = deployment.id, deployment.model_name
                            await sink.start(outcome)
                        elif self.owner is not target and splicer is None:
                            raise asyncio.CancelledError  # a hedged twin won the race; leave quietly
                        self.progress.observe(chunks)
                        await sink.send(chunks)
                    waiting = limits.clock()
                    until, phase = waiting + pace.limit, pace.phase
                outcome.usage = reader.usage
                outcome.skipped_events += reader.skipped
                if not (reader.done or self.progress.finished):
                    raise UpstreamServerError("the upstream stream was cut off before the answer finished")
        except Diverged as exc:
            error = UpstreamServerError(f"could not resume the stream: {exc}")
            error.retryable = False
            raise self._mark(error) from None
        except UpstreamError as error:
            raise self._mark(error) from None
        await sink.finish()

    def _mark(self, error: UpstreamError) -> UpstreamError:
        error.committed = self.sink.started
        return error

    async def replay(self, response: ChatResponse) -> None:
        """Send a whole answer the sidecar already has (the catch-all) as a stream."""
        await self.sink.start(self.outcome)
        await self.sink.send(chunks_from_completion(response.data))
        await self.sink.finish()
