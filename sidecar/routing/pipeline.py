"""One request from the parsed body to an answer: rules → cache → budgets → intent → coalescing → router (or a
cascade) → price → store → spend → shadow copy.

The server turns HTTP into a ``ChatRequest`` and calls ``Pipeline.complete`` or ``Pipeline.stream``; it
turns the ``Answer`` (or the finished stream) back into HTTP. Everything between — the response cache, the
budget check, routing, the cost of the answer, storing it, spending the budget — and the request's record
(metrics, the log line, the trace) happens here, in one place rather than in a handler.

An error that ends the request is raised with ``error.outcome`` set to what routing had done by then (the
server puts its attempts on the error answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from sidecar.config import ModelInfo
from sidecar.config.rules import CascadeSettings
from sidecar.core.cost import request_cost
from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, ChatResponse, WireFormat
from sidecar.formats.openai import response_bytes
from sidecar.policy.budget import Principal
from sidecar.policy.cascade import Checks
from sidecar.policy.intent import IntentChoice
from sidecar.policy.plan import FallbackStep
from sidecar.policy.rules import RuleDecision, RuleSet
from sidecar.routing import cached
from sidecar.routing import cascade as cascading
from sidecar.routing.coalesce import Coalescer
from sidecar.routing.intent import Intents
from sidecar.routing.outcome import Outcome, StreamSink
from sidecar.routing.router import Router
from sidecar.routing.semantic import SEMANTIC_HIT, SemanticCache
from sidecar.routing.shadow import Shadows
from sidecar.state import cache as response_cache
from sidecar.state.budgets import Budgets, principal
from sidecar.state.cache import Key, ResponseCache
from sidecar.state.locks import FleetLocks, Lease
from sidecar.telemetry import RequestMetrics
from sidecar.telemetry.logs import log_request
from sidecar.telemetry.record import CURRENT_OUTCOME, RequestRecord

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Passthrough, RequestSpans, Tracing

    Spans = RequestSpans | Passthrough | None

log = logging.getLogger("sidecar.telemetry")


class InboundHead(Protocol):
    """What the pipeline reads of the app's HTTP request (an aiohttp ``web.Request`` is one)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def task(self) -> asyncio.Task[None]: ...  # the task of the app's connection (coalescing keeps it running)


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: the response (OpenAI-shaped), what routing did (None for a cache hit), its cost in
    USD when prices are known, and the cache's verdict (``hit``/``miss``, None when the cache does not apply)."""

    response: ChatResponse
    outcome: Outcome | None
    cost: float | None = None
    cache: str | None = None
    similarity: float | None = None  # a semantic hit's cosine similarity


@dataclass(slots=True)  # not frozen: made for every request, and a frozen dataclass costs ~1 µs to build
class Route:
    """How one request is routed once the pipeline's own steps are done: its group (a rule's, else the one
    asked for), the rule's decision, the affinity session key, and the group's cascade (None: one call)."""

    group: str
    decision: RuleDecision | None
    session: str | None
    cascade: tuple[CascadeSettings, Checks] | None


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
        self.locks: FleetLocks | None = None  # cross-pod coalescing (a Redis cache tier); set by the assembly
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
        # no affinity, intent routing or cascade: the request goes to the router as it is (no per-request step)
        self.plain_routing = self.affinity is None and self.intents is None and self.cascades is None
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
        spend = True
        who: Principal | None = None
        try:
            key, hit, ask = (None, None, False) if self.cache is None else self.cache.lookup(
                chat, head.headers, self.generation, "" if decision is None else decision.rule)
            hit = await self.cache.get_shared(key) if ask else hit  # type: ignore[union-attr, arg-type]
            if hit is not None:
                record.outcome, record.status = "cache_hit", 200
                data = {} if chat.wire is WireFormat.OPENAI else cached.loads(hit)  # other dialects translate it
                return Answer(ChatResponse(data, raw=hit), None, cache=response_cache.HIT)
            place = None
            if self.semantic is not None and self._semantic_applies(chat, head, decision):
                place, found = await self.semantic.lookup(chat)  # type: ignore[union-attr]
                if found is not None:
                    record.outcome, record.status = "semantic_hit", 200
                    data = {} if chat.wire is WireFormat.OPENAI else cached.loads(found[1])
                    return Answer(ChatResponse(data, raw=found[1]), None, cache=SEMANTIC_HIT, similarity=found[0])
            who = None if self.budgets is None else await self._check_budgets(chat, head, record)
            chat, route, choice = ((chat, Route(record.group, decision, None, None), None) if self.plain_routing
                                   else await self._route_for(chat, head, record, decision))
            if key is not None and self.coalescer is not None:
                spend = False  # the shared call spends the budgets itself (its leader may go away)
                try:  # requests share a call only when they also want the same bytes: same dialect
                    (response, outcome, earlier), joined = await self.coalescer.complete(
                        (key, chat.wire), self._shared_call, head.task, chat, key, who, route)
                except SidecarError as error:
                    CURRENT_OUTCOME.set(error.outcome)  # what the shared call did, for this request's record
                    raise
                if joined or outcome is None:  # another request's call, here or on another pod
                    outcome = None
                    record.outcome, record.status = "coalesced", 200
                    return Answer(response, None, cache=cached.COALESCED)
            else:
                response, outcome, earlier = await self._route(chat, route)
                if key is not None and outcome.catch_all is None:  # a stand-in answer is never cached
                    self.cache.put(key, response_bytes(response))  # type: ignore[union-attr]
            record.outcome, record.status = "success", 200
            if choice is not None:
                outcome.trail.insert(0, choice)
            record.cost = request_cost(outcome.usage, self.prices.get(outcome.deployment or ""))
            if earlier:  # what the cascade's rejected answers cost
                record.cost = (record.cost or 0.0) + earlier
            if place is not None and outcome.catch_all is None:
                self.semantic.store(place, response_bytes(response))  # type: ignore[union-attr]
            if self.shadows is not None:  # the app's answer is ready: the copy starts now, on its own
                self.shadows.copy(record.group, chat, route.decision)
            return Answer(response, outcome, record.cost, None if key is None else response_cache.MISS)
        except BaseException as error:
            self._failed(error, record, outcome)
            raise
        finally:
            self._end(record, spans, started, outcome, spend, who)

    async def stream(self, chat: ChatRequest, head: InboundHead, request_id: str, sink: StreamSink) -> Outcome:
        """Stream an answer into ``sink`` (errors after its commit point end the stream in-band)."""
        decision = None if self.rules is None else self.rules.decide(chat, head.headers)
        record, spans, started = self._begin(chat, head, request_id, decision)
        outcome: Outcome | None = None
        spend = True
        who: Principal | None = None
        try:
            key, hit, ask = (None, None, False) if self.cache is None else self.cache.lookup(
                chat, head.headers, self.generation, "" if decision is None else decision.rule)
            hit = await self.cache.get_shared(key) if ask else hit  # type: ignore[union-attr, arg-type]
            replayed, place = await self._replay(chat, head, decision, hit, sink, record)
            if replayed is not None:
                return replayed
            who = None if self.budgets is None else await self._check_budgets(chat, head, record)
            chat, route, choice = ((chat, Route(record.group, decision, None, None), None) if self.plain_routing
                                   else await self._route_for(chat, head, record, decision))
            decision, session = route.decision, route.session
            if route.cascade is not None and route.cascade[0].buffer_streams:  # whole answers checked, one streamed
                response, outcome, earlier = await self._route(cascading.whole(chat), route)
                record.cost = (request_cost(outcome.usage, self.prices.get(outcome.deployment or "")) or 0.0) + earlier
                await self.router.replay(chat, sink, response, outcome)
            elif key is None and place is None:
                outcome = await self.router.stream(chat, sink, decision, session)
            elif key is None or self.coalescer is None:  # kept for the cache, or the semantic cache only
                recorder = cached.Recorder(sink, verdict=None if key is None else cached.MISS)
                outcome = await self._shared_stream(recorder, chat, key, decision, session, None, place)
            else:
                spend = False  # the shared call spends the budgets itself (its leader may go away)
                try:  # the same bytes: dialect and usage chunk (the 3-tuple never meets a whole answer's flight)
                    result, joined = await self.coalescer.stream(
                        (key, chat.wire, chat.include_usage), self._shared_stream, sink, head.task,
                        chat, key, decision, session, who, place)
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
            if choice is not None:
                outcome.trail.insert(0, choice)
            if self.shadows is not None:
                self.shadows.copy(record.group, chat, decision)
            return outcome
        except BaseException as error:
            self._failed(error, record, outcome)
            raise
        finally:
            self._end(record, spans, started, outcome, spend, who)

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
        return record, self._spans(head, chat), started

    def _spans(self, head: InboundHead, chat: ChatRequest) -> Spans:
        """The request's spans; telemetry that fails (an app's odd trace header, a bug) never fails the request."""
        if self.tracing is None:
            return None
        try:
            return self.tracing.start_request(head.method, head.path, head.headers, chat.model, chat.body)
        except Exception:
            log.exception("tracing could not start the request's spans; it goes untraced")
            return None

    @staticmethod
    def _failed(error: BaseException, record: RequestRecord, outcome: Outcome | None) -> None:
        if isinstance(error, SidecarError):
            record.status, record.error_type = error.status, error.error_class
            tried = outcome or CURRENT_OUTCOME.get()
            error.outcome = tried if isinstance(tried, Outcome) else None
        elif isinstance(error, asyncio.CancelledError | ConnectionResetError):
            record.outcome, record.status = "cancelled", 499  # the app went away (a write may fail before the cancel)

    def _end(self, record: RequestRecord, spans: Spans, started: float, outcome: Outcome | None,
             spend: bool = True, who: Principal | None = None) -> None:
        self.metrics.in_flight -= 1
        self.active -= 1
        record.seconds = perf_counter() - started
        tried = outcome or CURRENT_OUTCOME.get()
        self._fill(record, tried if isinstance(tried, Outcome) else None)
        if spans is not None:
            record.trace_id = spans.trace_id
            try:  # metrics, the log line and the budgets below must not depend on telemetry
                spans.finish(record, tried if isinstance(tried, Outcome) else None)
            except Exception:
                log.exception("tracing could not finish the request's spans")
        self.metrics.observe(record)
        log_request(record)
        if spend and self.budgets is not None and record.cost:
            self.budgets.spend((record.group, record.fallback or record.group), record.cost, who)

    def _fill(self, record: RequestRecord, outcome: Outcome | None) -> None:
        """Copy what the router did into the record (the outcome may be partial when routing raised)."""
        if outcome is None:
            return
        record.deployment = self._deployment_label(outcome.deployment or "", record.group)
        record.attempts, record.errors, record.ttft, record.usage = (outcome.attempts, outcome.errors, outcome.ttft,
                                                                     outcome.usage)
        record.failures = [(self._deployment_label(d, record.group), error_class, cause)
                           for d, error_class, cause in outcome.failures]
        record.fallback, record.panic, record.dropped = outcome.fallback, outcome.panic, outcome.dropped
        if record.fallback is not None:
            record.fallback_cause = next((s.cause for s in reversed(outcome.trail) if isinstance(s, FallbackStep)),
                                         None)
        if record.cost is None and record.usage is not None:
            record.cost = request_cost(record.usage, self.prices.get(record.deployment))

    def _deployment_label(self, deployment: str, group: str) -> str:
        """A deployment as metrics, the log line and prices name it: a configured one by its id; one a wildcard
        built for the model name an app chose, by its wildcard (the group's label): app-chosen names would make
        a metric series each, without bound."""
        return deployment if not deployment or deployment in self.prices else group

    # ---- calls shared by identical requests (coalescing), and what they leave in the cache ---------------

    async def _replay(self, chat: ChatRequest, head: InboundHead, decision: RuleDecision | None,
                      hit: bytes | None, sink: StreamSink, record: RequestRecord,
                      ) -> tuple[Outcome | None, tuple[str, list[float]] | None]:
        """(a stream replayed from the cache's answer, or from the semantic cache's — None: neither had one;
        where the semantic cache keeps this stream's answer — None: it does not apply)."""
        if hit is not None:
            replayed = await cached.replay(hit, chat, sink)
            if replayed is not None:
                record.outcome, record.status = "cache_hit", 200
                return replayed, None
        if self.semantic is not None and self._semantic_applies(chat, head, decision):
            place, found = await self.semantic.lookup(chat)  # type: ignore[union-attr]
            replayed = None if found is None else await cached.replay(found[1], chat, sink, SEMANTIC_HIT)
            if replayed is not None:
                record.outcome, record.status = "semantic_hit", 200
            return replayed, place
        return None, None

    def _semantic_applies(self, chat: ChatRequest, head: InboundHead, decision: RuleDecision | None) -> bool:
        """The semantic cache is opt-in per group, and never serves a compliance-restricted request (its
        entries may come from any tenant's deployments)."""
        return (self.semantic is not None and (decision is None or not decision.restricted)
                and self.semantic.applies(chat) and response_cache.directives(head.headers.get("cache-control"))[0])

    async def _check_budgets(self, chat: ChatRequest, head: InboundHead, record: RequestRecord) -> Principal | None:
        """Who the request spends for; raises ``BudgetExceeded`` before any upstream call (from memory, once the
        shared spend of its windows has been read)."""
        budgets = self.budgets
        if budgets is None:
            return None
        who = principal(chat.body, head.headers) if budgets.scoped else None
        await budgets.admit(record.group, who)
        return who

    async def _route_for(self, chat: ChatRequest, head: InboundHead, record: RequestRecord,
                         decision: RuleDecision | None) -> tuple[ChatRequest, Route, IntentChoice | None]:
        """The request as routed (intent routing may send it to another group) and how it is routed."""
        session = None if self.affinity is None else self.session(chat, head.headers)
        choice = None
        if self.intents is not None and record.group in self.intents.settings:
            chat, decision, choice = await self._intent(record.group, chat, decision)
        cascade = None if self.cascades is None else self.cascades.get(record.group)
        return chat, Route(record.group, decision, session, cascade), choice

    async def _route(self, chat: ChatRequest, route: Route) -> tuple[ChatResponse, Outcome, float]:
        """(the answer, what routing did, what a cascade's rejected answers cost)."""
        if route.cascade is None:
            response, outcome = await self.router.complete(chat, route.decision, route.session)
            return response, outcome, 0.0
        return await cascading.complete(self.router, chat, route.group, *route.cascade, route.decision,
                                        route.session, self.prices)

    async def _shared_call(self, chat: ChatRequest, key: Key, who: Principal | None,
                           route: Route) -> tuple[ChatResponse, Outcome | None, float]:
        """One whole-answer call on behalf of every request that joins it: stores and spends once. With a
        cross-pod lock another pod may be making it: its stored answer, with no outcome (nothing spent here)."""
        lease: Lease | None = None
        stored: asyncio.Task[None] | None = None
        deadline = None
        if self.locks is not None:  # one timeout for the wait and the call: the wait counts against it
            deadline = self.router.clock() + self.router.timeout
            found, lease = await self.locks.claim(key, self.router.timeout)  # type: ignore[arg-type]  # locks: Redis keys
            if found is not None:
                return ChatResponse({} if chat.wire is WireFormat.OPENAI else cached.loads(found), raw=found), None, 0.0
        try:
            if route.cascade is None:  # ``_route``, without a coroutine of its own
                response, outcome = await self.router.complete(chat, route.decision, route.session, deadline=deadline)
                earlier = 0.0
            else:
                response, outcome, earlier = await self._route(chat, route)
            if outcome.catch_all is None:  # a stand-in answer is not the upstream's: never cached
                stored = self.cache.put(key, response_bytes(response))  # type: ignore[union-attr]
        except SidecarError as error:
            _attach_outcome(error)
            raise
        finally:
            if lease is not None:
                self.locks.release(lease, stored)  # type: ignore[union-attr]
        if self.budgets is not None:
            self._spend_shared(route.group, outcome, who, earlier)
        return response, outcome, earlier

    async def _shared_stream(self, sink: cached.Recorder | StreamSink, chat: ChatRequest, key: Key | None,
                             decision: RuleDecision | None, session: str | None, who: Principal | None,
                             place: tuple[str, list[float]] | None) -> Outcome:
        """One streamed call into ``sink`` (a coalescing broadcast, or a recorder in front of the app's sink);
        the finished answer is stored as a whole one, under ``key`` in the cache and at ``place`` in the
        semantic cache. Spends the budgets when shared (a broadcast)."""
        lease = None if self.locks is None or key is None else await self.locks.take(key)  # type: ignore[arg-type]  # for other pods
        put: asyncio.Task[None] | None = None
        try:
            outcome = await self.router.stream(chat, sink, decision, session)
            if not outcome.failed and outcome.catch_all is None:
                stored = cached.stored_stream(sink.chunks if sink.whole else None, outcome)  # type: ignore[union-attr]
                if place is not None:
                    stored = cached.folded(stored)
                    if stored is not None:
                        self.semantic.store(place, stored)  # type: ignore[union-attr]
                if stored is not None and key is not None:
                    put = self.cache.put(key, stored)  # type: ignore[union-attr]
        except SidecarError as error:
            _attach_outcome(error)
            raise
        finally:
            if lease is not None:
                self.locks.release(lease, put)  # type: ignore[union-attr]
        if self.budgets is not None and not isinstance(sink, cached.Recorder):
            group = self.router.group_label(chat.model if decision is None or decision.group is None
                                            else decision.group)
            self._spend_shared(group, outcome, who)
        return outcome

    def _spend_shared(self, group: str, outcome: Outcome, who: Principal | None, earlier: float = 0.0) -> None:
        """The shared call's cost (with a cascade's rejected answers), against the budgets of the request that
        made it."""
        assert self.budgets is not None
        cost = (request_cost(outcome.usage, self.prices.get(outcome.deployment or "")) or 0.0) + earlier
        if cost:
            self.budgets.spend((group, outcome.fallback or group), cost, who)


def _attach_outcome(error: SidecarError) -> None:
    """What the failed shared call did, on its error: every request that shared it records it."""
    tried = CURRENT_OUTCOME.get()
    error.outcome = tried if isinstance(tried, Outcome) else None
