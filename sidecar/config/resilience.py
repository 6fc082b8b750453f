"""Settings of the failure machinery that LiteLLM's keys do not cover: ``sidecar_settings.breaker`` (the
error-rate rule and what to do when every candidate's breaker is open) and ``sidecar_settings.stream_stall``
(when a stream that has gone quiet counts as stalled, relative to its own pace)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.config.reader import Section, is_number

WHEN_ALL_OPEN = ("panic", "refuse")


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The error-rate rule of every deployment's breaker (the consecutive-failure rule is LiteLLM's
    ``allowed_fails`` / ``cooldown_time``), and per model group what a request gets when every candidate
    left is open: ``panic`` — sent to the deployment whose breaker reopens soonest, as Envoy's panic
    threshold does — or ``refuse`` — a 503 at once."""

    error_rate: float | None = 0.5  # share of failed calls that opens it; None: only consecutive failures do
    window: float = 30.0  # seconds the error rate is measured over
    min_requests: int = 20  # calls the window must hold before the rate counts
    when_all_open: str = "panic"
    groups: Mapping[str, str] = field(default_factory=dict)  # model group → its own when_all_open

    def refuses(self, group: str) -> bool:
        return self.groups.get(group, self.when_all_open) == "refuse"


@dataclass(frozen=True, slots=True)
class StallSettings:
    """A stream is stalled after ``pace_multiple`` times its usual gap between reads (smoothed gap plus
    four mean deviations), never sooner than ``min_seconds``; ``stream_idle_timeout`` stays the upper
    bound, and the only rule until ``warmup`` gaps have been seen."""

    min_seconds: float = 2.0
    pace_multiple: float = 10.0
    warmup: int = 5


def breaker_settings(s: Section) -> BreakerSettings:
    default = BreakerSettings()
    rate = s.get("error_rate")
    error_rate: float | None = default.error_rate
    if rate is False:
        error_rate = None
    elif rate is not None:
        if is_number(rate) and 0 < rate <= 1 and rate is not True:
            error_rate = float(rate)
        else:
            s.problem("error_rate", f"expected a share of calls in (0, 1] or false, got {rate!r}")
    groups: dict[str, str] = {}
    by_group = s.section("groups")
    for name in list(by_group.data):
        entry = by_group.section(str(name))
        groups[str(name)] = entry.choice("when_all_open", default.when_all_open, WHEN_ALL_OPEN)
        entry.finish()
    by_group.finish()
    settings = BreakerSettings(
        error_rate=error_rate,
        window=s.number("window", default.window, minimum=0.001),
        min_requests=s.integer("min_requests", default.min_requests, minimum=1),
        when_all_open=s.choice("when_all_open", default.when_all_open, WHEN_ALL_OPEN),
        groups=groups,
    )
    s.finish()
    return settings


def stall_settings(s: Section) -> StallSettings | None:
    """None when ``enabled: false``: only the idle limit then ends a quiet stream."""
    default = StallSettings()
    enabled = s.boolean("enabled", True)
    settings = StallSettings(
        min_seconds=s.number("min_seconds", default.min_seconds, minimum=0.001),
        pace_multiple=s.number("pace_multiple", default.pace_multiple, minimum=1),
        warmup=s.integer("warmup", default.warmup, minimum=1),
    )
    s.finish()
    return settings if enabled else None
