"""Circuit breaker: every transition, driven by a fake clock (plain floats)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy.breaker import BreakerState, CircuitBreaker, Transition

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def breaker(**kwargs: object) -> CircuitBreaker:
    options: dict[str, object] = {"allowed_fails": 3, "cooldown": 10.0}
    options.update(kwargs)
    return CircuitBreaker("dep-a", **options)  # type: ignore[arg-type]


def open_breaker(now: float = 100.0) -> CircuitBreaker:
    b = breaker()
    for _ in range(3):
        b.record_failure(now)
    assert b.state is OPEN
    return b


def test_starts_closed_and_allows() -> None:
    b = breaker()
    assert b.state is CLOSED
    assert b.allow(0.0)
    assert b.ready_at(5.0) == 5.0


def test_state_is_a_str_enum() -> None:
    assert BreakerState("half_open") is BreakerState.HALF_OPEN
    assert isinstance(BreakerState.HALF_OPEN, str)
    assert str(BreakerState.OPEN) == "open"


def test_opens_after_allowed_fails_consecutive_failures() -> None:
    b = breaker()
    assert b.record_failure(1.0) is None
    assert b.record_failure(2.0) is None
    t = b.record_failure(3.0)
    assert t == Transition("dep-a", CLOSED, OPEN, "consecutive_failures", 3.0)
    assert b.state is OPEN
    assert b.open_until == 13.0
    assert not b.allow(3.0)
    assert not b.allow(12.999)


def test_success_resets_consecutive_failures() -> None:
    b = breaker()
    b.record_failure(1.0)
    b.record_failure(2.0)
    assert b.record_success(3.0) is None
    assert b.consecutive_failures == 0
    b.record_failure(4.0)
    b.record_failure(5.0)
    assert b.state is CLOSED


def test_allowed_fails_of_one_opens_on_first_failure() -> None:
    b = breaker(allowed_fails=1)
    assert b.record_failure(0.0) is not None
    assert b.state is OPEN


def test_opens_on_error_rate_over_window() -> None:
    # Alternating outcomes never reach 3 consecutive failures; a 50% rate over 20 requests opens it.
    b = breaker(min_requests=20, error_rate_threshold=0.5)
    transitions = []
    for i in range(20):
        now = i * 0.5
        t = b.record_success(now) if i % 2 == 0 else b.record_failure(now)
        transitions.append(t)
    assert b.state is OPEN
    assert transitions[-1] == Transition("dep-a", CLOSED, OPEN, "error_rate", 9.5)
    assert all(t is None for t in transitions[:-1])


def test_error_rate_needs_min_requests() -> None:
    b = breaker(min_requests=20)
    for i in range(9):
        b.record_success(float(i))
        b.record_failure(float(i))
    assert b.state is CLOSED  # 18 outcomes, 50% failed, below min_requests


def test_error_rate_below_threshold_stays_closed() -> None:
    b = breaker(min_requests=10, error_rate_threshold=0.5)
    for i in range(30):
        if i % 3 == 0:
            b.record_failure(float(i) * 0.1)
        else:
            b.record_success(float(i) * 0.1)
    assert b.state is CLOSED


def test_error_rate_disabled() -> None:
    b = breaker(error_rate_threshold=None, min_requests=1)
    for i in range(50):
        b.record_success(float(i))
        b.record_failure(float(i))
    assert b.state is CLOSED


def test_old_outcomes_leave_the_window() -> None:
    b = breaker(min_requests=20, window=30.0)
    for i in range(9):  # 18 outcomes, half failed, never consecutive
        b.record_failure(float(i))
        b.record_success(float(i))
    # Had the window remembered them, two more failures would make 11 of 20 and open it.
    b.record_failure(60.0)
    assert b.record_failure(60.0) is None
    assert b.state is CLOSED


def test_outcomes_inside_the_window_count() -> None:
    b = breaker(min_requests=20, window=30.0)
    for i in range(9):
        b.record_failure(float(i))
        b.record_success(float(i))
    b.record_failure(20.0)
    assert b.record_failure(20.0) is not None
    assert b.state is OPEN


def test_half_open_admits_exactly_one_probe() -> None:
    b = open_breaker(now=100.0)
    assert not b.allow(109.9)
    allowed, t = b.admit(110.0)
    assert allowed
    assert t == Transition("dep-a", OPEN, HALF_OPEN, "cooldown_elapsed", 110.0)
    assert b.state is HALF_OPEN
    assert not b.allow(110.0)
    assert not b.allow(150.0)


def test_probe_success_closes() -> None:
    b = open_breaker(now=100.0)
    assert b.allow(110.0)
    t = b.record_success(111.0)
    assert t == Transition("dep-a", HALF_OPEN, CLOSED, "probe_succeeded", 111.0)
    assert b.state is CLOSED
    assert b.allow(111.0)
    assert b.allow(111.0)


def test_probe_success_forgets_old_failures() -> None:
    b = breaker(allowed_fails=3, min_requests=2)
    b.record_success(0.0)
    b.record_failure(0.0)  # 1 of 2 failed: error rate 50% with min_requests 2 → open
    assert b.state is OPEN
    assert b.allow(10.0)
    b.record_success(10.0)
    assert b.record_failure(10.5) is None  # a fresh window: 1 of 1 is below min_requests
    assert b.state is CLOSED


def test_probe_failure_reopens_for_cooldown() -> None:
    b = open_breaker(now=100.0)
    assert b.allow(110.0)
    t = b.record_failure(112.0)
    assert t == Transition("dep-a", HALF_OPEN, OPEN, "probe_failed", 112.0)
    assert b.open_until == 122.0
    assert not b.allow(121.0)
    assert b.allow(122.0)
    assert b.state is HALF_OPEN


def test_release_probe_lets_the_next_caller_probe() -> None:
    b = open_breaker(now=100.0)
    assert b.allow(110.0)
    assert not b.allow(110.5)
    b.release_probe()
    assert b.state is HALF_OPEN
    assert b.allow(111.0)
    assert not b.allow(111.0)


def test_release_probe_is_a_no_op_elsewhere() -> None:
    b = breaker()
    b.release_probe()
    assert b.state is CLOSED
    b = open_breaker()
    b.release_probe()
    assert b.state is OPEN
    assert not b.allow(100.0)


def test_lost_probe_expires_after_lease() -> None:
    b = breaker(probe_lease=30.0)
    for _ in range(3):
        b.record_failure(0.0)
    assert b.allow(10.0)
    assert not b.allow(39.9)
    assert b.allow(40.0)


def test_stragglers_do_not_move_an_open_breaker() -> None:
    b = open_breaker(now=100.0)
    assert b.record_failure(105.0) is None
    assert b.open_until == 110.0  # not extended
    assert b.record_success(106.0) is None
    assert b.state is OPEN


def test_cool_down_opens_below_threshold() -> None:
    b = breaker()
    b.record_failure(0.0)
    t = b.cool_down(1.0, 5.0)
    assert t == Transition("dep-a", CLOSED, OPEN, "retry_after", 1.0)
    assert b.open_until == 6.0
    assert not b.allow(5.9)
    assert b.allow(6.0)
    assert b.state is HALF_OPEN
    assert b.record_success(6.5) is not None
    assert b.state is CLOSED


def test_cool_down_extends_but_never_shortens() -> None:
    b = open_breaker(now=100.0)  # open until 110
    assert b.cool_down(101.0, 2.0) is None
    assert b.open_until == 110.0
    assert b.cool_down(101.0, 20.0) is None
    assert b.open_until == 121.0
    assert b.state is OPEN


def test_cool_down_during_probe_reopens() -> None:
    b = open_breaker(now=100.0)
    assert b.allow(110.0)
    t = b.cool_down(110.5, 3.0)
    assert t is not None and (t.old, t.new) == (HALF_OPEN, OPEN)
    assert b.open_until == 113.5
    assert b.record_failure(110.6) is None  # the same 429 also reported as a failure: no double effect
    assert b.open_until == 113.5


def test_cool_down_ignores_non_positive() -> None:
    b = breaker()
    assert b.cool_down(0.0, 0.0) is None
    assert b.cool_down(0.0, -1.0) is None
    assert b.state is CLOSED


def test_ready_at() -> None:
    b = open_breaker(now=100.0)
    assert b.ready_at(101.0) == 110.0
    assert b.ready_at(115.0) == 115.0  # cooldown over, a probe would be admitted
    assert b.allow(115.0)
    assert b.ready_at(116.0) == 126.0  # probe in flight: estimate one cooldown
    b.release_probe()
    assert b.ready_at(117.0) == 117.0


def test_zero_cooldown_probes_at_once() -> None:
    b = breaker(cooldown=0.0)
    for _ in range(3):
        b.record_failure(5.0)
    assert b.state is OPEN
    assert b.allow(5.0)
    assert b.state is HALF_OPEN


def test_clock_stepping_backwards_does_not_break_the_window() -> None:
    b = breaker(min_requests=4)
    b.record_success(100.0)
    b.record_success(50.0)
    b.record_failure(100.0)
    b.record_success(101.0)
    assert b.state is CLOSED


@pytest.mark.parametrize("bad", [{"allowed_fails": 0}, {"window": 0.0}])
def test_rejects_bad_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        breaker(**bad)


events = st.lists(
    st.tuples(st.sampled_from(["allow", "ok", "fail", "release", "cool"]),
              st.floats(min_value=0.0, max_value=5.0)),
    max_size=80,
)


def act(b: CircuitBreaker, action: str, now: float) -> Transition | None:
    if action == "ok":
        return b.record_success(now)
    if action == "fail":
        return b.record_failure(now)
    if action == "cool":
        return b.cool_down(now, 2.0)
    b.release_probe()
    return None


@settings(max_examples=300)
@given(events)
def test_invariants_under_any_event_sequence(seq: list[tuple[str, float]]) -> None:
    """Whatever happens: transitions are real changes that chain, HALF_OPEN admits one probe at a time,
    and OPEN never admits before open_until."""
    b = breaker(cooldown=3.0, min_requests=5)
    now = 0.0
    state = b.state
    for action, dt in seq:
        now += dt
        if action == "allow":
            before, until = b.state, b.open_until
            allowed, t = b.admit(now)
            if before is OPEN:
                assert allowed == (now >= until)
            if b.state is HALF_OPEN and allowed:
                assert not b.allow(now)
        else:
            t = act(b, action, now)
        if t is not None:
            assert t.old is state and t.new is not state and t.at == now
            state = t.new
        assert b.state is state
        assert b.ready_at(now) >= now


# ---- a throttled probe (issue 14) -----------------------------------------------------------------


def test_a_failed_probe_reopens_for_the_upstreams_own_pause_when_it_named_one() -> None:
    b = open_breaker(100.0)
    assert b.admit(110.0) == (True, Transition("dep-a", OPEN, HALF_OPEN, "cooldown_elapsed", 110.0))
    assert b.record_failure(110.5, reopen_after=2.0) == Transition("dep-a", HALF_OPEN, OPEN, "probe_failed", 110.5)
    assert b.open_until == 112.5  # the Retry-After, not the 10 s cooldown
    assert not b.allow(112.4)
    assert b.allow(112.5)


def test_reopen_after_only_changes_a_failed_probe() -> None:
    b = breaker()
    for _ in range(3):
        b.record_failure(100.0, reopen_after=1.0)
    assert b.state is OPEN and b.open_until == 110.0  # consecutive failures: the configured cooldown


def test_reset_forgets_the_failures_seen() -> None:
    breaker = CircuitBreaker("d", allowed_fails=2, cooldown=30.0)
    breaker.record_failure(0.0)
    breaker.record_failure(0.1)
    assert breaker.state == BreakerState.OPEN
    transition = breaker.reset(0.2, "key_changed")
    assert transition is not None and (transition.old, transition.new, transition.reason) == (
        BreakerState.OPEN, BreakerState.CLOSED, "key_changed")
    assert breaker.allow(0.2) and breaker.consecutive_failures == 0
    assert breaker.record_failure(0.3) is None  # counting starts again from zero
    assert breaker.reset(0.4, "key_changed") is None  # already closed: no transition
