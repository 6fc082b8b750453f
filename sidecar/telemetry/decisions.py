"""The router's trail of decisions as the ``route`` span's attributes and events (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.policy.affinity import Sticky
from sidecar.policy.breaker import Transition
from sidecar.policy.cascade import CascadeStep
from sidecar.policy.intent import IntentChoice
from sidecar.policy.plan import Attempt, FallbackStep, Panic, Ranking, Skip
from sidecar.policy.retry import Failover, GiveUp, Retry
from sidecar.policy.ring import SPILL_REASONS, ReplicaChoice
from sidecar.policy.rules import RuleDecision

if TYPE_CHECKING:
    from sidecar.routing.outcome import Outcome


def route_span(outcome: Outcome) -> tuple[tuple[tuple[str, Any], ...], list[str], list[list[str]]]:
    """The route span's attributes: those that recur (candidates in strategy order, skips, fallbacks, retries,
    the choice; None for absent ones) and the candidates' scores, which vary; and each Ranking's scores in
    trail order (its event shows them again)."""
    candidates: list[str] = []
    scores: list[str] = []
    skipped: list[str] = []
    fallbacks: list[str] = []
    cascade: list[str] = []
    intent: str | None = None
    rankings = []
    retries = 0
    replica: str | None = None
    spill: list[str] = []
    for item in outcome.trail:
        if isinstance(item, Ranking):
            ranked = [_score(*c) for c in item.candidates]
            rankings.append(ranked)
            scores += ranked
            candidates += [c[0] for c in item.candidates if c[0] not in candidates]
        elif isinstance(item, Attempt):
            if item.deployment not in candidates:
                candidates.append(item.deployment)
            retries += item.retry > 0
        elif isinstance(item, Skip):
            if item.deployment not in candidates:
                candidates.append(item.deployment)
            skipped.append(f"{item.deployment}: {item.reason}")
            if item.reason in SPILL_REASONS:
                spill.append(f"{item.deployment}: {item.reason}")
        elif isinstance(item, ReplicaChoice):
            replica = f"{item.deployment}/{item.replica}"
        elif isinstance(item, FallbackStep):
            fallbacks.append(f"{item.from_group} -> {item.to_group}: {item.cause}")
        elif isinstance(item, CascadeStep):
            cascade.append(f"{item.group}: {item.reason}")
        elif isinstance(item, IntentChoice):
            intent = f"{item.chosen} ({item.reason})"
    labels = (("sidecar.model_group", outcome.group), ("sidecar.routing.candidates", tuple(candidates)),
              ("sidecar.routing.retries", retries), ("sidecar.routing.skipped", tuple(skipped) or None),
              ("sidecar.routing.fallbacks", tuple(fallbacks) or None), ("sidecar.routing.chosen", outcome.deployment),
              ("sidecar.routing.answered_group", outcome.answered_group),
              ("sidecar.routing.catch_all", outcome.catch_all), ("sidecar.routing.panic", outcome.panic),
              ("sidecar.request.dropped_params", outcome.dropped), ("sidecar.routing.rule", outcome.rule),
              ("sidecar.routing.cascade", tuple(cascade) or None), ("sidecar.routing.intent", intent))
    if replica is not None or spill:  # a shared SGLang pool was met: which replica, or why it was passed
        labels = (*labels, ("sidecar.sglang.replica", replica), ("sidecar.sglang.spill_over", tuple(spill) or None))
    return labels, scores, rankings


def _score(deployment: str, tier: float, unhealthy: bool, score: float) -> str:
    order = "none" if tier == float("inf") else f"{tier:g}"
    return f"{deployment}: order={order} {'failing' if unhealthy else 'healthy'} score={score:.6g}"


def event(item: object) -> tuple[str, dict[str, Any]]:
    """One trail item as an event: its name and attributes (a Ranking's scores are ``route_span``'s)."""
    if isinstance(item, Ranking):
        return "ranking", {"sidecar.model_group": item.group, "sidecar.routing.strategy": item.strategy}
    if isinstance(item, RuleDecision):
        return "rule", {"sidecar.routing.rule": item.rule, "sidecar.rule.group": item.group,
                        "sidecar.rule.require_tags": tuple(sorted(item.require)) or None,
                        "sidecar.rule.exclude_tags": tuple(sorted(item.exclude)) or None,
                        "sidecar.rule.strategy": item.strategy}
    if isinstance(item, IntentChoice):
        return "intent", {"sidecar.model_group": item.group, "sidecar.intent.chosen": item.chosen,
                          "sidecar.reason": item.reason, "sidecar.intent.score": item.score}
    if isinstance(item, CascadeStep):
        return "cascade_escalated", {"sidecar.model_group": item.group, "sidecar.deployment": item.deployment,
                                     "sidecar.reason": item.reason}
    if isinstance(item, Sticky):
        return "affinity", {"sidecar.deployment": item.deployment, "sidecar.model_group": item.group}
    if isinstance(item, Attempt):
        return "attempt", {"sidecar.deployment": item.deployment, "sidecar.model_group": item.group,
                           "sidecar.attempt": item.number, "sidecar.retry": item.retry}
    if isinstance(item, Skip):
        return "skip", {"sidecar.deployment": item.deployment, "sidecar.reason": item.reason}
    if isinstance(item, Panic):
        return "panic", {"sidecar.deployment": item.deployment, "sidecar.model_group": item.group}
    if isinstance(item, FallbackStep):
        return "fallback", {"sidecar.fallback.from": item.from_group, "sidecar.fallback.to": item.to_group,
                            "sidecar.fallback.cause": item.cause}
    if isinstance(item, ReplicaChoice):
        return "replica", {"sidecar.deployment": item.deployment, "sidecar.sglang.replica": item.replica,
                           "sidecar.sglang.how": item.how, "sidecar.sglang.ring_position": item.position,
                           "sidecar.sglang.load": item.load,
                           "sidecar.sglang.passed_over": [f"{name}: load {load:g}" for name, load in item.passed_over]}
    if isinstance(item, Retry):
        return "retry", {"sidecar.reason": item.reason, "sidecar.retry.delay": item.delay}
    if isinstance(item, Failover):
        return "failover", {"sidecar.reason": item.reason}
    if isinstance(item, GiveUp):
        return "give_up", {"sidecar.reason": item.reason}
    if isinstance(item, Transition):
        return "breaker_transition", {"sidecar.deployment": item.deployment, "sidecar.breaker.from": item.old.value,
                                      "sidecar.breaker.to": item.new.value, "sidecar.reason": item.reason}
    return type(item).__name__.lower(), {}
