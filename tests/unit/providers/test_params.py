"""A deployment's request parameters, from its LiteLLM config to the upstream body: completion defaults under
the app's values, additional_drop_params, drop_params (a refused field dropped and reported), extra_body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar import config
from sidecar.core.errors import InvalidRequest
from sidecar.core.types import ChatRequest, WireFormat
from sidecar.formats.anthropic_ingress import parse_request
from sidecar.providers import bind
from sidecar.providers.params import ParamsAdapter

MESSAGES = [{"role": "user", "content": "hi"}]


def adapter(model: str, settings: dict[str, Any] | None = None, **params: Any) -> Any:
    cfg = config.parse({"model_list": [{"model_name": "m", "litellm_params": {"model": model, "api_key": "k",
                                                                              **params}}],
                        "litellm_settings": settings or {}})
    return bind(cfg.deployments[0])


def sent(adapter_: Any, **body: Any) -> dict[str, Any]:
    call = adapter_.prepare(ChatRequest("m", {"model": "m", "messages": MESSAGES, **body}))
    return orjson.loads(call.body)  # type: ignore[no-any-return]


def test_a_deployment_without_parameters_is_not_wrapped() -> None:
    assert not isinstance(adapter("openai/gpt-4o"), ParamsAdapter)
    assert not isinstance(adapter("openai/gpt-4o", extra_body={"x": 1}), ParamsAdapter)  # the adapter merges it


def test_completion_defaults_apply_under_the_apps_own_values() -> None:
    a = adapter("openai/gpt-4o", temperature=0.2, max_tokens=100, reasoning_effort="low")
    assert sent(a) == {"model": "gpt-4o", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 100,
                       "reasoning_effort": "low"}
    body = sent(a, temperature=0.9, max_completion_tokens=5)
    assert body["temperature"] == 0.9 and body["max_completion_tokens"] == 5
    assert "max_tokens" not in body  # one limit under two names: the app's wins


def test_router_default_litellm_params_apply_to_every_deployment_under_its_own() -> None:
    cfg = config.parse({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x", "api_key": "k",
                                                                              "top_p": 0.5}}],
                        "router_settings": {"default_litellm_params": {"temperature": 0.1, "top_p": 0.9,
                                                                       "api_key": "nope"}}})
    assert sent(bind(cfg.deployments[0]))["temperature"] == 0.1
    assert sent(bind(cfg.deployments[0]))["top_p"] == 0.5
    assert cfg.warnings == ("router_settings.default_litellm_params.api_key: ignored: only completion defaults "
                            "(temperature, max_tokens, …) apply to every deployment",)


def test_defaults_reach_an_anthropic_upstream_translated() -> None:
    body = sent(adapter("anthropic/claude-3-5-haiku", max_tokens=300, temperature=0.3))
    assert body["max_tokens"] == 300 and body["temperature"] == 0.3


def test_defaults_reach_a_native_anthropic_body_under_its_own_names() -> None:
    a = adapter("anthropic/claude-3-5-haiku", max_completion_tokens=300, temperature=0.3)
    request = parse_request(orjson.dumps({"model": "m", "max_tokens": 50, "messages": MESSAGES}))
    body = orjson.loads(a.prepare(request).body)
    assert request.wire is WireFormat.ANTHROPIC and body["max_tokens"] == 50 and body["temperature"] == 0.3


def test_additional_drop_params_are_always_removed() -> None:
    body = sent(adapter("openai/gpt-4o", additional_drop_params=["user", "seed"]), user="u", seed=1, top_p=1)
    assert "user" not in body and "seed" not in body and body["top_p"] == 1


def test_without_drop_params_an_untranslatable_field_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        sent(adapter("anthropic/claude-3-5-haiku"), logit_bias={"1": 2})
    assert info.value.param == "logit_bias"


@pytest.mark.parametrize("where", ["settings", "deployment"])
def test_drop_params_drops_what_the_provider_cannot_take_and_says_so(where: str) -> None:
    a = (adapter("anthropic/claude-3-5-haiku", {"drop_params": True}) if where == "settings"
         else adapter("anthropic/claude-3-5-haiku", drop_params=True))
    call = a.prepare(ChatRequest("m", {"model": "m", "messages": MESSAGES, "logit_bias": {"1": 2}, "seed": 3,
                                       "temperature": 0.5}))
    body = orjson.loads(call.body)
    assert "logit_bias" not in body and "seed" not in body and body["temperature"] == 0.5
    assert set(call.dropped) == {"logit_bias", "seed"}


def test_a_deployment_may_turn_drop_params_off() -> None:
    a = adapter("anthropic/claude-3-5-haiku", {"drop_params": True}, drop_params=False)
    with pytest.raises(InvalidRequest):
        sent(a, logit_bias={"1": 2})


def test_drop_params_never_drops_what_makes_the_request() -> None:
    a = adapter("anthropic/claude-3-5-haiku", drop_params=True)
    bad = ChatRequest("m", {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})
    with pytest.raises(InvalidRequest):
        a.prepare(bad)  # a part inside the messages: not a field that can be dropped


def test_drop_params_with_a_quirky_host() -> None:
    call = adapter("cerebras/llama-3.3-70b", drop_params=True).prepare(
        ChatRequest("m", {"model": "m", "messages": MESSAGES, "presence_penalty": 1}))
    assert call.dropped == ("presence_penalty",) and b"presence_penalty" not in call.body


def test_extra_body_is_merged_into_the_upstream_body_under_the_apps_fields() -> None:
    body = sent(adapter("openai/gpt-4o", extra_body={"guided_json": {"a": 1}, "top_k": 5}), top_k=2)
    assert body["guided_json"] == {"a": 1} and body["top_k"] == 2
    anthropic = sent(adapter("anthropic/claude-3-5-haiku", extra_body={"service_tier": "auto"}))
    assert anthropic["service_tier"] == "auto"
    gemini = sent(adapter("gemini/gemini-2.0-flash", extra_body={"cachedContent": "c/1"}))
    assert gemini["cachedContent"] == "c/1"


def test_a_bad_additional_drop_params_is_a_problem() -> None:
    with pytest.raises(config.ConfigError) as info:
        adapter("openai/gpt-4o", additional_drop_params="user")
    assert info.value.problems == ["model_list[0].litellm_params.additional_drop_params: expected a list"]


def test_dropped_fields_go_on_the_route_span() -> None:
    from sidecar.routing.outcome import Outcome
    from sidecar.telemetry.decisions import route_span

    outcome = Outcome("m", dropped=("logit_bias",))
    labels = dict(route_span(outcome)[0])
    assert labels["sidecar.request.dropped_params"] == ("logit_bias",)
    assert dict(route_span(Outcome("m"))[0])["sidecar.request.dropped_params"] is None
