"""Request rules (``sidecar_settings.rules``) and capability checks: config errors, each condition and action."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import config
from sidecar.config import ConfigError
from sidecar.core.types import ChatRequest, WireFormat
from sidecar.policy.rules import Needs, RuleDecision, RuleSet, capability_skip, features, needs


def entry(group: str, name: str, tags: list[str] | None = None, **info: Any) -> dict[str, Any]:
    model_info: dict[str, Any] = {"id": name, **info}
    if tags is not None:
        model_info["tags"] = tags
    return {"model_name": group, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:9",
                                                    "api_key": "sk-test"}, "model_info": model_info}


MODELS = [entry("chat", "us-1", ["us"]), entry("chat", "eu-1", ["eu", "no-retention"]),
          entry("cheap", "small", ["eu"]), entry("vision", "v1", [])]


def load(rules: list[dict[str, Any]], **settings: Any) -> config.Config:
    return config.parse({"model_list": MODELS, "sidecar_settings": {"rules": rules, **settings}})


def request(body: dict[str, Any] | None = None, stream: bool = False) -> ChatRequest:
    full = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **(body or {})}
    return ChatRequest(model=full["model"], body=full, stream=stream)


def decide(rules: list[dict[str, Any]], body: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None, stream: bool = False) -> RuleDecision | None:
    return RuleSet(load(rules).sidecar.rules).decide(request(body, stream), headers or {})


def problems(rules: list[dict[str, Any]], **settings: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(rules, **settings)
    return "\n".join(caught.value.problems)


# ---- config --------------------------------------------------------------------------------------


def test_rules_are_read_with_tags_on_deployments() -> None:
    cfg = load([{"name": "eu", "when": {"headers": {"X-Sidecar-Region": "eu"}}, "require_tags": ["eu"]}])
    rule = cfg.sidecar.rules[0]
    assert rule.name == "eu" and rule.when.headers == (("x-sidecar-region", ("eu",)),)
    assert rule.require_tags == {"eu"}
    assert cfg.groups["chat"].deployments[1].model_info.tags == {"eu", "no-retention"}


@pytest.mark.parametrize(("rules", "expected"), [
    ([{"when": {"headers": {"x": "y"}}}], "sidecar_settings.rules[0]: a rule needs an action"),
    ([{"group": "nope"}], "sidecar_settings.rules[0].group: unknown model group 'nope'"),
    ([{"require_tags": ["mars"]}], "sidecar_settings.rules[0].require_tags: no deployment carries ['mars']"),
    ([{"require_tags": ["eu"], "exclude_tags": ["eu"]}], "sidecar_settings.rules[0].exclude_tags"),
    ([{"strategy": "fastest", "group": "chat"}], "sidecar_settings.rules[0].strategy: expected one of"),
    ([{"when": {"features": ["telepathy"]}, "group": "chat"}], "sidecar_settings.rules[0].when.features: unknown"),
    ([{"when": {"colour": "red"}, "group": "chat"}], "sidecar_settings.rules[0].when.colour: unknown key"),
    ([{"when": {"user": 3}, "group": "chat"}], "sidecar_settings.rules[0].when.user: expected a string"),
    ([{"when": {"min_input_tokens": 10, "max_input_tokens": 5}, "group": "chat"}], "is below min_input_tokens"),
    ([{"name": "a", "group": "chat"}, {"name": "a", "group": "cheap"}], "sidecar_settings.rules[1].name: 'a'"),
    ([{"group": "chat", "then": 1}], "sidecar_settings.rules[0].then: unknown key"),
])
def test_config_errors_name_their_location(rules: list[dict[str, Any]], expected: str) -> None:
    assert expected in problems(rules)


def test_group_strategies_are_checked() -> None:
    assert "sidecar_settings.group_strategies.nope: unknown model group" in problems(
        [], group_strategies={"nope": "least-busy"})
    assert "group_strategies.chat: expected one of" in problems([], group_strategies={"chat": "fastest"})
    assert load([], group_strategies={"chat": "least-busy"}).sidecar.group_strategies == {"chat": "least-busy"}


# ---- conditions ----------------------------------------------------------------------------------


def test_no_rule_matches_gives_none() -> None:
    assert decide([{"when": {"headers": {"x-sidecar-tier": "free"}}, "group": "cheap"}]) is None


def test_header_condition_exact_list_and_glob() -> None:
    rules = [{"name": "r", "when": {"headers": {"x-sidecar-region": ["eu", "eu-*"]}}, "require_tags": ["eu"]}]
    assert decide(rules, headers={"x-sidecar-region": "eu"}) == RuleDecision("r", require=frozenset({"eu"}))
    assert decide(rules, headers={"x-sidecar-region": "eu-west-1"}) is not None
    assert decide(rules, headers={"x-sidecar-region": "us"}) is None
    assert decide(rules, headers={}) is None


def test_a_glob_never_matches_a_missing_field_and_odd_values_do_not_match() -> None:
    anything = [{"when": {"headers": {"x-team": "*"}}, "group": "cheap"}]
    assert decide(anything, headers={"x-team": ""}) is not None
    assert decide(anything, headers={}) is None
    meta = [{"when": {"metadata": {"tenant": ["acme", "a*"]}}, "group": "cheap"}]
    for odd in (["acme"], {"x": 1}, 3, None, True):
        assert decide(meta, {"metadata": {"tenant": odd}}) is None
    assert decide([{"when": {"user": "*"}, "group": "cheap"}], {"user": 42}) is None


def test_rules_share_fields_and_the_first_match_still_wins() -> None:
    rules = [{"name": f"r{i}", "when": {"headers": {"x-sidecar-tier": f"t{i}"}}, "group": "cheap"} for i in range(5)]
    rules.append({"name": "last", "when": {"headers": {"x-sidecar-tier": "t*"}}, "group": "chat"})
    ruleset = RuleSet(load(rules).sidecar.rules)
    assert [(f.kind, f.key) for f in ruleset.fields] == [("header", "x-sidecar-tier")]  # read once per request
    assert ruleset.decide(request(), {"x-sidecar-tier": "t3"}).rule == "r3"  # type: ignore[union-attr]
    assert ruleset.decide(request(), {"x-sidecar-tier": "t9"}).rule == "last"  # type: ignore[union-attr]


def test_an_exact_value_is_not_a_prefix() -> None:
    rules = [{"when": {"headers": {"x-sidecar-region": ["eu", "us-*"]}}, "group": "cheap"}]
    assert decide(rules, headers={"x-sidecar-region": "eu"}) is not None
    assert decide(rules, headers={"x-sidecar-region": "us-east"}) is not None
    for other in ("eux", "eu-west", "us", "xus-1"):
        assert decide(rules, headers={"x-sidecar-region": other}) is None


def test_a_later_rule_wins_when_an_earlier_ones_slow_condition_fails() -> None:
    rules = [{"name": "tools", "when": {"model": "chat", "features": ["tools"]}, "group": "cheap"},
             {"name": "long", "when": {"model": "ch*", "min_input_tokens": 1}, "group": "vision"},
             {"name": "any", "group": "chat"}]
    assert decide(rules).rule == "long"  # type: ignore[union-attr]
    assert decide(rules, {"tools": [{"type": "function", "function": {"name": "f"}}]}).rule == "tools"  # type: ignore[union-attr]
    assert decide(rules, {"model": "other"}).rule == "any"  # type: ignore[union-attr]


def test_every_condition_of_a_rule_must_hold() -> None:
    rules = [{"when": {"headers": {"x-sidecar-tier": "free"}, "user": "u-*"}, "group": "cheap"}]
    assert decide(rules, {"user": "u-1"}, {"x-sidecar-tier": "free"}) is not None
    assert decide(rules, {"user": "v-1"}, {"x-sidecar-tier": "free"}) is None
    assert decide(rules, {"user": "u-1"}, {"x-sidecar-tier": "paid"}) is None


def test_metadata_user_and_model_conditions() -> None:
    meta = [{"when": {"metadata": {"tenant": "acme"}}, "group": "cheap"}]
    assert decide(meta, {"metadata": {"tenant": "acme"}}) is not None
    assert decide(meta, {"metadata": {"tenant": "other"}}) is None
    assert decide(meta, {"metadata": "not a mapping"}) is None
    assert decide([{"when": {"user": "alice"}, "group": "cheap"}], {"user": "alice"}) is not None
    model = [{"when": {"model": "ch*"}, "group": "cheap"}]
    assert decide(model) is not None
    assert decide([{"when": {"model": "chat"}, "group": "cheap"}]) is not None
    assert decide([{"when": {"model": "gpt-*"}, "group": "cheap"}]) is None


def test_input_token_conditions() -> None:
    rules = [{"name": "long", "when": {"min_input_tokens": 100}, "group": "cheap"}]
    assert decide(rules) is None
    assert decide(rules, {"messages": [{"role": "user", "content": "word " * 200}]}) is not None
    short = [{"when": {"max_input_tokens": 10}, "group": "cheap"}]
    assert decide(short) is not None
    assert decide(short, {"messages": [{"role": "user", "content": "word " * 200}]}) is None


@pytest.mark.parametrize(("feature", "body", "stream"), [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, False),
    ("images", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:x"}}]}]}, False),
    ("json", {"response_format": {"type": "json_object"}}, False),
    ("stream", {}, True),
])
def test_feature_conditions(feature: str, body: dict[str, Any], stream: bool) -> None:
    rules = [{"when": {"features": [feature]}, "group": "cheap"}]
    assert decide(rules, body, stream=stream) is not None
    assert decide(rules) is None
    assert features(request(body, stream)) == {feature}


def test_first_matching_rule_wins_and_actions_are_one_value() -> None:
    rules = [{"name": "free", "when": {"headers": {"x-sidecar-tier": "free"}}, "group": "cheap",
              "strategy": "least-busy"},
             {"name": "eu", "when": {"headers": {"x-sidecar-region": "eu"}}, "require_tags": ["eu"],
              "exclude_tags": ["us"]},
             {"name": "default", "strategy": "latency-based-routing"}]
    both = {"x-sidecar-tier": "free", "x-sidecar-region": "eu"}
    assert decide(rules, headers=both) == RuleDecision("free", "cheap", strategy="least-busy")
    eu = decide(rules, headers={"x-sidecar-region": "eu"})
    assert eu == RuleDecision("eu", require=frozenset({"eu"}), exclude=frozenset({"us"}))
    assert decide(rules) == RuleDecision("default", strategy="latency-based-routing")


def test_tag_actions_select_deployments() -> None:
    cfg = load([])
    us, eu = cfg.groups["chat"].deployments
    require = RuleDecision("r", require=frozenset({"eu"}))
    assert require.restricted and require.allows(eu) and not require.allows(us)
    exclude = RuleDecision("r", exclude=frozenset({"no-retention"}))
    assert exclude.allows(us) and not exclude.allows(eu)
    assert not RuleDecision("r", group="cheap").restricted


# ---- capabilities ----------------------------------------------------------------------------------


def test_capability_skips_only_on_an_explicit_no() -> None:
    cfg = config.parse({"model_list": [
        entry("g", "plain", supports_function_calling=False, supports_vision=False, supports_response_schema=False,
              max_output_tokens=100),
        entry("g", "unknown")]})
    plain, unknown = cfg.groups["g"].deployments
    assert capability_skip(plain, Needs(tools=True)) == "no_function_calling"
    assert capability_skip(plain, Needs(images=True)) == "no_vision"
    assert capability_skip(plain, Needs(schema=True)) == "no_response_schema"
    assert capability_skip(plain, Needs(output_tokens=101)) == "max_output_tokens"
    assert capability_skip(plain, Needs(output_tokens=100)) is None
    for need in (Needs(tools=True), Needs(images=True), Needs(schema=True), Needs(output_tokens=10**6)):
        assert capability_skip(unknown, need) is None


def test_needs_reads_the_request() -> None:
    body = {"tools": [{"type": "function", "function": {"name": "f"}}], "max_tokens": 50,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}
    assert needs(request(body)) == Needs(tools=True, schema=True, output_tokens=50)
    assert needs(request({"response_format": {"type": "json_object"}})) == Needs()


def test_an_anthropic_apps_max_tokens_is_capped_not_a_reason_to_skip() -> None:
    anthropic = dataclasses.replace(request({"max_tokens": 128000}), wire=WireFormat.ANTHROPIC)
    assert needs(anthropic).output_tokens is None
    assert needs(request({"max_tokens": 128000})).output_tokens == 128000


# ---- the compiled rule set agrees with the plain reading of the rules ------------------------------------

VALUES = st.sampled_from(["eu", "eu-1", "us", "a*", "eu-*", "u?", "[ab]x"])
CONDITION = st.lists(VALUES, min_size=1, max_size=3)


def _holds(values: list[str], value: object) -> bool:
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, v) for v in values)


def reference(rules: list[dict[str, Any]], body: dict[str, Any], headers: dict[str, str]) -> str | None:
    """The first rule whose every condition holds, read literally (fnmatch per value)."""
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    for rule in rules:
        when = rule["when"]
        if all(_holds(v, headers.get(k)) for k, v in when.get("headers", {}).items()) and \
                all(_holds(v, metadata.get(k)) for k, v in when.get("metadata", {}).items()) and \
                ("user" not in when or _holds(when["user"], body.get("user"))):
            return str(rule["name"])
    return None


@settings(max_examples=150, deadline=None)
@given(conditions=st.lists(st.fixed_dictionaries({}, optional={
           "headers": st.dictionaries(st.sampled_from(["x-a", "x-b"]), CONDITION, min_size=1),
           "metadata": st.dictionaries(st.sampled_from(["tenant"]), CONDITION, min_size=1),
           "user": CONDITION}), min_size=1, max_size=8),
       headers=st.dictionaries(st.sampled_from(["x-a", "x-b"]), st.sampled_from(["eu", "eu-1", "us", "ax", "u1", ""])),
       tenant=st.one_of(st.none(), st.sampled_from(["eu", "abc", "bx"]), st.just(["eu"])),
       user=st.one_of(st.none(), st.sampled_from(["us", "a", "eu-9"]), st.just(7)))
def test_compiled_rules_agree_with_the_reference(conditions: list[dict[str, Any]], headers: dict[str, str],
                                                 tenant: object, user: object) -> None:
    rules = [{"name": f"r{i}", "when": when, "group": "cheap"} for i, when in enumerate(conditions)]
    body: dict[str, Any] = {}
    if tenant is not None:
        body["metadata"] = {"tenant": tenant}
    if user is not None:
        body["user"] = user
    decision = decide(rules, body, headers)
    assert (decision.rule if decision else None) == reference(rules, body, headers)
