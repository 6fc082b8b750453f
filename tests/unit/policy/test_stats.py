"""Deployment statistics: EWMAs, decaying error rate, in-flight counts, p95 TTFT, tokens per minute."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policy.stats import DeploymentStats


def test_fresh_stats() -> None:
    s = DeploymentStats()
    assert s.latency is None and s.ttft is None and s.p95_ttft is None
    assert s.in_flight == 0
    assert s.healthy and s.health_score == 1.0
    assert s.tokens_this_minute(0.0) == 0.0


def test_in_flight_counts_and_never_goes_negative() -> None:
    s = DeploymentStats()
    s.started(1.0)
    s.started(1.0)
    assert s.in_flight == 2
    s.finished(2.0, 1.0, ok=True)
    s.finished(2.0, 1.0, ok=False)
    s.finished(2.0, 1.0, ok=True)
    assert s.in_flight == 0


def test_latency_ewma() -> None:
    s = DeploymentStats(alpha=0.5)
    s.finished(0.0, 1.0, ok=True)
    assert s.latency == 1.0
    s.finished(0.0, 3.0, ok=True)
    assert s.latency == 2.0
    s.finished(0.0, 0.5, ok=False)  # a fast failure does not make it look fast
    assert s.latency == 2.0


def test_ttft_ewma() -> None:
    s = DeploymentStats(alpha=0.3)
    s.finished(0.0, 2.0, ok=True, ttft=1.0)
    s.finished(0.0, 2.0, ok=True, ttft=2.0)
    assert s.ttft == pytest.approx(1.3)
    s.finished(0.0, 2.0, ok=True)
    assert s.ttft == pytest.approx(1.3)


@given(st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=1, max_size=50),
       st.floats(min_value=0.01, max_value=1.0))
def test_ewma_stays_within_sample_range(samples: list[float], alpha: float) -> None:
    s = DeploymentStats(alpha=alpha)
    for x in samples:
        s.finished(0.0, x, ok=True)
    assert s.latency is not None
    assert min(samples) - 1e-6 <= s.latency <= max(samples) + 1e-6


def test_one_recent_failure_is_unhealthy_and_fades() -> None:
    s = DeploymentStats(error_half_life=10.0)
    s.finished(100.0, 0.1, ok=False)
    assert not s.healthy
    assert s.error_rate == pytest.approx(0.5)
    assert not s.healthy_at(105.0)
    assert s.healthy_at(130.0)  # three half-lives later the failure has faded
    assert s.error_rate_at(200.0) < 0.001


def test_a_mostly_successful_deployment_is_healthy() -> None:
    s = DeploymentStats()
    for i in range(20):
        s.finished(float(i), 0.1, ok=i % 10 != 0)
    assert s.healthy
    assert s.health_score > 0.8


def test_a_failing_deployment_is_unhealthy() -> None:
    s = DeploymentStats()
    for i in range(20):
        s.finished(i * 0.1, 0.1, ok=i % 2 == 0)
    assert not s.healthy
    assert 0.4 < s.error_rate < 0.5


def test_failures_are_forgotten_with_time_even_without_traffic() -> None:
    """Health ordering sends traffic away from an unhealthy deployment: if its rate only changed with
    traffic, it could never recover."""
    s = DeploymentStats()  # half-life 5 s, weight capped at 10 outcomes
    for i in range(1000):
        s.finished(float(i) * 0.01, 0.1, ok=False)
    assert not s.healthy_at(10.0)
    assert not s.healthy_at(10.0 + 20.0)
    assert s.healthy_at(10.0 + 23.0)  # however long the outage, healthy again within ~23 s


def test_a_success_after_failures_dilutes_the_rate() -> None:
    s = DeploymentStats()
    s.finished(0.0, 0.1, ok=False)
    assert not s.healthy_at(0.0)
    for _ in range(3):
        s.finished(0.0, 0.1, ok=True)
    assert s.healthy_at(0.0)


def test_error_rate_ignores_a_clock_stepping_back() -> None:
    s = DeploymentStats()
    s.finished(100.0, 0.1, ok=False)
    assert s.error_rate_at(50.0) == pytest.approx(0.5)


@given(st.lists(st.tuples(st.floats(min_value=0, max_value=30), st.booleans()), max_size=100))
def test_error_rate_is_a_fraction(events: list[tuple[float, bool]]) -> None:
    s = DeploymentStats()
    now = 0.0
    for dt, ok in events:
        now += dt
        s.finished(now, 0.1, ok=ok)
        assert 0.0 <= s.error_rate_at(now) < 1.0
        assert 0.0 < s.health_score <= 1.0


def test_p95_ttft_needs_samples() -> None:
    s = DeploymentStats()
    for _ in range(4):
        s.finished(0.0, 1.0, ok=True, ttft=0.5)
    assert s.p95_ttft is None
    s.finished(0.0, 1.0, ok=True, ttft=0.5)
    assert s.p95_ttft == 0.5


def test_p95_ttft_of_the_last_64() -> None:
    s = DeploymentStats()
    for i in range(1, 101):
        s.finished(0.0, 1.0, ok=True, ttft=float(i))
    # the ring holds 37..100; the 95th percentile of 64 values is the 61st smallest
    assert s.p95_ttft == 97.0
    for _ in range(64):
        s.finished(0.0, 1.0, ok=True, ttft=0.1)
    assert s.p95_ttft == 0.1


def test_tokens_this_minute_slides() -> None:
    s = DeploymentStats()
    s.add_tokens(600, 0.0)
    s.add_tokens(400, 30.0)
    assert s.tokens_this_minute(59.0) == 1000
    # 90 s: the previous minute (1000 tokens) is half inside the last 60 s
    assert s.tokens_this_minute(90.0) == pytest.approx(500)
    s.add_tokens(100, 90.0)
    assert s.tokens_this_minute(90.0) == pytest.approx(600)
    assert s.tokens_this_minute(120.0) == pytest.approx(100)
    assert s.tokens_this_minute(500.0) == 0.0


def test_last_seen_tracks_the_latest_event() -> None:
    s = DeploymentStats()
    assert s.last_seen is None
    s.started(5.0)
    s.add_tokens(1, 7.0)
    s.finished(6.0, 1.0, ok=True)
    assert s.last_seen == 7.0


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.5}, {"error_half_life": 0.0}])
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DeploymentStats(**kwargs)
