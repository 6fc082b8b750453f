"""The one place policy meets I/O: one request's attempts, from plan to answer.

For each request: ``policy.plan`` gives the model group and its fallbacks; ``policy.strategies`` orders a
group's deployments; each deployment's ``CircuitBreaker`` admits or skips it; an attempt goes through the
adapter and ``providers.http`` under one shrinking deadline; its failure is classified (``core.errors``)
and ``RetryPolicy.decide`` says retry, fail over or give up — retries are spent inside the group before
its fallbacks are walked. When nothing answered and candidates were skipped for an open breaker, the
request goes to the one that reopens soonest (``plan.Panic``) instead of being refused. Every decision is
appended to ``Outcome.trail`` as a value, so telemetry can put it on the trace. Hedging is ``hedging.race``.

A stream may move to another deployment freely before ``StreamSink.start`` — the commit point. After it, a
failure continues the answer on the next candidate (prefill or splice, see ``formats.continuation``) or
ends the stream with an explicit error; it never ends like a success.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import aiohttp

from sidecar.config import Config, Deployment
from sidecar.core import tokens
from sidecar.core.errors import (
    AllRateLimited,
    ContextWindowExceeded,
    DeadlineExceeded,
    InvalidRequest,
    NoHealthyUpstream,
    RateLimited,
    RuleRefused,
    SidecarError,
    UpstreamError,
    unreadable,
)
from sidecar.core.types import ChatRequest, ChatResponse, Usage
from sidecar.policy.affinity import AffinityTable, Sticky
from sidecar.policy.breaker import CircuitBreaker, Transition
from sidecar.policy.limits import TokenBucket
from sidecar.policy.plan import (
    Attempt,
    FallbackStep,
    Panic,
    Ranking,
    Skip,
    context_windows,
    groups_to_try,
    panic_choice,
    rejection_fallbacks,
)
from sidecar.policy.quota import Quota, readings
from sidecar.policy.retry import GiveUp, Retry, RetryPolicy
from sidecar.policy.rules import RuleDecision, capability_skip, checks_capabilities, needs
from sidecar.policy.stats import DeploymentStats
from sidecar.policy.strategies import order, ranked
from sidecar.providers import bind, http
from sidecar.providers.sglang import ReplicaPool, SGLangAdapter
from sidecar.routing import names
from sidecar.routing.carry import inherit
from sidecar.routing.catch_all import CatchAllStore
from sidecar.routing.hedging import hedge_delay, race
from sidecar.routing.outcome import FAILED, Outcome, RaceState, StreamSink, Target, Walk, model_of
from sidecar.routing.streaming import StreamAttempt, StreamLimits
from sidecar.telemetry.record import CURRENT_OUTCOME

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Tracing

log = logging.getLogger("sidecar.router")
T = TypeVar("T")
RATE_LIMIT_SKIPS = frozenset({"rpm_limit", "tpm_limit", "upstream_rpm", "upstream_tpm"})
TOKEN_STRATEGIES = frozenset({"usage-based-routing", "least-tokens"})  # strategies that need token estimates
PREFILL_PROVIDERS = frozenset({"anthropic", "sglang", "hosted_vllm", "ollama", "ollama_chat", "bedrock"})


class Router:
    def __init__(self, config: Config, session: aiohttp.ClientSession, *,
                 rng: random.Random | None = None, clock: Callable[[], float] | None = None,
                 observer: Tracing | None = None, previous: Mapping[str, Target] | None = None) -> None:
        """``previous`` (on reload): new deployment id → the old router's target for the same upstream,
        whose breaker, statistics and limits carry over (``routing.carry``)."""
        settings = config.router
        self.config = config
        self.observer = observer  # CLIENT span per attempt when tracing is on; None costs nothing
        self.session = session
        self.rng = rng or random.Random()
        self.clock = clock or asyncio.get_running_loop().time
        self.timeout = settings.timeout
        self.strategy = settings.routing_strategy
        self.group_strategies = config.sidecar.group_strategies  # a group's own strategy over the router's
        self.retry_policy = RetryPolicy.from_settings(settings, config.sidecar.retry_after_cap_seconds)
        self.retry_after_cap = config.sidecar.retry_after_cap_seconds
        self.breaker_settings = config.sidecar.breaker
        self.stream_limits = StreamLimits(session, self.clock, self.ttft_limit, self.idle_limit,
                                          config.sidecar.stream_stall, config.sidecar.limits, self.observe_quota)
        self.quotas = False  # has any upstream reported its rate-limit quota? (then requests need estimates)
        affinity = config.sidecar.affinity
        self.affinity = None if affinity is None else AffinityTable(affinity.max_sessions, affinity.ttl_seconds)
        self.affinity_groups = frozenset() if affinity is None else affinity.groups
        self.catch_all = CatchAllStore(config.sidecar.catch_all)
        previous = previous or {}
        self.targets: dict[str, tuple[Target, ...]] = {
            name: tuple(self._target(d, previous.get(d.id)) for d in group.deployments)
            for name, group in config.groups.items()
        }
        self.plans = {name: groups_to_try(name, settings) for name in config.groups}
        self.windows = context_windows({name: [d.model_info.max_input_tokens for d in group.deployments]
                                        for name, group in config.groups.items()})
        self.names = names.Names(config, self.targets, self.plans, self.windows, self._target)
        self.hedging = config.sidecar.hedging
        # Token estimates cost a walk over the messages: only when some deployment has a tpm limit or a
        # context window to check, or usage-based routing needs them.
        strategies = {settings.routing_strategy, *config.sidecar.group_strategies.values(),
                      *(r.strategy for r in config.sidecar.rules)}
        self.estimates = bool(strategies & TOKEN_STRATEGIES) or any(
            d.tpm or d.model_info.max_input_tokens
            for d in (*config.deployments, *(t for w in config.wildcards for t in w.deployments)))
        # The capability check costs a look at the request: only when some deployment says it cannot do something.
        self.capabilities = checks_capabilities(
            (*config.deployments, *(t for w in config.wildcards for t in w.deployments)))

    def _target(self, deployment: Deployment, previous: Target | None = None) -> Target:
        settings, breaker = self.config.router, self.config.sidecar.breaker
        prefill = deployment.supports_prefill
        adapter = bind(deployment)
        pool = ReplicaPool(deployment, deployment.replicas, self.clock) if deployment.replicas else None
        target = Target(
            deployment=deployment,
            adapter=adapter if pool is None else SGLangAdapter(adapter, pool),
            breaker=CircuitBreaker(deployment.id, settings.allowed_fails, settings.cooldown_time,
                                   error_rate_threshold=breaker.error_rate, window=breaker.window,
                                   min_requests=breaker.min_requests),
            stats=DeploymentStats(),
            rpm=TokenBucket(deployment.rpm) if deployment.rpm else None,
            tpm=TokenBucket(deployment.tpm) if deployment.tpm else None,
            accepts_prefill=deployment.provider in PREFILL_PROVIDERS if prefill is None else prefill,
            pool=pool,
        )
        return target if previous is None else inherit(target, previous)

    # ---- read-only views ------------------------------------------------------------------------

    def has_group(self, name: str) -> bool:
        return name in self.targets

    def group_label(self, name: str) -> str:
        return name if name in self.config.groups else self.names.label(name)

    def all_targets(self) -> list[Target]:
        return [t for targets in self.targets.values() for t in targets]

    def pools(self) -> list[ReplicaPool]:
        """The replica pools of shared SGLang deployments (their pollers run as the assembly's tasks)."""
        return [t.pool for t in self.all_targets() if t.pool is not None]

    def unavailable_groups(self) -> list[str]:
        """Model groups none of whose deployments (nor fallbacks) can be tried now (for /readyz). An open
        breaker does not make a deployment untriable — panic routing still sends to it — unless its group
        refuses, or the upstream itself asked for the pause (Retry-After)."""
        now = self.clock()
        refuses = self.breaker_settings.refuses
        return [name for name, plan in self.plans.items() if name not in self.names.built and not any(
            t.breaker.ready_at(now) <= now or not (t.rate_limited or refuses(g))
            for g in plan for t in self.targets[g])]

    def refresh_credentials(self) -> list[Target]:
        """Re-read file secrets (blocking: call it in a worker thread); the targets whose key changed."""
        changed = []
        for target in self.all_targets():
            key = target.deployment.api_key
            if key is not None and key.refresh():
                target.adapter.refresh_credentials()
                changed.append(target)
        return changed

    # ---- entry points ---------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, decision: RuleDecision | None = None,
                       session: str | None = None, *, catch_all: bool = True,
                       deadline: float | None = None) -> tuple[ChatResponse, Outcome]:
        """A whole answer, from the first deployment that gives one (or the catch-all). ``decision``: the
        request rule that applies (``policy.rules``), whose tags no attempt of this request may leave;
        ``session``: its affinity key; ``catch_all`` False: no stand-in answer, nothing remembered (shadows);
        ``deadline`` (``clock`` time): when the request's time was already counting (else ``timeout`` from now)."""
        outcome = self._outcome(request, decision)
        # A restricted request's remembered answers may come from deployments its rule excludes: none.
        remembered = catch_all and (decision is None or not decision.restricted)

        async def attempt(target: Target, deadline: float) -> ChatResponse:
            return await self._call(target, request, deadline, outcome)

        try:
            response = await self._route(request, outcome, attempt, None, decision, session, deadline)
        except (NoHealthyUpstream, AllRateLimited, DeadlineExceeded) as error:
            fallback = self.catch_all.response(request, remembered=remembered) if catch_all else None
            if fallback is None:
                raise
            outcome.catch_all, outcome.deployment = fallback[1], "catch-all"
            log.warning("every upstream failed (%s); answered from the catch-all", error.error_class)
            return fallback[0], outcome
        outcome.usage = response.usage
        if remembered:
            self.catch_all.remember(request, response)
        return response, outcome

    async def stream(self, request: ChatRequest, sink: StreamSink, decision: RuleDecision | None = None,
                     session: str | None = None) -> Outcome:
        """Stream an answer into ``sink``. Errors before the commit point are raised; after it, in-band."""
        outcome = self._outcome(request, decision)
        remembered = decision is None or not decision.restricted
        stream = StreamAttempt(self.stream_limits, request, sink, outcome)
        try:
            await self._route(request, outcome, stream.run, stream, decision, session)
        except SidecarError as error:
            if sink.started:
                outcome.failed = True
                await sink.fail(error)
                return outcome
            if isinstance(error, NoHealthyUpstream | AllRateLimited | DeadlineExceeded):
                fallback = self.catch_all.response(request, remembered=remembered)
                if fallback is not None:
                    outcome.catch_all, outcome.deployment = fallback[1], "catch-all"
                    await stream.replay(fallback[0])
                    return outcome
            raise
        if remembered:
            self.catch_all.remember_text(request, stream.progress)
        return outcome

    async def replay(self, request: ChatRequest, sink: StreamSink, response: ChatResponse, outcome: Outcome) -> None:
        """Stream a whole answer the sidecar already has (a buffered cascade's) into ``sink``."""
        await StreamAttempt(self.stream_limits, request, sink, outcome).replay(response)

    def _outcome(self, request: ChatRequest, decision: RuleDecision | None = None) -> Outcome:
        if decision is None:
            name = request.model
            return Outcome(name if name in self.targets else self.names.resolve(name))
        name = request.model if decision.group is None else decision.group
        outcome = Outcome(name if name in self.targets else self.names.resolve(name))
        outcome.rule = decision.rule
        outcome.trail.append(decision)
        return outcome

    # ---- the attempt loop -----------------------------------------------------------------------

    async def _route(self, request: ChatRequest, outcome: Outcome,
                     attempt: Callable[[Target, float], Awaitable[T]], race: RaceState | None = None,
                     decision: RuleDecision | None = None, session: str | None = None,
                     deadline: float | None = None) -> T:
        deadline = self.clock() + self.timeout if deadline is None else deadline
        walk = Walk(request, outcome, attempt, deadline, deque(self.plans[outcome.group]), race)
        walk.decision = decision
        if session is not None and (not self.affinity_groups or outcome.group in self.affinity_groups):
            walk.session = session
        if self.capabilities:
            walk.needs = needs(request)
        if self.estimates or self.quotas:
            outcome.estimate = (tokens.prompt_tokens(request), tokens.total_tokens(request))
            walk.needed = outcome.estimate[0]
        previous: str | None = None
        while walk.pending:
            group = walk.pending.popleft()
            walk.tried.add(group)
            if previous is not None:
                outcome.trail.append(FallbackStep(previous, group, outcome.errors[-1] if outcome.errors else "skipped"))
            previous = group
            result = await self._group(group, walk)
            if result is not FAILED:
                outcome.answered_group = group
                return result  # type: ignore[return-value]
        result = await self._panic(walk)
        if result is not FAILED:
            return result  # type: ignore[return-value]
        raise self._exhausted(outcome.group, walk)

    async def _group(self, group: str, walk: Walk) -> object:
        """``group``'s deployments in strategy order until one answers; else ``FAILED``, and ``walk.pending``
        holds what comes next (a rejection's own fallbacks; nothing when time ran out)."""
        outcome = walk.outcome
        decision = walk.decision
        candidates = self._ordered(group, outcome, self.clock(), decision)
        if (decision is not None and decision.restricted) or walk.needs is not None:
            candidates = self._eligible(candidates, walk)
        eligible = len(candidates)
        if walk.session is not None and eligible > 1:
            self._stick(group, candidates, walk)
        hedge = self.hedging.get(group)
        too_long = 0  # candidates whose context window the prompt does not fit
        while candidates:
            target = candidates.popleft()
            skipped = self._skip_reason(target, walk, self.clock())
            if skipped is not None:
                too_long += skipped == "context_window"
                self._passed_over(target, group, skipped, walk)
                continue
            try:
                if hedge is not None and candidates:
                    result = await race(lambda t, left: self._attempts(t, group, walk, left), target, candidates,
                                        lambda t: self._admit(t, walk), hedge_delay(hedge, target), walk.race,
                                        outcome.trail)
                else:
                    result = await self._attempts(target, group, walk, candidates)
            except GiveUpError as give_up:
                walk.pending = self._after_rejection(give_up.error, group, target, walk)
                return FAILED
            if result is not FAILED:
                return result
            walk.count(bool(outcome.errors) and outcome.errors[-1] == "rate_limited")
            if self.clock() >= walk.deadline:
                walk.pending.clear()
                return FAILED
        if too_long and too_long == eligible:
            error = walk.rejected or ContextWindowExceeded(
                f"the prompt is longer than every deployment's context window for '{group}'", param="messages")
            walk.pending = self._after_rejection(error, group, None, walk)
        return FAILED

    async def _panic(self, walk: Walk) -> object:
        """Nothing answered and candidates were skipped for an open breaker: rather than refuse the request,
        send it to the one whose breaker reopens soonest (``plan.Panic``) — unless time is up."""
        now = self.clock()
        if not walk.opened or now >= walk.deadline:
            return FAILED
        target, group = panic_choice((pair, pair[0].breaker.ready_at(now)) for pair in walk.opened)  # type: ignore[misc]
        walk.outcome.trail.append(Panic(target.deployment.id, group))
        walk.outcome.panic = target.deployment.id
        try:
            result = await self._attempts(target, group, walk, deque(), panic=True)
        except GiveUpError as give_up:
            raise give_up.error from None
        if result is not FAILED:
            walk.outcome.answered_group = group
        return result

    def strategy_for(self, group: str, decision: RuleDecision | None = None) -> str:
        """A rule's strategy, else the group's own (``sidecar_settings.group_strategies``), else the router's."""
        if decision is not None and decision.strategy is not None:
            return decision.strategy
        return self.group_strategies.get(group, self.strategy) if self.group_strategies else self.strategy

    def _ordered(self, group: str, outcome: Outcome, now: float, decision: RuleDecision | None = None) -> deque[Target]:
        """The group's deployments in strategy order; with tracing on, the order's reasons go on the trail."""
        strategy = self.strategy
        if decision is not None or self.group_strategies:
            strategy = self.strategy_for(group, decision)
        if self.observer is None or not self.observer.recording():
            return deque(order(strategy, self.targets[group], self.rng, now))
        ranking = ranked(strategy, self.targets[group], self.rng, now)
        outcome.trail.append(Ranking(group, strategy, tuple([
            (t.deployment.id, tier, unhealthy, score) for t, tier, unhealthy, score in ranking])))
        return deque([r[0] for r in ranking])

    def _eligible(self, candidates: deque[Target], walk: Walk) -> deque[Target]:
        """The candidates the request's rule and the capability check allow; the others are skipped with the
        reason (``rule:<name>`` or the missing capability) — before any call, and for every group walked."""
        decision, need, kept = walk.decision, walk.needs, deque()
        refused = walk.refused = walk.refused or []
        for target in candidates:
            if decision is not None and decision.restricted and not decision.allows(target.deployment):
                reason = f"rule:{decision.rule}"
            else:
                reason = capability_skip(target.deployment, need) if need is not None else None
            if reason is None:
                kept.append(target)
            else:
                refused.append(reason)
                self._skip(target, walk.outcome, reason)
        walk.eligible += len(kept)
        return kept

    def _stick(self, group: str, candidates: deque[Target], walk: Walk) -> None:
        """Session affinity: the session's deployment first, when it is a candidate and its breaker admits calls
        (else the strategy's order stands, and whoever answers becomes the session's deployment)."""
        assert self.affinity is not None and walk.session is not None
        now = self.clock()
        remembered = self.affinity.get(group, walk.session, now)
        if remembered is None or candidates[0].deployment.id == remembered:
            return
        for target in candidates:
            if target.deployment.id == remembered:
                if target.breaker.ready_at(now) <= now:
                    candidates.remove(target)
                    candidates.appendleft(target)
                    walk.outcome.trail.append(Sticky(remembered, group))
                return

    def _admit(self, target: Target, walk: Walk) -> bool:
        return self._skip_reason(target, walk, self.clock()) is None

    def _skip_reason(self, target: Target, walk: Walk, now: float) -> str | None:
        """None when ``target`` may be tried now; else why not (also recorded on the trail)."""
        outcome = walk.outcome
        limit = target.deployment.model_info.max_input_tokens
        if (limit is not None and walk.needed > limit) or (walk.too_long and model_of(target) in walk.too_long):
            return self._skip(target, outcome, "context_window")
        if target.pool is not None:  # a shared SGLang pool with no replica free: spill over, never queue
            spill = target.pool.spill_reason()
            if spill is not None:
                return self._skip(target, outcome, spill)
        allowed, transition = target.breaker.admit(now)
        self._note(transition, outcome)
        if not allowed:
            return self._skip(target, outcome, "rate_limit_cooldown" if target.rate_limited else "breaker_open")
        estimate = outcome.estimate
        if target.quota is not None:  # the upstream's own remaining quota, from its rate-limit headers
            spent = target.quota.admit(estimate[1] if estimate is not None else None, now)
            if spent is not None:
                target.breaker.release_probe()
                return self._skip(target, outcome, spent)
        if target.rpm is not None and target.rpm.take(1, now) > 0:
            target.breaker.release_probe()
            return self._skip(target, outcome, "rpm_limit")
        if target.tpm is not None and estimate is not None and target.tpm.take(estimate[1], now) > 0:
            target.breaker.release_probe()
            return self._skip(target, outcome, "tpm_limit")
        return None

    @staticmethod
    def _skip(target: Target, outcome: Outcome, reason: str) -> str:
        outcome.trail.append(Skip(target.deployment.id, reason))
        return reason

    def _passed_over(self, target: Target, group: str, reason: str, walk: Walk) -> None:
        limited = target.rate_limited or reason in RATE_LIMIT_SKIPS
        walk.count(limited)
        if reason == "breaker_open" and not self.breaker_settings.refuses(group):
            walk.opened.append((target, group))

    def _has_alternative(self, others: deque[Target], now: float) -> bool:
        """May another deployment of the same group be tried now? (Fallback groups do not count: the retry
        budget is spent inside the group first, see ``policy.retry``.)"""
        return any(t.breaker.ready_at(now) <= now for t in others)

    async def _attempts(self, target: Target, group: str, walk: Walk, others: deque[Target], *,
                        panic: bool = False) -> object:
        """Attempts on one deployment: the first, then retries while the policy says so. ``others``: the
        group's candidates still to try. A ``panic`` send went past the breaker, and so do its retries (it
        is the request's last candidate); it never releases a probe some other request holds."""
        outcome, retries = walk.outcome, 0
        CURRENT_OUTCOME.set(outcome)  # for the handler's metrics and log line, even if routing raises
        while True:
            outcome.attempts += 1
            outcome.trail.append(Attempt(target.deployment.id, group, outcome.attempts, retries))
            started = self.clock()
            load = outcome.estimate[1] if outcome.estimate is not None else 0  # tokens in flight (least-tokens)
            target.stats.started(started, load)
            span = self.observer.attempt(target.deployment, outcome, retries) if self.observer else None
            try:
                if target.pool is None:
                    result = await walk.attempt(target, walk.deadline)
                else:
                    result = await target.pool.attempt(walk.attempt(target, walk.deadline), outcome.trail,
                                                       lambda r: getattr(r, "usage", None) or outcome.usage,
                                                       walk.request)
            except UpstreamError as error:
                if span is not None:
                    span.failed(error)
                now = self.clock()
                target.stats.finished(now, now - started, not error.counts_as_failure, None, load)
                self._record_failure(target, error, outcome, now, panic)
                decision = self.retry_policy.decide(error, retries, now, walk.deadline, self.rng,
                                                    has_alternative=self._has_alternative(others, now),
                                                    # a pool's retry goes to another replica
                                                    bytes_received=error.committed and target.pool is None)
                outcome.trail.append(decision)
                if isinstance(decision, GiveUp):
                    raise GiveUpError(error) from None
                if not isinstance(decision, Retry):
                    return FAILED
                await asyncio.sleep(decision.delay)
                if not (panic or self._admit(target, walk)):
                    return FAILED
                retries += 1
                continue
            except BaseException as error:
                if span is not None:
                    span.failed(error)
                target.stats.finished(self.clock(), self.clock() - started, True, None, load)
                if not panic:
                    target.breaker.release_probe()
                raise
            if span is not None:
                span.succeeded(result, outcome)
            now = self.clock()
            target.stats.finished(now, now - started, True, outcome.ttft, load)
            self._count_tokens(target, getattr(result, "usage", None) or outcome.usage, outcome.estimate, now)
            target.rate_limited = False
            self._note(target.breaker.record_success(now), outcome)
            outcome.deployment = target.deployment.id
            if walk.session is not None:
                self.affinity.put(group, walk.session, target.deployment.id, now)  # type: ignore[union-attr]
            return result

    @staticmethod
    def _count_tokens(target: Target, usage: Usage | None, estimate: tuple[int, int] | None, now: float) -> None:
        """Feed usage-based routing, and settle the tpm bucket: it was charged the estimate up front."""
        if usage is None and estimate is None:
            return
        used = usage.total_tokens if usage is not None else estimate[1]  # type: ignore[index]
        target.stats.add_tokens(used, now)
        if target.tpm is not None and estimate is not None:
            target.tpm.consume(used - estimate[1], now)

    def _record_failure(self, target: Target, error: UpstreamError, outcome: Outcome, now: float,
                        panic: bool) -> None:
        outcome.errors.append(error.error_class)
        outcome.failures.append((target.deployment.id, error.error_class, error.cause_label))
        if not error.counts_as_failure:
            if not panic:
                target.breaker.release_probe()
            return
        pause = None  # the upstream's own Retry-After, honoured up to the cap (a cap of 0: never)
        if isinstance(error, RateLimited) and error.retry_after:
            pause = min(error.retry_after, self.retry_after_cap) or None
        self._note(target.breaker.record_failure(now, reopen_after=pause), outcome)
        if pause is not None:
            target.rate_limited = True
            self._note(target.breaker.cool_down(now, pause), outcome)

    def _note(self, transition: Transition | None, outcome: Outcome) -> None:
        if transition is not None:
            outcome.trail.append(transition)
            log.warning("breaker %s: %s -> %s (%s)", transition.deployment, transition.old.value,
                        transition.new.value, transition.reason)

    def _after_rejection(self, error: UpstreamError, group: str, target: Target | None, walk: Walk) -> deque[str]:
        """The groups a request goes to after ``group`` rejected it (``plan.rejection_fallbacks``); raises
        ``error`` — the first context-window rejection, for that cause — when there are none. A context-window
        rejection also rules out the model that gave it, and every window not larger than that model's."""
        if isinstance(error, ContextWindowExceeded):
            walk.rejected = error = walk.rejected or error
            if target is not None:
                walk.too_long = (walk.too_long or frozenset()) | {model_of(target)}
                limit = target.deployment.model_info.max_input_tokens
                walk.needed = max(walk.needed, limit + 1 if limit else 0)
        groups = rejection_fallbacks(group, self.config.router, error.error_class, walk.tried,
                                     windows=self.windows, needed=walk.needed)
        if not groups:
            raise error
        return deque(groups)

    def _exhausted(self, group: str, walk: Walk) -> SidecarError:
        if walk.refused and not walk.eligible:
            return self._refused(group, walk)
        now = self.clock()
        if now >= walk.deadline:
            return DeadlineExceeded("the request ran out of time before an upstream answered")
        if walk.limited > 0 and walk.unlimited == 0:
            soonest = min(t.breaker.ready_at(now) for g in self.plans[group] for t in self.targets[g])
            return AllRateLimited("every upstream for this model is rate limited; retry later",
                                  retry_after=max(1.0, soonest - now))
        if walk.decision is not None and walk.decision.restricted:
            return NoHealthyUpstream(f"no upstream that request rule '{walk.decision.rule}' allows could answer "
                                     "the request; try again later")
        return NoHealthyUpstream("no upstream could answer the request; try again later")

    @staticmethod
    def _refused(group: str, walk: Walk) -> SidecarError:
        """Every candidate was ruled out before a call: by the request's rule (403), or for capabilities the
        request needs that no deployment has (400)."""
        decision, refused = walk.decision, walk.refused or []
        if decision is not None and f"rule:{decision.rule}" in refused:
            return RuleRefused(f"request rule '{decision.rule}' ({decision.describe()}) allows no deployment of "
                               f"model group '{group}' or its fallbacks")
        missing = ", ".join(sorted(set(refused)))
        return InvalidRequest(f"no deployment of model group '{group}' can serve this request ({missing})")

    # ---- one non-streaming call -----------------------------------------------------------------

    async def _call(self, target: Target, request: ChatRequest, deadline: float, outcome: Outcome) -> ChatResponse:
        adapter = target.adapter
        limit = target.deployment.timeout
        attempt_deadline = min(deadline, self.clock() + limit) if limit else deadline
        call = adapter.prepare(request)
        if call.dropped:  # drop_params removed what this provider cannot take: on the trace and the log line
            outcome.dropped = call.dropped
        answer = await http.send(self.session, call, attempt_deadline)
        if answer.status != 200:
            raise adapter.classify_error(answer.status, answer.headers, answer.body)
        fields = answer.quota_fields()  # a 429 is the breaker's (Retry-After); a success says what is left
        if fields is not None:
            self.observe_quota(target, fields)
        try:
            return adapter.read_response(request, answer.body)
        except UpstreamError:
            raise
        except Exception as error:  # the reader choked on what the upstream sent: a broken answer, failed over
            raise unreadable(error, "an answer") from None

    def observe_quota(self, target: Target, fields: Mapping[str, str]) -> None:
        """An answer's rate-limit headers set the deployment's upstream quota (``policy.quota``)."""
        requests, budget = readings(fields, time.time(), self.retry_after_cap)
        if requests is None and budget is None:
            return
        if target.quota is None:
            target.quota = Quota()
            self.quotas = True
        target.quota.observe(requests, budget, self.clock())

    def ttft_limit(self, deployment: Deployment) -> float:
        """Time allowed to the first token of a stream: the deployment's, the router's, or a third of
        the whole-request timeout (capped at 60 s) — well under ``timeout`` so there is time to fail over."""
        limit = deployment.stream_timeout or self.config.router.stream_timeout
        if limit is None:
            limit = min(60.0, (deployment.timeout or self.timeout) / 3)
        return limit

    def idle_limit(self, deployment: Deployment) -> float:
        """The longest silence allowed inside a stream: ``stream_idle_timeout``, else a third of the request's
        timeout (at most 30 s), so a stalled stream is cut while there is still time to continue it."""
        limit = self.config.sidecar.stream_idle_timeout
        return limit if limit is not None else min(30.0, (deployment.timeout or self.timeout) / 3)


class GiveUpError(Exception):
    """Internal: the policy said to pass ``error`` to the app (unless the plan has a fallback for it)."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error
