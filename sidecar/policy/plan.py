"""Which model groups a request may go to, and the value objects the router records on trace spans.

Decide, then act, then record: the router asks policy for a value, acts on it, and puts the same value on
the span — an ``Attempt`` per upstream call, a ``Skip`` per candidate passed over, a ``FallbackStep`` per
move to another model group (``retry.Retry`` / ``Failover`` / ``GiveUp`` say why), a ``Panic`` when every
candidate left was open and the request went to one anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

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
class Panic:
    """Every candidate the request had left was skipped for an open breaker: rather than refuse it, the
    request goes to ``deployment``, whose breaker reopens soonest (Envoy's panic routing)."""

    deployment: str
    group: str


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


def rejection_fallbacks(group: str, router: RouterSettings, cause: str, tried: Collection[str], *,
                        windows: Mapping[str, int | None] | None = None, needed: int = 0) -> list[str]:
    """Where a request the upstream rejected for ``cause`` (context window, content policy) may go next.

    Any other rejection (a bad request) has nowhere to go. Content-policy rejections go only to
    ``content_policy_fallbacks``. A context-window rejection goes to
    ``context_window_fallbacks`` when the group has an entry there, else to its ``fallbacks`` (as LiteLLM
    routes it), never to a group already tried, and never to a group whose context window — the largest
    ``max_input_tokens`` of its deployments, when every one is known (``windows``) — is smaller than
    ``needed`` (the tokens the prompt is known to need at least), since that group would reject it too.
    """
    if cause == CONTEXT_WINDOW and group not in router.context_window_fallbacks:
        chain = groups_to_try(group, router)
    elif cause in (CONTEXT_WINDOW, CONTENT_POLICY) and group in fallback_table(router, cause):
        chain = groups_to_try(group, router, cause)
    else:
        return []
    windows = windows if cause == CONTEXT_WINDOW and windows is not None else {}
    return [g for g in chain[1:] if g not in tried and _may_fit(windows.get(g), needed)]


def _may_fit(window: int | None, needed: int) -> bool:
    return window is None or window >= needed


def context_windows(groups: Mapping[str, Iterable[int | None]]) -> dict[str, int | None]:
    """Each group's context window: the largest of its deployments' ``max_input_tokens``, or None when one
    of them is unknown (then nothing can be ruled out)."""
    out: dict[str, int | None] = {}
    for name, limits in groups.items():
        known = list(limits)
        out[name] = None if not known or None in known else max(k for k in known if k is not None)
    return out


T = TypeVar("T")


def panic_choice(open_candidates: Iterable[tuple[T, float]]) -> T | None:
    """Of the candidates skipped for an open breaker, each with the time its breaker admits calls again, the
    one that reopens soonest (the first of equals: the plan's order); None when there is none."""
    best: tuple[T, float] | None = None
    for candidate in open_candidates:
        if best is None or candidate[1] < best[1]:
            best = candidate
    return None if best is None else best[0]
