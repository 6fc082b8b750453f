"""Stall detection relative to a stream's own pace, driven by a fake clock (plain floats, no sleeping)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import StallSettings
from sidecar.policy.stall import StallDetector

CEILING = 10.0  # the idle limit: a third of a 30 s request timeout
DEFAULTS = StallSettings()


class FakeStream:
    """A stream read on a fake clock: each read waits ``gap`` seconds; ``silence`` says when a read that
    never comes would be declared stalled (seconds after the reader began waiting)."""

    def __init__(self, settings: StallSettings | None = DEFAULTS, ceiling: float = CEILING) -> None:
        self.now = 0.0
        self.detector = StallDetector(ceiling, settings)

    def read_after(self, gap: float) -> None:
        assert gap <= self.detector.limit, "a healthy read must never be cut"
        self.now += gap
        self.detector.waited(gap)

    def silence(self) -> tuple[float, str]:
        return self.detector.limit, self.detector.phase


def test_a_fast_stream_that_goes_quiet_is_stalled_after_seconds_not_the_idle_limit() -> None:
    stream = FakeStream()
    for _ in range(20):
        stream.read_after(0.02)  # a token every 20 ms
    limit, phase = stream.silence()
    assert phase == "stall"
    assert limit == StallSettings().min_seconds  # 10 x (20 ms + 4 x ~0) is below the floor
    assert limit < CEILING / 4  # there is time left to continue the answer elsewhere


def test_before_warmup_only_the_idle_limit_applies() -> None:
    stream = FakeStream(StallSettings(warmup=5))
    for _ in range(4):
        stream.read_after(0.01)
        assert stream.silence() == (CEILING, "idle")
    stream.read_after(0.01)
    assert stream.silence()[1] == "stall"


def test_a_slow_steady_stream_gets_a_limit_in_proportion() -> None:
    stream = FakeStream(StallSettings(min_seconds=1.0, pace_multiple=10))
    for _ in range(30):
        stream.read_after(0.3)
    limit, phase = stream.silence()
    assert phase == "stall"
    assert 3.0 <= limit < 3.5  # ~10 x 0.3 s once the deviation has decayed


def test_a_stream_slower_than_the_idle_limit_allows_keeps_the_idle_limit() -> None:
    stream = FakeStream(ceiling=5.0)
    for _ in range(10):
        stream.read_after(1.0)
    assert stream.silence() == (5.0, "idle")


def test_jittery_gaps_widen_the_limit() -> None:
    steady, jittery = FakeStream(StallSettings(min_seconds=0.1)), FakeStream(StallSettings(min_seconds=0.1))
    rng = random.Random(3)
    for _ in range(50):
        steady.read_after(0.05)
        jittery.read_after(rng.choice([0.0, 0.0, 0.15]))  # the same mean, in bursts
    assert jittery.silence()[0] > 2 * steady.silence()[0]


def test_the_limit_follows_a_stream_that_slows_down() -> None:
    stream = FakeStream(StallSettings(min_seconds=0.5))
    for _ in range(20):
        stream.read_after(0.01)
    fast = stream.silence()[0]
    for _ in range(40):
        stream.read_after(0.2)
    assert stream.silence()[0] > 3 * fast


def test_disabled_is_the_idle_limit_only() -> None:
    stream = FakeStream(None)
    for _ in range(100):
        stream.read_after(0.001)
    assert stream.silence() == (CEILING, "idle")


def test_a_negative_wait_from_a_stepping_clock_counts_as_zero() -> None:
    detector = StallDetector(CEILING, StallSettings(warmup=1, min_seconds=0.5))
    detector.waited(-3.0)
    assert detector.limit == 0.5


@given(st.lists(st.floats(0, 4), min_size=1, max_size=200), st.floats(0.5, 3), st.floats(1, 20))
def test_the_limit_stays_between_the_floor_and_the_idle_limit(gaps: list[float], floor: float,
                                                               multiple: float) -> None:
    detector = StallDetector(CEILING, StallSettings(min_seconds=floor, pace_multiple=multiple, warmup=1))
    for gap in gaps:
        detector.waited(gap)
        assert floor <= detector.limit <= CEILING
        assert (detector.phase == "idle") == (detector.limit == CEILING)


@given(st.lists(st.floats(0, 1), min_size=5, max_size=100))
def test_a_healthy_stream_is_never_cut_at_its_own_usual_pace(gaps: list[float]) -> None:
    """Whatever the history, a wait no longer than the stream's longest recent gap is always allowed: the
    limit is at least ``pace_multiple`` x the smoothed gap, and at least the floor."""
    detector = StallDetector(CEILING, StallSettings(min_seconds=2.0))
    for gap in gaps:
        detector.waited(gap)
    assert detector.limit >= min(CEILING, 2.0, max(gaps))


@pytest.mark.parametrize("settings", [StallSettings(), StallSettings(min_seconds=0.5, pace_multiple=4, warmup=3)])
def test_defaults_and_overrides_are_respected(settings: StallSettings) -> None:
    detector = StallDetector(CEILING, settings)
    for _ in range(settings.warmup):
        detector.waited(0.001)
    assert detector.limit == settings.min_seconds
