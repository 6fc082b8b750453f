"""Routing strategies: permutation, priority tiers, health ordering, weights, each strategy's metric."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import Deployment, ModelInfo
from sidecar.policy.stats import DeploymentStats
from sidecar.policy.strategies import STRATEGIES, Candidate, order

NAMES = sorted(STRATEGIES)
Spec = tuple[float, int | None, bool, int]  # weight, order tier, recently failing, in flight


def cand(name: str, *, weight: float = 1.0, tier: int | None = None, tpm: int | None = None,
         price: float | None = None, stats: DeploymentStats | None = None) -> Candidate:
    info = ModelInfo(input_cost_per_token=price, output_cost_per_token=price)
    d = Deployment(id=name, model_name="g", provider="openai", model="m", api_base="http://x",
                   weight=weight, order=tier, tpm=tpm, model_info=info)
    return Candidate(d, stats or DeploymentStats())


def failing(now: float = 0.0) -> DeploymentStats:
    s = DeploymentStats()
    for _ in range(5):
        s.finished(now, 0.1, ok=False)
    return s


def ids(cands: list[Candidate]) -> list[str]:
    return [c.deployment.id for c in cands]


# ---- properties for every strategy ---------------------------------------------------------------

cand_specs = st.lists(
    st.tuples(st.sampled_from([0.0, 0.5, 1.0, 3.0]), st.one_of(st.none(), st.integers(0, 2)),
              st.booleans(), st.integers(0, 5)),
    min_size=0, max_size=6,
)


def build(specs: list[Spec]) -> list[Candidate]:
    out = []
    for i, (weight, tier, bad, busy) in enumerate(specs):
        stats = failing() if bad else DeploymentStats()
        stats.in_flight = busy
        out.append(cand(f"d{i}", weight=weight, tier=tier, tpm=1000, price=float(busy), stats=stats))
    return out


def tier_key(c: Candidate) -> float:
    return float("inf") if c.deployment.order is None else float(c.deployment.order)


@settings(max_examples=200)
@given(st.sampled_from(NAMES), cand_specs, st.integers(0, 2**32))
def test_output_is_a_permutation_with_tiers_then_health(name: str, specs: list[Spec], seed: int) -> None:
    cands = build(specs)
    out = order(name, cands, random.Random(seed), now=0.0)
    assert sorted(ids(out)) == sorted(ids(cands))
    keys = [(tier_key(c), not c.stats.healthy_at(0.0)) for c in out]
    assert keys == sorted(keys)


@settings(max_examples=200)
@given(cand_specs, st.integers(0, 2**32))
def test_weight_zero_is_never_first_when_others_exist(specs: list[Spec], seed: int) -> None:
    cands = build(specs)
    out = order("simple-shuffle", cands, random.Random(seed), now=0.0)
    if out and out[0].deployment.weight == 0:
        first = (tier_key(out[0]), out[0].stats.healthy_at(0.0))
        peers = [c for c in cands if (tier_key(c), c.stats.healthy_at(0.0)) == first]
        assert all(c.deployment.weight == 0 for c in peers)


def test_input_is_not_modified() -> None:
    cands = [cand("a"), cand("b"), cand("c")]
    before = list(cands)
    order("simple-shuffle", cands, random.Random(1))
    assert cands == before


@pytest.mark.parametrize("name", NAMES)
def test_single_and_empty(name: str) -> None:
    only = cand("a", weight=0.0)
    assert order(name, [only], random.Random(0)) == [only]
    assert order(name, [], random.Random(0)) == []


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy"):
        order("round-robin", [cand("a"), cand("b")], random.Random(0))


def test_weight_zero_alone_in_its_tier_still_ordered() -> None:
    out = order("simple-shuffle", [cand("z", weight=0.0), cand("a"), cand("b")], random.Random(3))
    assert ids(out)[-1] == "z"


# ---- simple-shuffle distribution ---------------------------------------------------------------


def test_weighted_first_choice_matches_weights() -> None:
    rng = random.Random(12345)
    cands = [cand("a", weight=1.0), cand("b", weight=3.0), cand("c", weight=6.0)]
    n = 20_000
    firsts = Counter(order("simple-shuffle", cands, rng)[0].deployment.id for _ in range(n))
    for name, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert firsts[name] / n == pytest.approx(share, abs=0.015)


def test_equal_weights_share_evenly() -> None:
    rng = random.Random(7)
    cands = [cand("a"), cand("b")]
    firsts = Counter(order("simple-shuffle", cands, rng)[0].deployment.id for _ in range(10_000))
    assert firsts["a"] / 10_000 == pytest.approx(0.5, abs=0.02)


# ---- tiers and health ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_priority_tiers_first_none_last(name: str) -> None:
    cands = [cand("none"), cand("two", tier=2), cand("zero", tier=0), cand("one", tier=1)]
    assert ids(order(name, cands, random.Random(0))) == ["zero", "one", "two", "none"]


@pytest.mark.parametrize("name", NAMES)
def test_healthy_before_recently_failing(name: str) -> None:
    cands = [cand("bad", stats=failing(now=100.0), price=0.0, weight=100.0), cand("good", price=1.0)]
    assert ids(order(name, cands, random.Random(0), now=100.0)) == ["good", "bad"]
    # once the failures have faded, the strategy decides again
    later = order("cost-based-routing", cands, random.Random(0), now=200.0)
    assert ids(later) == ["bad", "good"]


def test_without_now_the_groups_latest_event_is_the_clock() -> None:
    bad = cand("bad", stats=failing(now=0.0), price=0.0)
    good = cand("good", price=1.0)
    assert ids(order("cost-based-routing", [bad, good], random.Random(0))) == ["good", "bad"]
    good.stats.finished(100.0, 0.1, ok=True)  # the sibling's traffic moves the group's clock on
    assert ids(order("cost-based-routing", [bad, good], random.Random(0))) == ["bad", "good"]


# ---- each strategy's metric ---------------------------------------------------------------------


def test_least_busy() -> None:
    a, b, c = cand("a"), cand("b"), cand("c")
    a.stats.in_flight, b.stats.in_flight, c.stats.in_flight = 3, 1, 2
    assert ids(order("least-busy", [a, b, c], random.Random(0))) == ["b", "c", "a"]


def test_least_busy_ties_are_shared() -> None:
    rng = random.Random(5)
    cands = [cand("a"), cand("b"), cand("c")]
    firsts = Counter(order("least-busy", cands, rng)[0].deployment.id for _ in range(3000))
    assert all(700 < firsts[x] < 1300 for x in "abc")


def test_latency_based_prefers_fast_and_explores_unknown() -> None:
    fast, slow, new = cand("fast"), cand("slow"), cand("new")
    fast.stats.finished(0.0, 0.2, ok=True)
    slow.stats.finished(0.0, 2.0, ok=True)
    assert ids(order("latency-based-routing", [slow, fast, new], random.Random(0), now=0.0)) == \
        ["new", "fast", "slow"]


def test_usage_based_by_utilisation() -> None:
    big, small, unlimited = cand("big", tpm=100_000), cand("small", tpm=1_000), cand("unlimited")
    big.stats.add_tokens(10_000, 0.0)   # 10 %
    small.stats.add_tokens(500, 0.0)    # 50 %
    unlimited.stats.add_tokens(50_000, 0.0)
    out = order("usage-based-routing", [small, big, unlimited], random.Random(0), now=1.0)
    assert ids(out) == ["unlimited", "big", "small"]


def test_usage_based_without_tpm_uses_raw_counts() -> None:
    a, b = cand("a"), cand("b")
    a.stats.add_tokens(500, 0.0)
    b.stats.add_tokens(100, 0.0)
    assert ids(order("usage-based-routing", [a, b], random.Random(0), now=1.0)) == ["b", "a"]


def test_cost_based_cheapest_first_unknown_last() -> None:
    cands = [cand("pricey", price=1e-5), cand("unknown"), cand("cheap", price=1e-7), cand("free", price=0.0)]
    assert ids(order("cost-based-routing", cands, random.Random(0))) == ["free", "cheap", "pricey", "unknown"]


def test_cost_based_with_only_one_price_known() -> None:
    info = ModelInfo(input_cost_per_token=2e-6)
    d = Deployment(id="in-only", model_name="g", provider="openai", model="m", api_base="http://x",
                   model_info=info)
    out = order("cost-based-routing", [cand("pricey", price=1e-5), Candidate(d, DeploymentStats())],
                random.Random(0))
    assert ids(out) == ["in-only", "pricey"]


def test_least_tokens_counts_tokens_not_requests() -> None:
    """One huge request in flight weighs more than three small ones (least-busy would pick the other way)."""
    big, small = DeploymentStats(), DeploymentStats()
    big.started(0.0, tokens=60_000)
    for _ in range(3):
        small.started(0.0, tokens=500)
    candidates = [cand("big", stats=big), cand("small", stats=small)]
    rng = random.Random(1)
    assert [c.deployment.id for c in order("least-tokens", candidates, rng, 0.0)] == ["small", "big"]
    assert [c.deployment.id for c in order("least-busy", candidates, rng, 0.0)] == ["big", "small"]
    big.finished(1.0, 1.0, ok=True, tokens=60_000)  # the big one is done: its deployment is now the idle one
    assert big.tokens_in_flight == 0 and small.tokens_in_flight == 1500
    assert [c.deployment.id for c in order("least-tokens", candidates, rng, 1.0)] == ["big", "small"]


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 100_000), min_size=1, max_size=40), seed=st.integers(0, 1000))
def test_least_tokens_sends_each_request_to_the_lightest_load(sizes: list[int], seed: int) -> None:
    """Mixed request sizes, none finishing: each goes where the fewest tokens are in flight, so the loads never
    differ by more than the largest request."""
    candidates = [cand(f"d{i}") for i in range(3)]
    rng = random.Random(seed)
    for size in sizes:
        first = order("least-tokens", candidates, rng, 0.0)[0]
        assert first.stats.tokens_in_flight == min(c.stats.tokens_in_flight for c in candidates)
        first.stats.started(0.0, tokens=size)
    loads = [c.stats.tokens_in_flight for c in candidates]
    assert max(loads) - min(loads) <= max(sizes)
