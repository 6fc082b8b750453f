"""Order a model group's candidates for one request.

Every strategy sorts by the same outer key, then by its own metric:

1. ``deployment.order`` — priority tiers, lower first, ``None`` last;
2. health — within a tier, deployments without recent failures before recently failing ones;
3. the strategy's metric (lower first), with a random tie-break so equal candidates share the load.

Runs on every request for groups of 1 to 4 deployments: one key tuple per candidate and one sort, with a
fast path for a single candidate. Unknown numbers are chosen on purpose: unknown latency sorts first (it
is how a new deployment gets measured); unknown prices sort last (give self-hosted deployments a price of
0 to prefer them under cost-based routing); no ``tpm`` means "no limit", i.e. 0 utilisation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sidecar.config import Deployment
from sidecar.policy.stats import DeploymentStats


class Ranked(Protocol):
    """Anything the router ranks: a deployment and its live statistics."""

    @property
    def deployment(self) -> Deployment: ...

    @property
    def stats(self) -> DeploymentStats: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: Deployment
    stats: DeploymentStats


C = TypeVar("C", bound=Ranked)
Metric = Callable[[Ranked, float, random.Random], float]


def _weighted_shuffle(c: Ranked, now: float, rng: random.Random) -> float:
    """Efraimidis-Spirakis: sorting by ``Exp(1) / weight`` picks first with probability weight / total,
    and the rest in weighted order without replacement. Weight 0 sorts last (``inf``)."""
    weight = c.deployment.weight
    if weight <= 0:
        return math.inf
    return -math.log(1.0 - rng.random()) / weight


def _least_busy(c: Ranked, now: float, rng: random.Random) -> float:
    return float(c.stats.in_flight)


def _least_tokens(c: Ranked, now: float, rng: random.Random) -> float:
    """Fewest estimated tokens in flight: requests differ a hundredfold in cost, so counting them is not enough."""
    return float(c.stats.tokens_in_flight)


def _lowest_latency(c: Ranked, now: float, rng: random.Random) -> float:
    latency = c.stats.latency
    return -1.0 if latency is None else latency


def _lowest_usage(c: Ranked, now: float, rng: random.Random) -> float:
    used = c.stats.tokens_this_minute(now)
    tpm = c.deployment.tpm
    # Utilisation first; without a tpm the raw count only breaks ties among unlimited deployments.
    return used / tpm if tpm else used * 1e-12


def _lowest_cost(c: Ranked, now: float, rng: random.Random) -> float:
    info = c.deployment.model_info
    if info.input_cost_per_token is None and info.output_cost_per_token is None:
        return math.inf
    return (info.input_cost_per_token or 0.0) + (info.output_cost_per_token or 0.0)


STRATEGIES: Mapping[str, Metric] = {
    "simple-shuffle": _weighted_shuffle,
    "least-busy": _least_busy,
    "least-tokens": _least_tokens,
    "latency-based-routing": _lowest_latency,
    "usage-based-routing": _lowest_usage,
    "cost-based-routing": _lowest_cost,
}


def order(strategy: str, candidates: Sequence[C], rng: random.Random, now: float | None = None) -> list[C]:
    """Return ``candidates`` in the order to try them (a new list; the input is not changed).

    ``now`` should be the router's clock: recent failures fade with time (see ``stats``). Without it the
    group's own clock is used — the latest event any candidate saw — which still lets an idle, once
    failing deployment recover as long as its siblings carry traffic.
    """
    if len(candidates) <= 1:
        return list(candidates)
    return [candidates[k[-1]] for k in _keyed(strategy, candidates, rng, now)]


def ranked(strategy: str, candidates: Sequence[C], rng: random.Random,
           now: float | None = None) -> list[tuple[C, float, bool, float]]:
    """``order`` with the reasons: (candidate, priority tier, unhealthy, strategy score), for traces."""
    return [(candidates[k[-1]], k[0], k[1], k[2]) for k in _keyed(strategy, candidates, rng, now)]


def _keyed(strategy: str, candidates: Sequence[C], rng: random.Random,
           now: float | None) -> list[tuple[float, bool, float, float, int]]:
    metric = STRATEGIES.get(strategy)
    if metric is None:
        raise ValueError(f"unknown routing strategy '{strategy}'")
    if now is None:
        now = max((c.stats.last_seen for c in candidates if c.stats.last_seen is not None), default=0.0)
    keyed = [(_tier(c), not c.stats.healthy_at(now), metric(c, now, rng), rng.random(), i)
             for i, c in enumerate(candidates)]
    keyed.sort()
    return keyed


def _tier(c: Ranked) -> float:
    tier = c.deployment.order
    return math.inf if tier is None else float(tier)
