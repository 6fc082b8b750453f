"""Cascade: a model group's answer is accepted only when its checks pass, else the request escalates to the next
group (``sidecar_settings.cascade``; the checks are ``policy.cascade``). Each step is a whole routed request —
retries, fallbacks, rules and affinity as usual — and the app gets the first answer that passes, or the last
group's whatever it is. The answering step's outcome carries the steps before it: their trail (with a
``CascadeStep`` naming why each was not accepted), their attempts, and the cost they ran up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from sidecar.config import CascadeSettings, ModelInfo
from sidecar.core.cost import request_cost
from sidecar.core.errors import DeadlineExceeded, SidecarError
from sidecar.core.types import ChatRequest, ChatResponse
from sidecar.policy.cascade import CascadeStep, Checks
from sidecar.policy.rules import RuleDecision
from sidecar.routing.outcome import Outcome
from sidecar.routing.router import Router
from sidecar.telemetry.record import CURRENT_OUTCOME

TRANSPORT_FIELDS = ("stream", "stream_options")


def whole(chat: ChatRequest) -> ChatRequest:
    """A streamed request asked as a whole one (a buffered cascade streams the accepted answer afterwards)."""
    body = {k: v for k, v in chat.body.items() if k not in TRANSPORT_FIELDS}
    return dataclasses.replace(chat, body=body, stream=False, include_usage=False)


async def complete(router: Router, chat: ChatRequest, first: str, settings: CascadeSettings, checks: Checks,
                   decision: RuleDecision | None, session: str | None,
                   prices: Mapping[str, ModelInfo]) -> tuple[ChatResponse, Outcome, float]:
    """(the accepted answer, its outcome with the earlier steps folded in, the earlier steps' cost in USD)."""
    steps = (first, *settings.escalate)
    if decision is not None and decision.group is not None:  # the rule chose ``first``; the steps choose after it
        decision = dataclasses.replace(decision, group=None)
    trail: list[object] = []
    attempts, cost = 0, 0.0
    deadline = router.clock() + router.timeout  # one request, one timeout: the steps share it
    for i, group in enumerate(steps):
        request = dataclasses.replace(chat, model=group)
        last = i == len(steps) - 1
        try:
            response, outcome = await router.complete(request, decision, session, deadline=deadline)
        except SidecarError as error:
            tried = CURRENT_OUTCOME.get()
            if last or isinstance(error, DeadlineExceeded):  # out of time: no step after it would have any
                if isinstance(tried, Outcome):
                    _fold(tried, first, trail, attempts)
                raise
            if isinstance(tried, Outcome) and tried.group == group:
                trail += tried.trail
                attempts += tried.attempts
            trail.append(CascadeStep(group, None, f"error:{error.error_class}"))
            continue
        reason = "catch_all" if outcome.catch_all is not None else checks.verdict(chat.body, response.data)
        if reason is None or last:
            if reason is not None:  # the last group's answer is the app's, checked or not: the trace says so
                outcome.trail.append(CascadeStep(group, outcome.deployment, f"{reason} (last group: answered)"))
            _fold(outcome, first, trail, attempts)
            return response, outcome, cost
        trail += [*outcome.trail, CascadeStep(group, outcome.deployment, reason)]
        attempts += outcome.attempts
        cost += request_cost(outcome.usage, prices.get(outcome.deployment or "")) or 0.0
    raise AssertionError("unreachable: the last step returns or raises")


def _fold(outcome: Outcome, first: str, trail: list[object], attempts: int) -> None:
    outcome.trail[:0] = trail
    outcome.attempts += attempts
    if outcome.answered_group is None:
        outcome.answered_group = outcome.group
    outcome.group = first  # x-sidecar-fallback then names the group that answered, when it escalated
