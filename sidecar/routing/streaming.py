"""One streaming attempt for the router: open, wait for the first token, pump chunks to the sink.

Before the first chunk reaches the sink, any failure is an ordinary failed attempt and the router moves
on. After it, the attempt marks its error ``committed``; the router then calls ``run`` on the next
candidate, which continues the answer where it broke — by prefill where the deployment accepts one, else
by splicing a full new answer (``formats.continuation``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter

import aiohttp

from sidecar.config import Deployment, LimitSettings, StallSettings
from sidecar.core import tokens
from sidecar.core.errors import (
    AnswerTooLarge,
    NoHealthyUpstream,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
    unreadable,
)
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk, Usage
from sidecar.formats.continuation import Diverged, Splicer, StreamProgress, prefill_body
from sidecar.formats.openai import chunks_from_completion
from sidecar.policy.stall import StallDetector
from sidecar.providers import http
from sidecar.providers.base import StreamReader
from sidecar.routing.outcome import Outcome, StreamSink, Target

# A read brings all the bytes that waited (up to hundreds of KiB from a fast upstream), and translating them
# does not suspend — nor do writes to the app under its high-water mark — so one read could hold the loop
# for a long time. Large reads are translated in pieces with the loop let go between them. (Bytes arrive
# only when the loop runs, so the next read suspends: a stream never holds the loop longer than one piece.)
PIECE = 4 * 1024


def _pieces(data: bytes) -> list[bytes]:
    """``data`` in pieces of at most ``PIECE`` bytes."""
    return [data[i:i + PIECE] for i in range(0, len(data), PIECE)]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What a stream attempt needs from the router: its upstream session, its clock, the time allowed to
    the first token and between reads (per deployment), the pace rule for stalls (None: off), and how long an
    answer may be."""

    session: aiohttp.ClientSession
    clock: Callable[[], float]
    ttft: Callable[[Deployment], float]
    idle: Callable[[Deployment], float]
    stall: StallSettings | None
    answer: LimitSettings = field(default_factory=LimitSettings)
    quota: Callable[[Target, Mapping[str, str]], None] | None = None  # the router's reader of rate-limit headers


class StreamAttempt:
    """The state one streamed request carries across attempts: what the app already has."""

    def __init__(self, limits: StreamLimits, request: ChatRequest, sink: StreamSink, outcome: Outcome) -> None:
        self.limits = limits
        self.request = request
        self.sink = sink
        self.outcome = outcome
        self.progress = StreamProgress()
        # What is left of the answer's limits, all attempts together (counted down: nothing to look up per read)
        self.bytes_left, self.events_left = limits.answer.max_stream_bytes, limits.answer.max_stream_events
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
        call = adapter.prepare(request)
        if call.dropped:
            outcome.dropped = call.dropped
        try:
            async with http.stream(limits.session, call, first_byte_deadline=first_byte,
                                   total_deadline=total) as upstream:
                if upstream.status != 200:
                    body = await upstream.read_body()
                    raise adapter.classify_error(upstream.status, upstream.headers, body)
                if limits.quota is not None:
                    self._note_quota(upstream, target)
                reader = adapter.stream_reader(request)
                try:
                    await self._relay(upstream, reader, target, first_byte, started, splicer)
                except BaseException:
                    self._charge_partial(target, request, reader)
                    raise
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

    async def _relay(self, upstream: http.UpstreamStream, reader: StreamReader, target: Target, first_byte: float,
                     started: float, splicer: Splicer | None) -> None:
        """The upstream's body through ``reader`` to the app, within the time-to-first-token limit, then the
        stream's own pace (``StallDetector``)."""
        limits = self.limits
        until, phase = first_byte, "first_byte"
        pace = StallDetector(limits.idle(target.deployment), limits.stall)
        waiting: float | None = None  # when the last wait for bytes began (after the first chunk)
        answering = False  # the reader has made a chunk: keep-alive bytes before it (pings, comments) do not
        data = b"-"        # stop the time-to-first-token limit
        while data:
            data = await upstream.next_chunk(until, phase)
            if waiting is not None:
                pace.waited(limits.clock() - waiting)
            pieces = (data,) if len(data) <= PIECE else _pieces(data)
            for piece in pieces:
                chunks, failure = self._translate(reader, piece, splicer)
                if chunks:
                    answering = True
                    await self._deliver(target, chunks, started, splicer)
                if failure is not None:
                    raise failure
                if len(pieces) > 1:
                    await asyncio.sleep(0)  # a large read: the others run between its pieces
            if answering:
                waiting = limits.clock()
                until, phase = waiting + pace.limit, pace.phase

    def _charge_partial(self, target: Target, request: ChatRequest, reader: StreamReader) -> None:
        """A stream that ends early — the app hung up, the upstream broke — after the app had part of it: the
        provider bills the prompt and what it generated, so the request is charged that (its usage if the
        upstream sent one, else an estimate from the prompt and the text sent), unless a later attempt's
        usage replaces it. Without it, hanging up before the end spent past any budget."""
        if not self.sink.started or self.owner is not target or self.outcome.usage is not None:
            return
        self.outcome.usage = reader.usage or Usage(tokens.prompt_tokens(request),
                                                   -(-len(self.progress.text) // tokens.CHARS_PER_TOKEN))

    async def _deliver(self, target: Target, chunks: list[StreamChunk], started: float,
                       splicer: Splicer | None) -> None:
        """Chunks for the app; the first commits this attempt (status and headers go out)."""
        if not self.sink.started:
            await self._commit(target, started)
        elif self.owner is not target and splicer is None:
            raise asyncio.CancelledError  # a hedged twin won the race; leave quietly
        self.progress.observe(chunks)
        await self.sink.send(chunks)

    def _translate(self, reader: StreamReader, data: bytes,
                   splicer: Splicer | None) -> tuple[list[StreamChunk], UpstreamError | None]:
        """One piece of the body (b"": its end) as chunks for the app, counted against the answer's limits:
        past ``sidecar_settings.limits`` the request ends (``AnswerTooLarge``). A piece that failed part-way
        (an error event after good ones) gives the chunks before the failure, and the failure, raised once
        they are out."""
        failure = None
        try:
            chunks = reader.feed(data) if data else reader.finish()
        except UpstreamError as error:
            if not error.partial:
                raise
            chunks, failure, error.partial = list(error.partial), error, ()
        except Exception as error:  # the reader choked on what the upstream sent: a broken stream, failed over
            raise unreadable(error, "an event") from None
        self.bytes_left -= len(data)
        self.events_left -= len(chunks)
        if self.bytes_left < 0 or self.events_left < 0:
            answer = self.limits.answer
            self.progress.continuable = False
            raise AnswerTooLarge(f"the upstream's answer passed the sidecar's limit of {answer.max_stream_mb:g} MiB "
                                 f"or {answer.max_stream_events} events (sidecar_settings.limits)")
        return (splicer.feed(chunks) if splicer is not None else chunks), failure

    def _note_quota(self, upstream: http.UpstreamStream, target: Target) -> None:
        fields = upstream.quota_fields()
        if fields is not None and self.limits.quota is not None:
            self.limits.quota(target, fields)

    async def _commit(self, target: Target, started: float) -> None:
        """The first chunk for the app: this attempt owns the answer; status and headers go out."""
        outcome, deployment = self.outcome, target.deployment
        self.owner = target
        self.committed.set()
        outcome.ttft = perf_counter() - started
        outcome.deployment, outcome.answered_group = deployment.id, deployment.model_name
        await self.sink.start(outcome)

    def _mark(self, error: UpstreamError) -> UpstreamError:
        error.committed = self.sink.started
        return error

    async def replay(self, response: ChatResponse) -> None:
        """Send a whole answer the sidecar already has (the catch-all) as a stream."""
        await self.sink.start(self.outcome)
        await self.sink.send(chunks_from_completion(response.data))
        await self.sink.finish()
