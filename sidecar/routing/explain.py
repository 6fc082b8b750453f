"""What the router would do with a request now, without calling anyone: the answer of ``POST /debug/route``.

The same pieces as a real request — the rule's decision, the plan (the group and its fallbacks), each group's
strategy order from a copy of the router's random generator (so a simple-shuffle order is the one the next
request gets, if none comes between), and each candidate's skip reason — read without changing any state: no
breaker probe is taken, no rpm/tpm token spent, the router's generator not advanced.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from sidecar.core import tokens
from sidecar.core.types import ChatRequest
from sidecar.policy.rules import Needs, RuleDecision, capability_skip, needs
from sidecar.policy.strategies import ranked
from sidecar.routing.outcome import Target

if TYPE_CHECKING:
    from sidecar.routing.router import Router


def explain(router: Router, request: ChatRequest, decision: RuleDecision | None,
            session: str | None = None) -> dict[str, Any]:
    """The decision as a JSON-ready value: rule, plan, every group's candidates in order with score and
    skip reason, and the deployment the first attempt would go to (None: nothing eligible now). ``session``:
    the request's session key, when affinity is on."""
    now = router.clock()
    name = request.model if decision is None or decision.group is None else decision.group
    group = name if name in router.targets else router.names.resolve(name)
    rng = random.Random()
    rng.setstate(router.rng.getstate())
    estimate = (tokens.prompt_tokens(request), tokens.total_tokens(request)) if router.estimates or router.quotas \
        else None
    need = needs(request) if router.capabilities else None
    groups, choice = [], None
    for step in router.plans[group]:
        strategy = router.strategy_for(step, decision)
        targets = router.targets[step]
        # a single candidate is not ranked by a real request: it draws nothing from the generator
        ranking = ranked(strategy, targets, rng if len(targets) > 1 else random.Random(0), now)
        sticky = _sticky(router, step, session, now)
        if sticky is not None:  # the session's deployment first, as Router._stick puts it (when eligible)
            ranking.sort(key=lambda r: r[0].deployment.id != sticky or skip_reason(
                router, r[0], decision, need, estimate, now) is not None)
        candidates = []
        for target, tier, failing, score in ranking:
            reason = skip_reason(router, target, decision, need, estimate, now)
            if reason is None and choice is None:
                choice = target.deployment.id
            candidates.append({"deployment": target.deployment.id, "order": None if math.isinf(tier) else tier,
                               "failing": failing, "score": None if math.isinf(score) else score,
                               "eligible": reason is None, "skipped": reason,
                               "session": target.deployment.id == sticky})
        groups.append({"group": step, "strategy": strategy, "hedging": step in router.hedging,
                       "candidates": candidates})
    rule = None if decision is None else {
        "name": decision.rule, "group": decision.group, "require_tags": sorted(decision.require),
        "exclude_tags": sorted(decision.exclude), "strategy": decision.strategy}
    return {"model": request.model, "group": group, "rule": rule, "plan": list(router.plans[group]),
            "estimated_input_tokens": None if estimate is None else estimate[0], "groups": groups,
            "choice": choice}


def _sticky(router: Router, group: str, session: str | None, now: float) -> str | None:
    if session is None or router.affinity is None or (router.affinity_groups and group not in router.affinity_groups):
        return None
    return router.affinity.get(group, session, now)


def skip_reason(router: Router, target: Target, decision: RuleDecision | None, need: Needs | None,
                estimate: tuple[int, int] | None, now: float) -> str | None:
    """Why a real request would pass ``target`` over now (the reasons ``Router`` records), read-only."""
    deployment = target.deployment
    if decision is not None and not decision.allows(deployment):
        return f"rule:{decision.rule}"
    if need is not None:
        missing = capability_skip(deployment, need)
        if missing is not None:
            return missing
    limit = deployment.model_info.max_input_tokens
    if limit is not None and estimate is not None and estimate[0] > limit:
        return "context_window"
    if target.breaker.ready_at(now) > now:
        return "rate_limit_cooldown" if target.rate_limited else "breaker_open"
    if target.quota is not None:
        spent = target.quota.ready(estimate[1] if estimate is not None else None, now)
        if spent is not None:
            return spent
    if target.rpm is not None and target.rpm.available(now) < 1:
        return "rpm_limit"
    if target.tpm is not None and estimate is not None and target.tpm.available(now) < min(estimate[1],
                                                                                           target.tpm.burst):
        return "tpm_limit"
    return None
