"""Which model groups a request may go to, and the value objects the router records on trace spans.

Decide, then act, then record: the router asks policy for a value, acts on it, and puts the same value on
the span — an ``Attempt`` per upstream call, a ``Skip`` per candidate passed over, a ``FallbackStep`` per
move to another model group (``retry.Retry`` / ``Failover`` / ``GiveUp`` say why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.config import RouterSettings

CONTEXT_WINDOW = "context_window_exceeded"
CONTENT_POLICY = "content_policy"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream call: ``number`` counts calls in the request from 1; ``retry`` counts retries of
    this deployment (0 for the first call to it)."""

    deployment: str
    group: str
    number: int
    retry: int


@dataclass(frozen=True, slots=True)
class Skip:
    """A candidate passed over without a call (``reason``: breaker_open, rate_limited_locally, …)."""

    deployment: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ranking:
    """A model group's deployments in the order the strategy chose, each with why: its priority tier
    (``order``; inf when unset), whether it was recently failing, and the strategy's score (lower first)."""

    group: str
    strategy: str
    candidates: tuple[tuple[str, float, bool, float], ...]


@dataclass(frozen=True, slots=True)
class FallbackStep:
    """The request moved from one model group to another because of ``cause`` (an error_class)."""

    from_group: str
    to_group: str
    cause: str


def fallback_table(router: RouterSettings, cause: str | None = None) -> Mapping[str, tuple[str, ...]]:
    """The fallback mapping that applies to ``cause``: context-window and content-policy failures have
    their own tables; everything else uses ``fallbacks``."""
    if cause == CONTEXT_WINDOW:
        return router.context_window_fallbacks
    if cause == CONTENT_POLICY:
        return router.content_policy_fallbacks
    return router.fallbacks


def groups_to_try(group: str, router: RouterSettings, cause: str | None = None) -> tuple[str, ...]:
    """``group`` first, then its fallbacks for ``cause``, breadth first, each group once.

    Breadth first so that a group's own list is tried in the operator's order before any fallback's
    fallbacks (``{a: [b, c]}, {b: [d]}`` → a, b, c, d): chains such as "small model → bigger model →
    biggest model" can be written one link at a time, and cycles (``{a: [b]}, {b: [a]}``) end because
    every group is visited once. With no table entry for ``group`` the answer is ``(group,)``.
    """
    table = fallback_table(router, cause)
    out = [group]
    seen = {group}
    i = 0
    while i < len(out):
        for target in table.get(out[i], ()):
            if target not in seen:
                seen.add(target)
                out.append(target)
        i += 1
    return tuple(out)
