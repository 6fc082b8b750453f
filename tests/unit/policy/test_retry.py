"""Retry policy: every rule of issue 3 §2 (and issue 14: the group first), with a fake clock and seeded
randomness."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import RouterSettings
from sidecar.core.errors import (
    ContentPolicyViolation,
    ContextWindowExceeded,
    RateLimited,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from sidecar.policy.retry import BACKOFF_BASE, BACKOFF_CAP, Failover, GiveUp, Retry, RetryPolicy

NOW, FAR = 1000.0, 1e9


def policy(num_retries: int = 2, cap: float = 60.0, **retry_policy: int) -> RetryPolicy:
    return RetryPolicy.from_settings(RouterSettings(num_retries=num_retries, retry_policy=retry_policy), cap)


def decide(p: RetryPolicy, error: UpstreamError, retries_done: int = 0, *, deadline: float = FAR,
           seed: int = 0, **kwargs: bool) -> Retry | Failover | GiveUp:
    return p.decide(error, retries_done, NOW, deadline, random.Random(seed), **kwargs)


def timeout(phase: str) -> UpstreamTimeout:
    return UpstreamTimeout("timed out", phase=phase)


# ---- rate limits ----------------------------------------------------------------------------------


def test_rate_limited_retries_num_retries_times() -> None:
    p = policy(num_retries=2)
    assert isinstance(decide(p, RateLimited("slow down")), Retry)
    assert isinstance(decide(p, RateLimited("slow down"), 1), Retry)
    assert decide(p, RateLimited("slow down"), 2) == Failover("rate_limited_retries_exhausted")


def test_rate_limited_count_from_retry_policy() -> None:
    p = policy(num_retries=0, RateLimitErrorRetries=3)
    assert isinstance(decide(p, RateLimited("x"), 2), Retry)
    assert isinstance(decide(p, RateLimited("x"), 3), Failover)


def test_rate_limited_zero_retries_fails_over() -> None:
    assert decide(policy(num_retries=0), RateLimited("x")) == Failover("rate_limited")


@pytest.mark.parametrize("err", [RateLimited("x", retry_after=2), UpstreamServerError("500"),
                                 UpstreamConnectionError("reset"), timeout("connect")])
def test_with_another_deployment_in_the_group_any_retryable_failure_moves_there_at_once(err: UpstreamError) -> None:
    p = policy(num_retries=2)
    assert decide(p, err, has_alternative=True) == Failover(err.error_class if err.error_class != "timeout"
                                                            else "timeout_connect")
    assert isinstance(decide(p, err, has_alternative=False), Retry)  # the group's last candidate: retried


def test_rate_limited_with_an_alternative_fails_over_at_once() -> None:
    p = policy(RateLimitErrorRetries=5)
    err = RateLimited("x", retry_after=1.0)
    assert decide(p, err, has_alternative=True) == Failover("rate_limited")
    assert isinstance(decide(p, err, has_alternative=False), Retry)


def test_retry_after_is_honoured() -> None:
    d = decide(policy(), RateLimited("x", upstream_status=429, retry_after=1.0))
    assert d == Retry(1.0, "rate_limited")


def test_retry_after_is_capped() -> None:
    d = decide(policy(cap=5.0), RateLimited("x", retry_after=120.0))
    assert d == Retry(5.0, "rate_limited")


def test_retry_after_zero_or_negative_retries_at_once() -> None:
    assert decide(policy(), RateLimited("x", retry_after=0.0)) == Retry(0.0, "rate_limited")
    assert decide(policy(), RateLimited("x", retry_after=-3.0)) == Retry(0.0, "rate_limited")


def test_retry_after_on_a_server_error_is_honoured_too() -> None:
    d = decide(policy(), UpstreamServerError("503", upstream_status=503, retry_after=2.0))
    assert d == Retry(2.0, "server_error")


# ---- deadline -------------------------------------------------------------------------------------


def test_retry_after_beyond_the_deadline_fails_over_without_sleeping() -> None:
    d = decide(policy(), RateLimited("x", retry_after=10.0), deadline=NOW + 5.0)
    assert d == Failover("deadline")


def test_wait_ending_exactly_at_the_deadline_fails_over() -> None:
    d = decide(policy(), RateLimited("x", retry_after=5.0), deadline=NOW + 5.0)
    assert d == Failover("deadline")


def test_wait_inside_the_deadline_retries() -> None:
    d = decide(policy(), RateLimited("x", retry_after=4.9), deadline=NOW + 5.0)
    assert d == Retry(4.9, "rate_limited")


def test_past_deadline_fails_over() -> None:
    d = decide(policy(), UpstreamServerError("500"), deadline=NOW - 1.0)
    assert d == Failover("deadline")


@given(st.floats(min_value=0.0, max_value=100.0), st.integers(min_value=0, max_value=5),
       st.integers(min_value=0, max_value=2**32))
def test_a_retry_never_sleeps_past_the_deadline(remaining: float, done: int, seed: int) -> None:
    p = policy(num_retries=10, RateLimitErrorRetries=10, InternalServerErrorRetries=10)
    for err in (RateLimited("x"), RateLimited("x", retry_after=remaining / 2 + 1), UpstreamServerError("x")):
        d = decide(p, err, done, deadline=NOW + remaining, seed=seed)
        if isinstance(d, Retry):
            assert NOW + d.delay < NOW + remaining


# ---- server errors and connection resets --------------------------------------------------------


@pytest.mark.parametrize("err", [UpstreamServerError("500", upstream_status=500),
                                 UpstreamConnectionError("reset"), timeout("connect")])
def test_server_error_and_reset_get_num_retries_by_default(err: UpstreamError) -> None:
    p = policy(num_retries=2)
    assert isinstance(decide(p, err, 0), Retry)
    assert isinstance(decide(p, err, 1), Retry)
    assert decide(p, err, 2) == Failover(f"{err.error_class}_retries_exhausted")


@pytest.mark.parametrize("err", [UpstreamServerError("500"), UpstreamConnectionError("reset")])
def test_internal_server_error_retries_overrides(err: UpstreamError) -> None:
    p = policy(InternalServerErrorRetries=3)
    assert isinstance(decide(p, err, 2), Retry)
    assert decide(p, err, 3) == Failover(f"{err.error_class}_retries_exhausted")


def test_no_retries_at_all_when_num_retries_is_zero() -> None:
    p = policy(num_retries=0)
    assert decide(p, UpstreamServerError("500")) == Failover("server_error")
    assert decide(p, UpstreamConnectionError("x")) == Failover("connection")


def test_anything_after_the_first_byte_fails_over() -> None:
    p = policy(InternalServerErrorRetries=3, TimeoutErrorRetries=3)
    for err in (UpstreamServerError("cut"), UpstreamConnectionError("reset"), timeout("idle")):
        assert decide(p, err, bytes_received=True) == Failover(f"{err.error_class}_after_first_byte")


def test_unclassified_retryable_error_is_treated_as_a_server_error() -> None:
    p = policy(num_retries=1)
    assert isinstance(decide(p, UpstreamError("?")), Retry)
    assert isinstance(decide(p, UpstreamError("?"), 1), Failover)


# ---- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["first_byte", "idle", "total", "upstream"])
def test_silent_upstream_fails_over_at_once(phase: str) -> None:
    assert decide(policy(num_retries=5), timeout(phase)) == Failover(f"timeout_{phase}")


@pytest.mark.parametrize("phase", ["first_byte", "idle", "connect"])
def test_timeout_retries_when_configured(phase: str) -> None:
    p = policy(TimeoutErrorRetries=2)
    assert isinstance(decide(p, timeout(phase), 1), Retry)
    assert decide(p, timeout(phase), 2) == Failover("timeout_retries_exhausted")


def test_timeout_retries_zero_explicit() -> None:
    assert decide(policy(TimeoutErrorRetries=0), timeout("connect")) == Failover("timeout_connect")


# ---- auth and the app's own errors -----------------------------------------------------------------


def test_auth_fails_over() -> None:
    assert decide(policy(num_retries=5), UpstreamAuthError("401", upstream_status=401)) == Failover("auth")


def test_auth_retries_when_configured() -> None:
    p = policy(AuthenticationErrorRetries=1)
    assert isinstance(decide(p, UpstreamAuthError("401")), Retry)
    assert decide(p, UpstreamAuthError("401"), 1) == Failover("auth_retries_exhausted")


@pytest.mark.parametrize("err,reason", [
    (UpstreamBadRequest("400", upstream_status=400), "bad_request"),
    (ContextWindowExceeded("too long"), "context_window_exceeded"),
    (ContentPolicyViolation("refused"), "content_policy"),
])
def test_request_errors_give_up(err: UpstreamError, reason: str) -> None:
    p = policy(num_retries=5)
    assert decide(p, err) == GiveUp(reason)
    assert decide(p, err, bytes_received=True) == GiveUp(reason)
    assert decide(p, err, has_alternative=True) == GiveUp(reason)


def test_bad_request_and_content_policy_retries_when_configured() -> None:
    p = policy(BadRequestErrorRetries=1, ContentPolicyViolationErrorRetries=1)
    assert isinstance(decide(p, UpstreamBadRequest("400")), Retry)
    assert decide(p, UpstreamBadRequest("400"), 1) == GiveUp("bad_request")
    assert isinstance(decide(p, ContentPolicyViolation("no")), Retry)
    assert decide(p, ContentPolicyViolation("no"), 1) == GiveUp("content_policy")
    # the same deployment can never take a prompt that is too long, whatever the configuration
    assert decide(p, ContextWindowExceeded("long")) == GiveUp("context_window_exceeded")


# ---- backoff -------------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=64), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_full_jitter_within_bounds(done: int, seed: int) -> None:
    p = policy()
    delay = p.delay(RateLimited("x"), done, random.Random(seed))
    assert 0.0 <= delay <= min(BACKOFF_CAP, BACKOFF_BASE * 2**done)


def test_backoff_is_deterministic_for_a_seed() -> None:
    p = policy()
    a = [p.delay(RateLimited("x"), n, random.Random(7)) for n in range(5)]
    b = [p.delay(RateLimited("x"), n, random.Random(7)) for n in range(5)]
    assert a == b


def test_backoff_spreads_over_the_whole_range() -> None:
    rng = random.Random(42)
    p = policy()
    delays = [p.delay(RateLimited("x"), 2, rng) for _ in range(2000)]  # range [0, 1.0]
    assert min(delays) < 0.05
    assert max(delays) > 0.95
    assert 0.45 < sum(delays) / len(delays) < 0.55


def test_first_server_error_retry_is_short() -> None:
    rng = random.Random(1)
    p = policy()
    for _ in range(200):
        d = p.decide(UpstreamServerError("500"), 0, NOW, FAR, rng)
        assert isinstance(d, Retry) and d.delay <= BACKOFF_BASE


def test_from_settings_defaults() -> None:
    p = RetryPolicy.from_settings(RouterSettings(), 60.0)
    assert p.retry_after_cap == 60.0
    assert p.budgets["rate_limited"] == 2
    assert p.budgets["server_error"] == p.budgets["connection"] == p.budgets["timeout"] == 2
    assert p.budgets["auth"] == p.budgets["bad_request"] == p.budgets["content_policy"] == 0
    assert p.silent_timeout_retries == 0
