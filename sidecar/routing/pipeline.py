"""One request from the parsed body to an answer: rules → cache → budgets → router → price → store → spend.

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
import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from sidecar.config import ModelInfo
from sidecar.core.cost import request_cost
from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, ChatResponse
from sidecar.formats.openai import response_bytes
from sidecar.policy.cascade import Checks
from sidecar.policy.intent import IntentChoice
from sidecar.policy.plan import FallbackStep
from sidecar.policy.rules import RuleDecision, RuleSet
from sidecar.routing import cascade as cascading
from sidecar.routing.intent import Intents
from sidecar.routing.outcome import Outcome, StreamSink
from sidecar.routing.router import Router
from sidecar.routing.shadow import Shadows
from sidecar.state import cache as response_cache
from sidecar.state.budgets import Budgets
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


class Pipeline:
    """The steps of one request around the router. The cache and budgets are None when not configured, and
    the request path then skips them; ``tracing`` is None when tracing is off."""

    def __init__(self, router: Router, metrics: RequestMetrics, *, cache: ResponseCache | None = None,
                 budgets: Budgets | None = None, tracing: Tracing | None = None,
                 prices: Mapping[str, ModelInfo] | None = None, generation: str = "") -> None:
        self.router = router
        self.generation = generation  # the deployment set's digest: part of every cache key
        self.active = 0  # requests in flight here: a replaced pipeline is closed once they are done
        self.metrics = metrics
        self.cache = cache
        self.budgets = budgets
        self.tracing = tracing
        self.prices = prices if prices is not None else {d.id: d.model_info for d in router.config.deployments}
        rules = router.config.sidecar.rules  # compiled once per config; None: no per-request cost
        self.rules = RuleSet(rules) if rules else None
        self.affinity = router.config.sidecar.affinity  # None: no session keys are read
        cascades = router.config.sidecar.cascade
        self.cascades = {g: (c, Checks(c)) for g, c in cascades.items()} if cascades else None
        shadow = router.config.sidecar.shadow
        self.shadows = Shadows(shadow, router, metrics, tracing, self.prices) if shadow else None
        intent = router.config.sidecar.intent
        self.intents = Intents(intent, router) if intent else None
        if self.intents is not None:
            # the examples' embeddings, in the background; with no event loop yet, on first use
            with contextlib.suppress(RuntimeError):
                self.intents.prepare()

    def session(self, chat: ChatRequest, headers: Mapping[str, str]) -> str | None:
        """The request's session key for affinity: the configured header, else the ``metadata`` key."""
        affinity = self.affinity
        assert affinity is not None
        if affinity.header is not None:
            key = headers.get(affinity.header)
            if key:
                return key
        if affinity.metadata_key is not None:
            metadata = chat.body.get("metadata")
            key = metadata.get(affinity.metadata_key) if isinstance(metadata, dict) else None
            if isinstance(key, str) and key:
                return key
        return None

    async def _intent(self, group: str, chat: ChatRequest, decision: RuleDecision | None,
                      ) -> tuple[ChatRequest, RuleDecision | None, IntentChoice]:
        """The request sent on to the target group intent routing chooses (a rule's group is spent: it chose
        ``group``; its tags still bind)."""
        assert self.intents is not None
        choice = await self.intents.choose(group, chat)
        if decision is not None and decision.group is not None:
            decision = dataclasses.replace(decision, group=None)
        return dataclasses.replace(chat, model=choice.chosen), decision, choice

    def decide(self, chat: ChatRequest, headers: Mapping[str, str]) -> RuleDecision | None:
        """The request rule that applies to ``chat`` (None: no rule, or none matches)."""
        return None if self.rules is None else self.rules.decide(chat, headers)

    async def complete(self, chat: ChatRequest, head: InboundHead, request_id: str) -> Answer:
        """A whole answer, from the cache or the router."""
        decision = None if self.rules is None else self.rules.decide(chat, head.headers)
        record, spans, started = self._begin(chat, head, request_id, decision)
        outcome: Outcome | None = None
        try:
            key, hit = (None, None) if self.cache is None else await self._lookup(chat, head.headers, decision)
            if hit is not None:
                record.outcome, record.status = "cache_hit", 200
                return Answer(ChatResponse({}, raw=hit), None, cache=response_cache.HIT)
            if self.budgets is not None:
                self.budgets.check(record.group)  # memory only; raises BudgetExceeded before any upstream call
            session = None if self.affinity is None else self.session(chat, head.headers)
            choice = None
            if self.intents is not None and record.group in self.intents.settings:
                chat, decision, choice = await self._intent(record.group, chat, decision)
            cascade = None if self.cascades is None else self.cascades.get(record.group)
            earlier = 0.0  # what the cascade's rejected answers cost
            if cascade is None:
                response, outcome = await self.router.complete(chat, decision, session)
            else:
                response, outcome, earlier = await cascading.complete(
                    self.router, chat, record.group, *cascade, decision, session, self.prices)
            record.outcome, record.status = "success", 200
            if choice is not None:
                outcome.trail.insert(0, choice)
            record.cost = request_cost(outcome.usage, self.prices.get(outcome.deployment or ""))
            if earlier:
                record.cost = (record.cost or 0.0) + earlier
            if self.shadows is not None:  # the app's answer is ready: the copy starts now, on its own
                self.shadows.copy(record.group, chat, decision)
            verdict = None
            if key is not None:
                verdict = response_cache.MISS
                if outcome.catch_all is None:  # a stand-in answer is not the upstream's: never cached
                    self.cache.put(key, response_bytes(response))  # type: ignore[union-attr]
            return Answer(response, outcome, record.cost, verdict)
        except BaseException as error:
            self._failed(error, record, outcome)
            raise
        finally:
            self._end(record, spans, started, outcome)

    async def stream(self, chat: ChatRequest, head: InboundHead, request_id: str, sink: StreamSink) -> Outcome:
        """Stream an answer into ``sink`` (errors after its commit point end the stream in-band)."""
        decision = None if self.rules is None else self.rules.decide(chat, head.headers)
        record, spans, started = self._begin(chat, head, request_id, decision)
        outcome: Outcome | None = None
        try:
            if self.budgets is not None:
                self.budgets.check(record.group)
            session = None if self.affinity is None else self.session(chat, head.headers)
            choice = None
            if self.intents is not None and record.group in self.intents.settings:
                chat, decision, choice = await self._intent(record.group, chat, decision)
            cascade = None if self.cascades is None else self.cascades.get(record.group)
            if cascade is not None and cascade[0].buffer_streams:  # whole answers checked, the accepted one streamed
                response, outcome, earlier = await cascading.complete(
                    self.router, cascading.whole(chat), record.group, *cascade, decision, session, self.prices)
                record.cost = (request_cost(outcome.usage, self.prices.get(outcome.deployment or "")) or 0.0) + earlier
                await self.router.replay(chat, sink, response, outcome)
            else:
                outcome = await self.router.stream(chat, sink, decision, session)
            record.outcome, record.status = ("error" if outcome.failed else "success"), 200
            if choice is not None:
                outcome.trail.insert(0, choice)
            if self.shadows is not None:
                self.shadows.copy(record.group, chat, decision)
            return outcome
        except BaseException as error:
            self._failed(error, record, outcome)
            raise
        finally:
            self._end(record, spans, started, outcome)

    # ---- the record --------------------------------------------------------------------------------

    def _begin(self, chat: ChatRequest, head: InboundHead, request_id: str,
               decision: RuleDecision | None = None) -> tuple[RequestRecord, Spans, float]:
        started = perf_counter()  # not the loop's clock: uvloop's moves in whole milliseconds
        self.metrics.in_flight += 1
        self.active += 1
        CURRENT_OUTCOME.set(None)  # keep-alive requests share a task's context
        # app-chosen names are not labels; a rule's group is the one the request is routed to
        group = self.router.group_label(chat.model if decision is None or decision.group is None else decision.group)
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

    def _end(self, record: RequestRecord, spans: Spans, started: float, outcome: Outcome | None) -> None:
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
        if self.budgets is not None and record.cost:
            self.budgets.spend((record.group, record.fallback or record.group), record.cost)

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

    async def _lookup(self, chat: ChatRequest, headers: Mapping[str, str],
                      decision: RuleDecision | None) -> tuple[str | None, bytes | None]:
        """(the key to store this request's answer under, or None; the cached answer's bytes, or None). A
        request a rule decided has answers of its own: those of its rule's deployments, no others."""
        assert self.cache is not None
        key, lookup = self.cache.key_for(chat, headers, self.generation)
        if key is not None and decision is not None:
            key = f"{key}:rule:{decision.rule}"
        if key is None or not lookup:
            return key, None
        return key, await self.cache.get(key)
