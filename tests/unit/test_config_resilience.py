"""``sidecar_settings.breaker`` and ``sidecar_settings.stream_stall``: defaults, overrides, every problem with
its location."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.config import BreakerSettings, ConfigError, StallSettings


def parse(settings: dict[str, object]) -> config.Config:
    return config.parse({"model_list": [{"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o"}},
                                        {"model_name": "spare", "litellm_params": {"model": "openai/spare"}}],
                         "sidecar_settings": settings})


def problems(settings: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(settings)
    return info.value.problems


def test_defaults_are_todays_values() -> None:
    cfg = parse({})
    assert cfg.sidecar.breaker == BreakerSettings(error_rate=0.5, window=30.0, min_requests=20,
                                                  when_all_open="panic")
    assert cfg.sidecar.stream_stall == StallSettings()
    assert cfg.sidecar.stream_idle_timeout is None  # the router derives it from the request's timeout


def test_breaker_overrides() -> None:
    cfg = parse({"breaker": {"error_rate": 0.25, "window": 60, "min_requests": 50, "when_all_open": "refuse",
                             "groups": {"spare": {"when_all_open": "panic"}}}})
    breaker = cfg.sidecar.breaker
    assert (breaker.error_rate, breaker.window, breaker.min_requests) == (0.25, 60.0, 50)
    assert breaker.refuses("gpt-4o") and not breaker.refuses("spare")


def test_error_rate_rule_can_be_turned_off() -> None:
    assert parse({"breaker": {"error_rate": False}}).sidecar.breaker.error_rate is None


def test_a_group_may_choose_refusal() -> None:
    breaker = parse({"breaker": {"groups": {"gpt-4o": {"when_all_open": "refuse"}}}}).sidecar.breaker
    assert breaker.refuses("gpt-4o") and not breaker.refuses("spare")


def test_breaker_problems_have_locations() -> None:
    assert problems({"breaker": {"error_rate": 1.5, "window": 0, "min_requests": 0, "when_all_open": "wait",
                                 "groups": {"nope": {"when_all_open": "refuse"}, "spare": {"other": 1}},
                                 "cooldown": 3}}) == [
        "sidecar_settings.breaker.error_rate: expected a share of calls in (0, 1] or false, got 1.5",
        "sidecar_settings.breaker.groups.spare.other: unknown key",
        "sidecar_settings.breaker.window: expected a number >= 0.001, got 0",
        "sidecar_settings.breaker.min_requests: expected an integer >= 1, got 0",
        "sidecar_settings.breaker.when_all_open: expected one of panic, refuse, got a string",
        "sidecar_settings.breaker.cooldown: unknown key",
        "sidecar_settings.breaker.groups.nope: unknown model group",
    ]
    assert problems({"breaker": {"error_rate": True}}) == [
        "sidecar_settings.breaker.error_rate: expected a share of calls in (0, 1] or false, got True"]


def test_stream_stall_settings() -> None:
    stall = parse({"stream_stall": {"min_seconds": 1.5, "pace_multiple": 8, "warmup": 3}}).sidecar.stream_stall
    assert stall == StallSettings(min_seconds=1.5, pace_multiple=8.0, warmup=3)
    assert parse({"stream_stall": {"enabled": False}}).sidecar.stream_stall is None
    assert parse({"stream_idle_timeout": 12}).sidecar.stream_idle_timeout == 12.0
    assert problems({"stream_stall": {"pace_multiple": 0.5, "min_seconds": "soon"}}) == [
        "sidecar_settings.stream_stall.min_seconds: expected a number >= 0.001, got a string",
        "sidecar_settings.stream_stall.pace_multiple: expected a number >= 1, got 0.5",
    ]
