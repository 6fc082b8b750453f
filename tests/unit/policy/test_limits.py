"""Token bucket: grants, waits, refill, burst, debt for oversized requests."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policy.limits import TokenBucket


def test_starts_full_with_a_minute_of_burst() -> None:
    b = TokenBucket(60)
    assert b.available(0.0) == 60
    for _ in range(60):
        assert b.take(1, 0.0) == 0.0
    assert b.take(1, 0.0) == pytest.approx(1.0)  # 1 per second


def test_refused_take_consumes_nothing() -> None:
    b = TokenBucket(600)
    assert b.take(600, 0.0) == 0.0
    wait = b.take(5, 0.0)
    assert wait == pytest.approx(0.5)
    assert b.available(0.0) == 0.0
    assert b.take(5, wait) == 0.0


def test_refills_up_to_burst() -> None:
    b = TokenBucket(120, burst=10)
    assert b.take(10, 0.0) == 0.0
    assert b.available(2.5) == pytest.approx(5.0)
    assert b.available(1000.0) == 10.0


def test_wait_for_partial_shortfall() -> None:
    b = TokenBucket(60, burst=10)
    b.take(8, 0.0)
    assert b.take(5, 0.0) == pytest.approx(3.0)


def test_oversized_request_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    b = TokenBucket(60, burst=10)
    b.take(4, 0.0)
    assert b.take(25, 0.0) == pytest.approx(4.0)
    assert b.take(25, 4.0) == 0.0
    assert b.available(4.0) == pytest.approx(-15.0)
    assert b.take(1, 4.0) == pytest.approx(16.0)


def test_consume_and_refund() -> None:
    b = TokenBucket(60, burst=100)
    b.consume(30, 0.0)
    assert b.available(0.0) == 70
    b.consume(-50, 0.0)
    assert b.available(0.0) == 100  # refunds never exceed the burst
    b.consume(150, 0.0)
    assert b.available(0.0) == -50


def test_zero_or_negative_take_is_free() -> None:
    b = TokenBucket(60, burst=1)
    assert b.take(0, 0.0) == 0.0
    assert b.take(-5, 0.0) == 0.0
    assert b.available(0.0) == 1


def test_clock_stepping_back_does_not_mint_tokens() -> None:
    b = TokenBucket(60, burst=10)
    b.take(10, 100.0)
    assert b.available(50.0) == 0.0
    assert b.available(101.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rate,burst", [(0, None), (-1, None), (math.inf, None), (60, 0)])
def test_rejects_bad_settings(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@given(st.floats(1, 1e6), st.lists(st.tuples(st.floats(0, 1), st.floats(0, 120)), max_size=60))
def test_never_grants_more_than_the_rate_allows(rate: float, takes: list[tuple[float, float]]) -> None:
    """For requests within the burst: granted <= burst + rate * elapsed, and a refusal's wait is exact."""
    b = TokenBucket(rate)
    now = granted = 0.0
    for fraction, dt in takes:
        n = fraction * b.burst
        now += dt
        wait = b.take(n, now)
        assert wait >= 0.0
        if wait == 0.0:
            granted += n
        else:
            assert b.available(now) < n
            probe = copy.copy(b)  # looking ahead must not move the real bucket's clock
            assert probe.available(now + wait) == pytest.approx(n, rel=1e-6, abs=1e-6)
        assert granted <= b.burst + b.per_second * now + 1e-6 * max(1.0, granted)
        assert b.available(now) <= b.burst
