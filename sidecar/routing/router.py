"""The one place policy meets I/O: one request's attempts, from plan to answer.

For each request: ``policy.plan`` gives the model group and its fallbacks; ``policy.strategies`` orders a
group's deployments; each deployment's ``CircuitBreaker`` admits or skips it; an attempt goes through the
adapter and ``providers.http`` under one shrinking deadline; its failure is classified (``core.errors``)
and ``RetryPolicy.decide`` says retry, fail over or give up. Every decision is appended to
``Outcome.trail`` as a value, so telemetry can put it on the trace.

A stream may move to another deployment freely before ``StreamSink.start`` — the commit point. After it, a
failure continues the answer on the next candidate (prefill or splice, see ``formats.continuation``) or
ends the stream with an explicit error; it never ends like a success.
"""

from __future__ import annotations

import asyncio
import logging
import random
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
    NoHealthyUpstream,
    RateLimited,
    SidecarError,
    UnknownModel,
    UpstreamError,
)
from sidecar.core.types import ChatRequest, ChatResponse, Usage
from sidecar.policy.breaker import CircuitBreaker, Transition
from sidecar.policy.limits import TokenBucket
from sidecar.policy.plan import Attempt, FallbackStep, Ranking, Skip, fallback_table, groups_to_try
from sidecar.policy.retry import GiveUp, Retry, RetryPolicy
from sidecar.policy.stats import DeploymentStats
from sidecar.policy.strategies import order, ranked
from sidecar.providers import bind, http
from sidecar.routing.catch_all import CatchAllStore
from sidecar.routing.outcome import Outcome, RaceState, StreamSink, Target
from sidecar.routing.streaming import StreamAttempt, StreamLimits
from sidecar.telemetry.record import CURRENT_OUTCOME

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Tracing

log = logging.getLogger("sidecar.router")
T = TypeVar("T")
PREFILL_PROVIDERS = frozenset({"anthropic", "sglang", "hosted_vllm", "ollama"})


class Router:
    def __init__(self, config: Config, session: aiohttp.ClientSession, *,
                 rng: random.Random | None = None, clock: Callable[[], float] | None = None,
                 observer: Tracing | None = None) -> None:
        settings = config.router
        self.config = config
        self.observer = observer  # CLIENT span per attempt when tracing is on; None costs nothing
        self.session = session
        self.rng = rng or random.Random()
        self.clock = clock or asyncio.get_running_loop().time
        self.timeout = settings.timeout
        self.strategy = settings.routing_strategy
        self.retry_policy = RetryPolicy.from_settings(settings, config.sidecar.retry_after_cap_seconds)
        self.retry_after_cap = config.sidecar.retry_after_cap_seconds
        self.stream_limits = StreamLimits(session, self.clock, self.ttft_limit, config.sidecar.stream_idle_timeout)
        self.catch_all = CatchAllStore(config.sidecar.catch_all)
        self.targets: Mapping[str, tuple[Target, ...]] = {
            name: tuple(self._target(d) for d in group.deployments) for name, group in config.groups.items()
        }
        self.plans = {name: groups_to_try(name, settings) for name in config.groups}
        self.hedging = config.sidecar.hedging
        # Token estimates cost a walk over the messages: only when some deployment has a tpm limit or a
        # context window to check, or usage-based routing needs them.
        self.estimates = settings.routing_strategy == "usage-based-routing" or any(
            d.tpm or d.model_info.max_input_tokens for d in config.deployments)

    def _target(self, deployment: Deployment) -> Target:
        settings = self.config.router
        prefill = deployment.supports_prefill
        return Target(
            deployment=deployment,
            adapter=bind(deployment),
            breaker=CircuitBreaker(deployment.id, settings.allowed_fails, settings.cooldown_time),
            stats=DeploymentStats(),
            rpm=TokenBucket(deployment.rpm) if deployment.rpm else None,
            tpm=TokenBucket(deployment.tpm) if deployment.tpm else None,
            accepts_prefill=deployment.provider in PREFILL_PROVIDERS if prefill is None else prefill,
        )

    # ---- read-only views ------------------------------------------------------------------------

    def has_group(self, name: str) -> bool:
        return name in self.targets

    def all_targets(self) -> list[Target]:
        return [t for targets in self.targets.values() for t in targets]

    def unavailable_groups(self) -> list[str]:
        """Model groups none of whose deployments (nor fallbacks) can be tried now (for /readyz)."""
        now = self.clock()
        return [name for name, plan in self.plans.items()
                if not any(t.breaker.ready_at(now) <= now for g in plan for t in self.targets[g])]

    def refresh_credentials(self) -> None:
        for target in self.all_targets():
            key = target.deployment.api_key
            if key is not None and key.refresh():
                target.adapter.refresh_credentials()

    # ---- entry points ---------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> tuple[ChatResponse, Outcome]:
        """A whole answer, from the first deployment that gives one (or the catch-all)."""
        outcome = self._outcome(request)

        async def attempt(target: Target, deadline: float) -> ChatResponse:
            return await self._call(target, request, deadline)

        try:
            response = await self._route(request, outcome, attempt)
        except (NoHealthyUpstream, AllRateLimited, DeadlineExceeded) as error:
            fallback = self.catch_all.response(request)
            if fallback is None:
                raise
            outcome.catch_all, outcome.deployment = fallback[1], "catch-all"
            log.warning("every upstream failed (%s); answered from the catch-all", error.error_class)
            return fallback[0], outcome
        outcome.usage = response.usage
        self.catch_all.remember(request, response)
        return response, outcome

    async def stream(self, request: ChatRequest, sink: StreamSink) -> Outcome:
        """Stream an answer into ``sink``. Errors before the commit point are raised; after it, in-band."""
        outcome = self._outcome(request)
        stream = StreamAttempt(self.stream_limits, request, sink, outcome)
        try:
            await self._route(request, outcome, stream.run, stream)
        except SidecarError as error:
            if sink.started:
                outcome.failed = True
                await sink.fail(error)
                return outcome
            if isinstance(error, NoHealthyUpstream | AllRateLimited | DeadlineExceeded):
                fallback = self.catch_all.response(request)
                if fallback is not None:
                    outcome.catch_all, outcome.deployment = fallback[1], "catch-all"
                    await stream.replay(fallback[0])
                    return outcome
            raise
        self.catch_all.remember_text(request, stream.progress)
        return outcome

    def _outcome(self, request: ChatRequest) -> Outcome:
        if request.model not in self.targets:
            raise UnknownModel(f"the model '{request.model}' does not exist", param="model")
        return Outcome(request.model)

    # ---- the attempt loop -----------------------------------------------------------------------

    async def _route(self, request: ChatRequest, outcome: Outcome,
                     attempt: Callable[[Target, float], Awaitable[T]], race: RaceState | None = None) -> T:
        deadline = self.clock() + self.timeout
        if self.estimates:
            outcome.estimate = (tokens.prompt_tokens(request), tokens.total_tokens(request))
        pending = deque(self.plans[request.model])
        tried: set[str] = set()
        previous: str | None = None
        limited = unlimited = 0  # candidates that were rate limited (or cooling down from it), and others
        while pending:
            group = pending.popleft()
            tried.add(group)
            if previous is not None:
                outcome.trail.append(FallbackStep(previous, group, outcome.errors[-1] if outcome.errors else "skipped"))
            previous = group
            now = self.clock()
            candidates = self._ordered(group, outcome, now)
            hedge = self.hedging.get(group)
            too_long = 0  # candidates whose context window the prompt does not fit
            while candidates:
                target = candidates.popleft()
                skipped = self._skip_reason(target, outcome, self.clock())
                if skipped is not None:
                    too_long += skipped == "context_window"
                    is_limited = target.rate_limited or skipped in ("rpm_limit", "tpm_limit")
                    limited, unlimited = limited + is_limited, unlimited + (not is_limited)
                    continue
                has_alternative = bool(candidates) or bool(pending)
                try:
                    if hedge is not None and candidates:
                        result = await self._race(target, candidates, group, outcome, deadline, attempt, race)
                    else:
                        result = await self._attempts(target, group, outcome, deadline, attempt, has_alternative)
                except GiveUpError as give_up:
                    extra = self._fallbacks_for(give_up.error, group, tried)
                    if not extra:
                        raise give_up.error from None
                    pending = deque(extra)
                    break
                if result is not _FAILED:
                    outcome.answered_group = group
                    return result  # type: ignore[return-value]
                was_limited = bool(outcome.errors) and outcome.errors[-1] == "rate_limited"
                limited, unlimited = limited + was_limited, unlimited + (not was_limited)
                if self.clock() >= deadline:
                    pending.clear()
                    break
            else:
                if too_long and too_long == len(self.targets[group]):
                    error = ContextWindowExceeded("the prompt is longer than every deployment's context window "
                                                  f"for '{group}'", param="messages")
                    pending = deque(self._fallbacks_for(error, group, tried))
                    if not pending:
                        raise error
        raise self._exhausted(request.model, deadline, limited > 0 and unlimited == 0)

    def _ordered(self, group: str, outcome: Outcome, now: float) -> deque[Target]:
        """The group's deployments in strategy order; with tracing on, the order's reasons go on the trail."""
        if self.observer is None or not self.observer.recording():
            return deque(order(self.strategy, self.targets[group], self.rng, now))
        ranking = ranked(self.strategy, self.targets[group], self.rng, now)
        outcome.trail.append(Ranking(group, self.strategy, tuple([
            (t.deployment.id, tier, unhealthy, score) for t, tier, unhealthy, score in ranking])))
        return deque([r[0] for r in ranking])

    def _admit(self, target: Target, outcome: Outcome, now: float) -> bool:
        return self._skip_reason(target, outcome, now) is None

    def _skip_reason(self, target: Target, outcome: Outcome, now: float) -> str | None:
        """None when ``target`` may be tried now; else why not (also recorded on the trail)."""
        estimate = outcome.estimate
        limit = target.deployment.model_info.max_input_tokens
        if estimate is not None and limit is not None and estimate[0] > limit:
            return self._skip(target, outcome, "context_window")
        allowed, transition = target.breaker.admit(now)
        self._note(transition, outcome)
        if not allowed:
            return self._skip(target, outcome, "rate_limit_cooldown" if target.rate_limited else "breaker_open")
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

    async def _attempts(self, target: Target, group: str, outcome: Outcome, deadline: float,
                        attempt: Callable[[Target, float], Awaitable[T]], has_alternative: bool) -> T | object:
        """Attempts on one deployment: the first, then retries while the policy says so."""
        retries = 0
        CURRENT_OUTCOME.set(outcome)  # for the handler's metrics and log line, even if routing raises
        while True:
            outcome.attempts += 1
            outcome.trail.append(Attempt(target.deployment.id, group, outcome.attempts, retries))
            started = self.clock()
            target.stats.started(started)
            span = self.observer.attempt(target.deployment, outcome, retries) if self.observer else None
            try:
                result = await attempt(target, deadline)
            except UpstreamError as error:
                if span is not None:
                    span.failed(error)
                now = self.clock()
                target.stats.finished(now, now - started, ok=not error.counts_as_failure)
                self._record_failure(target, error, outcome, now)
                decision = self.retry_policy.decide(error, retries, now, deadline, self.rng,
                                                    has_alternative=has_alternative,
                                                    bytes_received=error.committed)
                outcome.trail.append(decision)
                if isinstance(decision, GiveUp):
                    raise GiveUpError(error) from None
                if not isinstance(decision, Retry):
                    return _FAILED
                await asyncio.sleep(decision.delay)
                if not self._admit(target, outcome, self.clock()):
                    return _FAILED
                retries += 1
                continue
            except BaseException as error:
                if span is not None:
                    span.failed(error)
                target.stats.finished(self.clock(), self.clock() - started, ok=True)
                target.breaker.release_probe()
                raise
            if span is not None:
                span.succeeded(result, outcome)
            now = self.clock()
            target.stats.finished(now, now - started, ok=True, ttft=outcome.ttft)
            self._count_tokens(target, getattr(result, "usage", None) or outcome.usage, outcome.estimate, now)
            target.rate_limited = False
            self._note(target.breaker.record_success(now), outcome)
            outcome.deployment = target.deployment.id
            return result

    async def _race(self, first: Target, candidates: deque[Target], group: str, outcome: Outcome, deadline: float,
                    attempt: Callable[[Target, float], Awaitable[T]], race: RaceState | None) -> T | object:
        """Hedging: if ``first`` has not answered (or, for a stream, sent its first token) after the group's
        hedge delay, start the next admitted candidate too; the first good answer wins, the other is
        cancelled — which closes its upstream connection."""
        tasks = {asyncio.create_task(self._attempts(first, group, outcome, deadline, attempt, True)): first}
        committed = asyncio.create_task(race.committed.wait()) if race is not None else None
        try:
            done, _ = await asyncio.wait([*tasks, *([committed] if committed else [])],
                                         timeout=self._hedge_delay(group, first))
            if not done:
                while candidates and not self._admit(candidates[0], outcome, self.clock()):
                    candidates.popleft()
                if candidates:
                    second = candidates.popleft()
                    outcome.trail.append(Skip(second.deployment.id, "hedge_started"))
                    tasks[asyncio.create_task(self._attempts(second, group, outcome, deadline, attempt,
                                                             bool(candidates)))] = second
            return await self._first_good(tasks, committed, race)
        finally:
            for task in [*tasks, *([committed] if committed else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *([committed] if committed else []), return_exceptions=True)

    async def _first_good(self, tasks: dict[asyncio.Task[T | object], Target], committed: asyncio.Task[bool] | None,
                          race: RaceState | None) -> T | object:
        waiting: set[asyncio.Future[object]] = {*tasks, *([committed] if committed else [])}
        while waiting - {committed}:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is committed:  # a stream claimed the app: cancel the attempts that did not
                    assert race is not None
                    for other, target in tasks.items():
                        if target is not race.owner:
                            other.cancel()
                    continue
                if task.cancelled():
                    continue
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                if task.result() is not _FAILED:
                    return task.result()
        return _FAILED

    def _hedge_delay(self, group: str, target: Target) -> float:
        hedge = self.hedging[group]
        if hedge.after is not None:
            return hedge.after
        return target.stats.p95_ttft or hedge.fallback_after

    @staticmethod
    def _count_tokens(target: Target, usage: Usage | None, estimate: tuple[int, int] | None, now: float) -> None:
        """Feed usage-based routing, and settle the tpm bucket: it was charged the estimate up front."""
        if usage is None and estimate is None:
            return
        used = usage.total_tokens if usage is not None else estimate[1]  # type: ignore[index]
        target.stats.add_tokens(used, now)
        if target.tpm is not None and estimate is not None:
            target.tpm.consume(used - estimate[1], now)

    def _record_failure(self, target: Target, error: UpstreamError, outcome: Outcome, now: float) -> None:
        outcome.errors.append(error.error_class)
        if not error.counts_as_failure:
            target.breaker.release_probe()
            return
        self._note(target.breaker.record_failure(now), outcome)
        if isinstance(error, RateLimited) and error.retry_after:
            target.rate_limited = True
            self._note(target.breaker.cool_down(now, min(error.retry_after, self.retry_after_cap)), outcome)

    def _note(self, transition: Transition | None, outcome: Outcome) -> None:
        if transition is not None:
            outcome.trail.append(transition)
            log.warning("breaker %s: %s -> %s (%s)", transition.deployment, transition.old.value,
                        transition.new.value, transition.reason)

    def _fallbacks_for(self, error: UpstreamError, group: str, tried: set[str]) -> list[str]:
        """Groups configured for a context-window or content-policy rejection, not yet tried."""
        if error.error_class not in ("context_window_exceeded", "content_policy"):
            return []
        table = fallback_table(self.config.router, error.error_class)
        if group not in table:
            return []
        return [g for g in groups_to_try(group, self.config.router, error.error_class)[1:] if g not in tried]

    def _exhausted(self, group: str, deadline: float, only_rate_limited: bool) -> SidecarError:
        now = self.clock()
        if now >= deadline:
            return DeadlineExceeded("the request ran out of time before an upstream answered")
        if only_rate_limited:
            soonest = min(t.breaker.ready_at(now) for g in self.plans[group] for t in self.targets[g])
            return AllRateLimited("every upstream for this model is rate limited; retry later",
                                  retry_after=max(1.0, soonest - now))
        return NoHealthyUpstream("no upstream could answer the request; try again later")

    # ---- one non-streaming call -----------------------------------------------------------------

    async def _call(self, target: Target, request: ChatRequest, deadline: float) -> ChatResponse:
        adapter = target.adapter
        limit = target.deployment.timeout
        attempt_deadline = min(deadline, self.clock() + limit) if limit else deadline
        answer = await http.send(self.session, adapter.prepare(request), attempt_deadline)
        if answer.status != 200:
            raise adapter.classify_error(answer.status, answer.headers, answer.body)
        return adapter.read_response(request, answer.body)

    def ttft_limit(self, deployment: Deployment) -> float:
        """Time allowed to the first token of a stream: the deployment's, the router's, or a third of
        the whole-request timeout (capped at 60 s) — well under ``timeout`` so there is time to fail over."""
        limit = deployment.stream_timeout or self.config.router.stream_timeout
        if limit is None:
            limit = min(60.0, (deployment.timeout or self.timeout) / 3)
        return limit


class GiveUpError(Exception):
    """Internal: the policy said to pass ``error`` to the app (unless the plan has a fallback for it)."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


_FAILED = object()  # sentinel: this deployment is done for this request; move on

