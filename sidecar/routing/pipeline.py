"""One request from the parsed body to an answer: cache → budgets → router → price → store → spend.

The server turns HTTP into a ``ChatRequest`` and calls ``Pipeline.complete`` or ``Pipeline.stream``; it
turns the ``Answer`` (or the finished stream) back into HTTP. Everything between — the response cache, the
budget check, routing, the cost of the answer, storing it, spending the budget — and the request's record
(metrics, the log line, the trace) happens here, so the steps still to come (rules, coalescing, cascade,
shadow traffic) land in one place rather than in a handler.

An error that ends the request is raised with ``error.outcome`` set to what routing had done by then (the
server puts its attempts on the error answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from sidecar.config import ModelInfo
from sidecar.core.cost import request_cost
from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, ChatResponse, WireFormat
from sidecar.formats.openai import response_bytes
from sidecar.policy.budget import Principal
from sidecar.policy.plan import FallbackStep
from sidecar.routing import cached
from sidecar.routing.coalesce import Coalescer
from sidecar.routing.outcome import Outcome, StreamSink
from sidecar.routing.router import Router
from sidecar.routing.semantic import SEMANTIC_HIT, SemanticCache
from sidecar.state import cache as response_cache
from sidecar.state.budgets import Budgets, principal
from sidecar.state.cache import ResponseCache
from sidecar.telemetry import RequestMetrics
from sidecar.telemetry.logs import log_request
from sidecar.telemetry.record import CURRENT_OUTCOME, RequestRecord

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Passthrough, RequestSpans, Tracing

    Spans = RequestSpans | Passthrough | None


class InboundHead(Protocol):
    """What the pipeline reads of the app's HTTP request (an aiohttp ``web.Request`` is one)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: the response (OpenAI-shaped), what routing did (None for a cache hit), its cost in
    USD when prices are known, and the cache's verdict (``hit``/``miss``, None when the cache does not apply)."""

    response: ChatResponse
    outcome: Outcome | None
    cost: float | None = None
    cache: str | None = None
    similarity: float | None = None  # a semantic hit's cosine similarity


class Pipeline:
    """The steps of one request around the router. The cache and budgets are None when not configured, and
    the request path then skips them; ``tracing`` is None when tracing is off."""

    def __init__(self, router: Router, metrics: RequestMetrics, *, cache: ResponseCache | None = None,
                 budgets: Budgets | None = None, tracing: Tracing | None = None,
                 prices: Mapping[str, ModelInfo] | None = None, generation: str = "",
                 coalescer: Coalescer | None = None) -> None:
        self.router = router
        self.generation = generation  # the deployment set's digest: part of every cache key
        self.active = 0  # requests in flight here: a replaced pipeline is closed once they are done
        self.metrics = metrics
        self.cache = cache
        self.budgets = budgets
        self.coalescer = coalescer  # None: identical requests in flight each make their own call
        self.semantic: SemanticCache | None = None  # opt-in per model group; set by the assembly
        self.tracing = tracing
        self.prices = prices if prices is not None else {d.id: d.model_info for d in router.config.deployments}

    async def complete(self, chat: ChatRequest, head: InboundHead, request_id: str) -> Answer:
        """A whole answer, from the cache or the router."""
        record, spans, started = self._begin(chat, head, request_id)
        outcome: Outcome | None = None
        spend = True
        who: Principal | None = None
        try:
            key, hit = (None, None) if self.cache is None else await self._lookup(chat, head.headers)
            if hit is not None:
                record.outcome, record.status = "cache_hit", 200
                data = {} if chat.wire is WireFormat.OPENAI else cached.loads(hit)  # other dialects translate it
                return Answer(ChatResponse(data, raw=hit), None, cache=response_cache.HIT)
            place = None
            if self.semantic is not None and self.semantic.applies(chat) and response_cache.directives(head.headers)[0]:
                place, found = await self.semantic.lookup(chat)
                if found is not None:
                    record.outcome, record.status = "semantic_hit", 200
                    data = {} if chat.wire is WireFormat.OPENAI else cached.loads(found[1])
                    return Answer(ChatResponse(data, raw=found[1]), None, cache=SEMANTIC_HIT, similarity=found[0])
            budgets = self.budgets
            if budgets is not None:
                who = principal(chat.body, head.headers) if budgets.scoped else None
                budgets.check(record.group, who)  # memory only; raises BudgetExceeded before any upstream call
            if key is not None and self.coalescer is not None:
                spend = False  # the shared call spends the budgets itself (its leader may go away)
                try:
                    (response, outcome), joined = await self.coalescer.complete(
                        cached.flight_key(key, chat), lambda: self._shared_call(chat, key, who))
                except SidecarError as error:
                    CURRENT_OUTCOME.set(error.outcome)  # what the shared call did, for this request's record
                    raise
                if joined:
                    outcome = None
                    record.outcome, record.status = "coalesced", 200
                    return Answer(response, None, cache=cached.COALESCED)
            else:
                response, outcome = await self.router.complete(chat)
                if key is not None and outcome.catch_all is None:  # a stand-in answer is never cached
                    self.cache.put(key, response_bytes(response))  # type: ignore[union-attr]
            record.outcome, record.status = "success", 200
            record.cost = request_cost(outcome.usage, self.prices.get(outcome.deployment or ""))
            if place is not None and outcome.catch_all is None:
                self.semantic.store(place, response_bytes(response))  # type: ignore[union-attr]
            return Answer(response, outcome, record.cost, None if key is None else response_cache.MISS)
        except BaseException as error:
            self._failed(error, record, outcome)
            raise
        finally:
            self._end(record, spans, started, outcome, spend, who)

    async def stream(self, chat: ChatRequest, head: InboundHead, request_id: str, sink: StreamSink) -> Outcome:
        """Stream an answer into ``sink`` (errors after its commit point end the stream in-band)."""
        record, spans, started = self._begin(chat, head, request_id)
        outcome: Outcome | None = None
        spend = True
        who: Principal | None = None
        try:
            key, hit = (None, None) if self.cache is None else await self._lookup(chat, head.headers)
            if hit is not None:
                replayed = await cached.replay(hit, chat, sink)
                if replayed is not None:
                    record.outcome, record.status = "cache_hit", 200
                    return replayed
            if self.semantic is not None and self.semantic.applies(chat) and response_cache.directives(head.headers)[0]:
                _, found = await self.semantic.lookup(chat)  # streams are answered from it, not stored in it
                replayed = None if found is None else await cached.replay(found[1], chat, sink, SEMANTIC_HIT)
                if replayed is not None:
                    record.outcome, record.status = "semantic_hit", 200
                    return replayed
            budgets = self.budgets
            if budgets is not None:
                who = principal(chat.body, head.headers) if budgets.scoped else None
                budgets.check(record.group, who)
            if key is None:
                outcome = await self.router.stream(chat, sink)
            elif self.coalescer is None:
                outcome = await self._shared_stream(chat, key, cached.Recorder(sink))
            else:
                spend = False  # the shared call spends the budgets itself (its leader may go away)
                try:
                    result, joined = await self.coalescer.stream(
                        cached.flight_key(key, chat),
                        lambda broadcast: self._shared_stream(chat, key, broadcast, who), sink)
                except SidecarError as error:
                    CURRENT_OUTCOME.set(error.outcome)
                    raise
                if joined:
                    record.outcome, record.status = "coalesced", 200
                    return Outcome(chat.model, cache=cached.COALESCED)
                outcome = result
                if outcome is None:  # the call failed in-band after this app had the whole of what was sent
                    record.outcome, record.status = "error", 200
                    return Outcome(chat.model, failed=True)
            record.outcome, record.status = ("error" if outcome.failed else "success"), 200
            return outcome
        except BaseException as error:
            self._failed(error, record, outcome)
            raise
        finally:
            self._end(record, spans, started, outcome, spend, who)

    # ---- the record --------------------------------------------------------------------------------

    def _begin(self, chat: ChatRequest, head: InboundHead, request_id: str) -> tuple[RequestRecord, Spans, float]:
        started = perf_counter()  # not the loop's clock: uvloop's moves in whole milliseconds
        self.metrics.in_flight += 1
        self.active += 1
        CURRENT_OUTCOME.set(None)  # keep-alive requests share a task's context
        group = self.router.group_label(chat.model)  # app-chosen names are not labels
        record = RequestRecord(request_id, group, stream=chat.stream)
        tracing = self.tracing
        spans = None if tracing is None else tracing.start_request(head.method, head.path, head.headers,
                                                                    chat.model, chat.body)
        return record, spans, started

    @staticmethod
    def _failed(error: BaseException, record: RequestRecord, outcome: Outcome | None) -> None:
        if isinstance(error, SidecarError):
            record.status, record.error_type = error.status, error.error_class
            tried = outcome or CURRENT_OUTCOME.get()
            error.outcome = tried if isinstance(tried, Outcome) else None
        elif isinstance(error, asyncio.CancelledError):
            record.outcome, record.status = "cancelled", 499

    def _end(self, record: RequestRecord, spans: Spans, started: float, outcome: Outcome | None,
             spend: bool = True, who: Principal | None = None) -> None:
        self.metrics.in_flight -= 1
        self.active -= 1
        record.seconds = perf_counter() - started
        tried = outcome or CURRENT_OUTCOME.get()
        self._fill(record, tried if isinstance(tried, Outcome) else None)
        if spans is not None:
            record.trace_id = spans.trace_id
            spans.finish(record, tried if isinstance(tried, Outcome) else None)
        self.metrics.observe(record)
        log_request(record)
        if spend and self.budgets is not None and record.cost:
            self.budgets.spend((record.group, record.fallback or record.group), record.cost, who)

    def _fill(self, record: RequestRecord, outcome: Outcome | None) -> None:
        """Copy what the router did into the record (the outcome may be partial when routing raised)."""
        if outcome is None:
            return
        record.deployment = outcome.deployment or ""
        record.attempts, record.errors, record.ttft, record.usage = (outcome.attempts, outcome.errors, outcome.ttft,
                                                                     outcome.usage)
        record.failures = outcome.failures
        record.fallback, record.panic, record.dropped = outcome.fallback, outcome.panic, outcome.dropped
        if record.fallback is not None:
            record.fallback_cause = next((s.cause for s in reversed(outcome.trail) if isinstance(s, FallbackStep)),
                                         None)
        if record.cost is None and record.usage is not None:
            record.cost = request_cost(record.usage, self.prices.get(record.deployment))

    # ---- the cache ---------------------------------------------------------------------------------

    async def _lookup(self, chat: ChatRequest, headers: Mapping[str, str]) -> tuple[str | None, bytes | None]:
        """(the key to store this request's answer under, or None; the cached answer's bytes, or None)."""
        assert self.cache is not None
        key, lookup = self.cache.key_for(chat, headers, self.generation)
        if key is None or not lookup:
            return key, None
        return key, await self.cache.get(key)

    # ---- calls shared by identical requests (coalescing), and what they leave in the cache ---------------

    async def _shared_call(self, chat: ChatRequest, key: str,
                           who: Principal | None) -> tuple[ChatResponse, Outcome]:
        """One whole-answer call on behalf of every request that joins it: stores and spends once."""
        try:
            response, outcome = await self.router.complete(chat)
        except SidecarError as error:
            tried = CURRENT_OUTCOME.get()
            error.outcome = tried if isinstance(tried, Outcome) else None
            raise
        if outcome.catch_all is None:  # a stand-in answer is not the upstream's: never cached
            self.cache.put(key, response_bytes(response))  # type: ignore[union-attr]
        self._spend_shared(chat, outcome, who)
        return response, outcome

    async def _shared_stream(self, chat: ChatRequest, key: str, sink: cached.Recorder | StreamSink,
                             who: Principal | None = None) -> Outcome:
        """One streamed call into ``sink`` (a coalescing broadcast, or a recorder in front of the app's sink);
        the finished answer is stored as a whole one. Spends the budgets when shared (a broadcast)."""
        try:
            outcome = await self.router.stream(chat, sink)
        except SidecarError as error:
            tried = CURRENT_OUTCOME.get()
            error.outcome = tried if isinstance(tried, Outcome) else None
            raise
        if not outcome.failed and outcome.catch_all is None:
            stored = cached.stored_stream(sink.chunks if sink.whole else None, outcome)  # type: ignore[union-attr]
            if stored is not None:
                self.cache.put(key, stored)  # type: ignore[union-attr]
        if not isinstance(sink, cached.Recorder):
            self._spend_shared(chat, outcome, who)
        return outcome

    def _spend_shared(self, chat: ChatRequest, outcome: Outcome, who: Principal | None) -> None:
        """The shared call's cost, against the budgets of the request that made it."""
        if self.budgets is None:
            return
        cost = request_cost(outcome.usage, self.prices.get(outcome.deployment or ""))
        if cost:
            group = self.router.group_label(chat.model)
            self.budgets.spend((group, outcome.fallback or group), cost, who)
