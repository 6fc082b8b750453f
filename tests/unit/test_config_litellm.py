"""LiteLLM configs as LiteLLM reads them: the policy table (warn, refuse, point out typos), os.environ/ in every
value, model references (bare names, custom_llm_provider, wildcards), credentials, keys from the environment,
Redis from REDIS_*, retry_after, default_fallbacks, aliases, model_info capability flags — and the README's
table kept in sync with the code's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sidecar import config
from sidecar.config import ConfigError, litellm
from sidecar.config.wildcards import expand, match
from sidecar.policy.retry import RetryPolicy

README = Path(__file__).resolve().parents[2] / "README.md"


def entry(name: str = "m", model: str = "openai/gpt-4o", info: dict[str, Any] | None = None,
          **params: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"model_name": name, "litellm_params": {"model": model, "api_key": "k", **params}}
    if info is not None:
        item["model_info"] = info
    return item


def warnings(data: dict[str, Any], **kwargs: Any) -> tuple[str, ...]:
    return config.parse({"model_list": [entry()], **data}, **kwargs).warnings


def problems(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(data, **kwargs)
    return info.value.problems


# ---- the policy ------------------------------------------------------------------------------------------


def test_ignored_keys_load_with_a_warning_that_says_what_to_use_instead() -> None:
    found = warnings({"litellm_settings": {"set_verbose": True, "success_callback": ["langfuse"]},
                      "general_settings": {"database_url": "postgresql://x", "store_model_in_db": True}})
    assert "litellm_settings.set_verbose: ignored: use sidecar_settings.log_level (logs are always JSON lines)" \
        in found
    assert any(w.startswith("litellm_settings.success_callback: ignored: logging integrations are not loaded: "
                            "traces and metrics are OpenTelemetry (OTEL_* variables)") for w in found)
    assert any(w.startswith("general_settings.database_url: ignored: no database") for w in found)
    assert len(found) == 4


def test_typos_and_keys_in_the_wrong_section_are_warnings_that_help() -> None:
    found = warnings({"litellm_settings": {"drop_parms": True, "routing_strategy": "least-busy"},
                      "router_settings": {"num_retires": 2, "master_key": "x"}, "modle_list": []})
    assert found == (
        "litellm_settings.drop_parms: unknown key, ignored (did you mean 'drop_params'?)",
        "litellm_settings.routing_strategy: unknown key here, ignored: it belongs in router_settings",
        "router_settings.num_retires: unknown key, ignored (did you mean 'num_retries'?)",
        "router_settings.master_key: unknown key here, ignored: it belongs in general_settings",
        "modle_list: unknown key, ignored (did you mean 'model_list'?)",
    )


def test_the_same_warning_in_many_deployments_is_one_line() -> None:
    cfg = config.parse({"model_list": [entry(max_parallel_requests=5) for _ in range(3)]})
    assert cfg.warnings == ("model_list[0].litellm_params.max_parallel_requests: ignored: use rpm and tpm "
                            "(and 2 more)",)


def test_refused_keys_are_errors_that_say_why() -> None:
    found = problems({"model_list": [entry(mock_response="hi")], "guardrails": [{"name": "pii"}],
                      "general_settings": {"custom_auth": "auth.handler"}})
    for start in ("general_settings.custom_auth: not supported: apps authenticate only with",
                  "model_list[0].litellm_params.mock_response: not supported: the sidecar would call the real",
                  "guardrails: not supported: guardrails are not run by the sidecar"):
        assert any(p.startswith(start) for p in found), (start, found)


def test_sidecar_settings_stay_strict() -> None:
    assert problems({"model_list": [entry()], "sidecar_settings": {"drop_params": True}}) == [
        "sidecar_settings.drop_params: unknown key"]


def test_information_keys_are_accepted_silently() -> None:
    assert warnings({"model_list": [entry(info={"mode": "chat", "description": "d", "base_model": "gpt-4o"})]}) \
        == ()


def test_an_implemented_key_where_it_has_no_effect_says_so() -> None:
    assert warnings({"model_list": [entry(aws_region_name="us-east-1")]}) == (
        "model_list[0].litellm_params.aws_region_name: ignored: it has no effect here",)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("litellm_settings", "drop_params", True), ("litellm_settings", "num_retries", 1),
    ("litellm_settings", "request_timeout", 5), ("litellm_settings", "default_fallbacks", ["m"]),
    ("router_settings", "retry_after", 1), ("router_settings", "redis_host", "r"),
    ("router_settings", "model_group_alias", {"alias": "m"}), ("router_settings", "enable_pre_call_checks", True),
    ("router_settings", "default_litellm_params", {"temperature": 0}),
    ("general_settings", "master_key", "sk-1"), ("general_settings", "max_request_size_mb", 4),
])
def test_implemented_settings_are_read(section: str, key: str, value: object) -> None:
    assert warnings({section: {key: value}}) == ()


def _plain_value(name: str) -> Any:
    if name == "api_base":
        return "http://x"
    if name == "proxy":
        return "none"
    if name == "replica_key":
        return "conversation"
    if name == "replica_share":
        return "none"
    if name == "replica_health_path":
        return "/ready"
    if name in ("organization", "api_version", "vertex_project", "vertex_location", "replica_dns_server"):
        return "x"
    if name in ("supports_prefill", "propagate_trace", "drop_params", "store", "logprobs", "parallel_tool_calls"):
        return True
    return 1


def test_every_implemented_deployment_key_is_read() -> None:
    values: dict[str, Any] = {"stop": ["x"], "logit_bias": {"1": 1}, "extra_headers": {"a": "b"},
                              "headers": {"c": "d"}, "extra_body": {"e": 1}, "additional_drop_params": ["user"],
                              "response_format": {"type": "json_object"}, "metadata": {"a": "b"},
                              "stream_options": {"include_usage": True}, "modalities": ["text"],
                              "audio": {"voice": "x"}, "prediction": {"type": "content"},
                              "web_search_options": {}, "tool_choice": "auto", "user": "u", "service_tier": "auto",
                              "reasoning_effort": "low", "verbosity": "low"}
    skip = {"model", "api_key", "aws_role_name", "aws_web_identity_token", "model_id", "vertex_credentials",
            "litellm_credential_name", "custom_llm_provider", "anthropic_betas",
            "replicas"}  # anthropic_betas: anthropic and bedrock only; replicas: sglang only
    params: dict[str, Any] = {}
    for name, key in litellm.LITELLM_PARAMS.items():
        if key.status != litellm.IMPLEMENTED or name in skip or name.startswith("aws_"):
            continue
        params[name] = values.get(name, _plain_value(name))
    assert config.parse({"model_list": [entry(**params)]}).warnings == ()


def test_readme_table_is_the_policy_table() -> None:
    text = README.read_text()
    begin, end = "<!-- litellm-keys:begin -->\n", "<!-- litellm-keys:end -->"
    assert begin in text and end in text, "the README lost its LiteLLM key table markers"
    table = text[text.index(begin) + len(begin):text.index(end)]
    assert table == litellm.markdown(), "README's LiteLLM key table is stale: paste litellm.markdown() in"


def test_the_table_lists_every_section_the_loader_reads() -> None:
    rows = [line.split(" | ")[0].removeprefix("| ") for line in litellm.markdown().splitlines()[2:]]
    assert set(rows) == set(litellm.SECTIONS)


# ---- the environment ---------------------------------------------------------------------------------------


def test_os_environ_is_resolved_in_every_value_and_typed_like_yaml() -> None:
    cfg = config.parse({"model_list": [entry(model="os.environ/MODEL", api_base="os.environ/BASE", rpm="os.environ/RPM",
                                             timeout="os.environ/TIMEOUT")],
                        "router_settings": {"num_retries": "os.environ/RETRIES"}},
                       environ={"MODEL": "anthropic/claude-3-5-haiku", "BASE": "http://h/", "RPM": "60",
                                "TIMEOUT": "2.5", "RETRIES": "4"})
    d = cfg.deployments[0]
    assert (d.provider, d.model, d.api_base, d.rpm, d.timeout) == ("anthropic", "claude-3-5-haiku", "http://h", 60,
                                                                   2.5)
    assert cfg.router.num_retries == 4


def test_an_ignored_key_never_fails_a_config_for_its_variable() -> None:
    cfg = config.parse({"model_list": [entry()], "general_settings": {"database_url": "os.environ/DATABASE_URL"}},
                       environ={})
    assert cfg.warnings[0].startswith("general_settings.database_url: ignored: no database")


def test_a_bad_value_from_the_environment_is_named_by_its_variable_never_echoed() -> None:
    found = problems({"model_list": [entry(rpm="os.environ/SECRETISH")]}, environ={"SECRETISH": "sk-live-123"})
    assert found == ["model_list[0].litellm_params.rpm: expected an integer >= 1, got the value of SECRETISH"]


def test_skip_secrets_accepts_every_reference_it_cannot_resolve() -> None:
    data = {"model_list": [entry(name="a", model="hosted_vllm/llama", api_base="os.environ/VLLM_BASE",
                                 api_key="os.environ/NOPE", rpm="os.environ/RPM")],
            "litellm_settings": {"cache": True, "cache_params": {"type": "redis"}},
            "router_settings": {"redis_host": "os.environ/REDIS_HOST", "redis_port": "os.environ/REDIS_PORT"}}
    assert config.parse(data, environ={}, resolve_secrets=False).groups["a"]
    found = problems(data, environ={})
    assert "model_list[0].litellm_params.api_base: environment variable VLLM_BASE is not set" in found
    assert "router_settings.redis_host: environment variable REDIS_HOST is not set" in found
    cache_only = {**data, "router_settings": {}}  # a Redis cache whose address LiteLLM reads from REDIS_HOST
    assert config.parse(cache_only, environ={}, resolve_secrets=False).sidecar.shared.cache is not None
    assert "litellm_settings.cache_params.type: a redis cache needs redis_url or host (or " \
           "sidecar_settings.redis, or REDIS_HOST)" in problems(cache_only, environ={})


def test_redis_comes_from_router_settings_and_from_redis_variables_as_litellm_reads_them() -> None:
    cfg = config.parse({"model_list": [entry()], "router_settings": {"redis_host": "r1", "redis_port": "6380"},
                        "litellm_settings": {"cache": True, "cache_params": {"type": "redis", "host": "c1"}}},
                       environ={"REDIS_PASSWORD": "pw", "REDIS_PORT": "7000"})
    shared = cfg.sidecar.shared
    assert shared.redis is not None and (shared.redis.host, shared.redis.port) == ("r1", 6380)
    assert shared.redis.password is not None and shared.redis.password.value == "pw"
    cache = shared.cache.redis  # type: ignore[union-attr]
    assert cache is not None and (cache.host, cache.port, cache.password.value) == ("c1", 7000, "pw")  # type: ignore[union-attr]


@pytest.mark.parametrize(("params", "why"), [({"type": "s3", "s3_bucket_name": "b"}, "cache type 's3'"),
                                              ({"type": "redis", "mode": "default_off"}, "default_off")])
def test_a_litellm_cache_we_cannot_be_stays_off_with_a_warning(params: dict[str, Any], why: str) -> None:
    cfg = config.parse({"model_list": [entry()], "litellm_settings": {"cache": True, "cache_params": params}})
    assert cfg.sidecar.shared.cache is None and len(cfg.warnings) == 1 and why in cfg.warnings[0]


def test_provider_keys_come_from_their_usual_variables() -> None:
    cfg = config.parse({"model_list": [{"model_name": "a", "litellm_params": {"model": "claude-3-5-haiku"}},
                                       {"model_name": "b", "litellm_params": {"model": "gpt-4o"}}]},
                       environ={"ANTHROPIC_API_KEY": "ak", "OPENAI_API_KEY": "ok"})
    keys = {d.provider: d.api_key.value for d in cfg.deployments}  # type: ignore[union-attr]
    assert keys == {"anthropic": "ak", "openai": "ok"}


# ---- model references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4o", "openai"), ("o3-mini", "openai"), ("o1", "openai"), ("chatgpt-4o-latest", "openai"),
    ("text-embedding-3-small", "openai"), ("claude-3-5-sonnet-20241022", "anthropic"),
    ("gemini-2.0-flash", "gemini"), ("grok-3", "xai"), ("deepseek-chat", "deepseek"),
    ("mistral-large-latest", "mistral"),
])
def test_bare_names_get_their_provider_from_their_prefix(model: str, provider: str) -> None:
    d = config.parse({"model_list": [entry(model=model)]}).deployments[0]
    assert (d.provider, d.model, d.id) == (provider, model, f"{provider}/{model}")


def test_custom_llm_provider_names_the_provider_of_a_bare_model() -> None:
    d = config.parse({"model_list": [entry(model="meta-llama/Llama-3-8b", custom_llm_provider="openai",
                                           api_base="http://vllm:8000/v1")]}).deployments[0]
    assert (d.provider, d.model) == ("openai", "meta-llama/Llama-3-8b")


@pytest.mark.parametrize(("model", "message"), [
    ("cohere/command-r", "provider 'cohere' is not supported yet (it needs its own wire format) (model_name 'm')"),
    ("command-r-plus", "provider 'cohere' is not supported yet"),
    ("voyage/voyage-3", "provider 'voyage' is not supported yet"),
    ("opnai/gpt-4o", "unknown provider 'opnai' (did you mean 'openai'?)"),
])
def test_providers_not_served_are_a_clear_error_naming_the_deployment(model: str, message: str) -> None:
    found = problems({"model_list": [entry(model=model)]})
    assert found[0].startswith(f"model_list[0].litellm_params.model: {message}")


def test_new_openai_compatible_rows() -> None:
    cfg = config.parse({"model_list": [entry(model="nvidia_nim/meta/llama3-70b-instruct"),
                                       entry(model="dashscope/qwen-turbo"),
                                       entry(model="ollama_chat/llama3", api_base="http://ollama:11434")]})
    bases = [d.api_base for d in cfg.deployments]
    assert bases == ["https://integrate.api.nvidia.com/v1", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
                     "http://ollama:11434/v1"]
    assert problems({"model_list": [entry(model="github/gpt-4o")]}) == [
        "model_list[0].litellm_params.api_base: required for provider 'github'"]


def test_wildcards_pass_the_apps_model_name_through() -> None:
    cfg = config.parse({"model_list": [entry(name="openai/*", model="openai/*"),
                                       {"model_name": "*", "litellm_params": {"model": "*"}},
                                       entry(name="claude-*", model="anthropic/claude-*", temperature=0.1)]},
                       environ={"GEMINI_API_KEY": "gk"})
    assert not cfg.groups and [w.pattern for w in cfg.wildcards] == ["openai/*", "claude-*", "*"]
    found = match(cfg.wildcards, "openai/gpt-4o-mini")
    assert found is not None
    (built,) = expand(*found[:1], "openai/gpt-4o-mini", found[1])  # type: ignore[misc]
    assert (built.provider, built.model, built.model_name) == ("openai", "gpt-4o-mini", "openai/gpt-4o-mini")
    found = match(cfg.wildcards, "claude-3-5-haiku")
    (built,) = expand(found[0], "claude-3-5-haiku", found[1])  # type: ignore[index,misc]
    assert (built.provider, built.model) == ("anthropic", "claude-3-5-haiku") and built.params is not None
    found = match(cfg.wildcards, "gemini/gemini-2.0-flash")
    (built,) = expand(found[0], "gemini/gemini-2.0-flash", found[1])  # type: ignore[index,misc]
    assert (built.provider, built.api_base, built.api_key.value) == (  # type: ignore[union-attr]
        "gemini", "https://generativelanguage.googleapis.com", "gk")
    found = match(cfg.wildcards, "mystery")
    assert expand(found[0], "mystery", found[1]).startswith("the model 'mystery' cannot be served")  # type: ignore[index,union-attr]


def test_a_star_in_model_needs_one_in_model_name() -> None:
    assert problems({"model_list": [entry(name="gpt", model="openai/*")]}) == [
        "model_list[0].litellm_params.model: a '*' in model needs a '*' in model_name to take it from (got 'gpt')"]


def test_credentials_are_shared_by_name_under_a_deployments_own_values() -> None:
    cfg = config.parse({"credential_list": [{"credential_name": "azure-eu", "credential_values": {
        "api_key": "os.environ/AZ_KEY", "api_base": "https://eu.openai.azure.com", "api_version": "2024-10-21"},
        "credential_info": {"description": "EU"}}],
        "model_list": [{"model_name": "m", "litellm_params": {"model": "azure/gpt-4o",
                                                              "litellm_credential_name": "azure-eu",
                                                              "api_version": "2025-01-01"}}]},
        environ={"AZ_KEY": "azk"})
    d = cfg.deployments[0]
    assert (d.api_base, d.api_version, d.api_key.value) == ("https://eu.openai.azure.com", "2025-01-01", "azk")  # type: ignore[union-attr]
    assert problems({"model_list": [entry(litellm_credential_name="nope")]}) == [
        "model_list[0].litellm_params.litellm_credential_name: no credential named 'nope' in credential_list"]


# ---- routing settings --------------------------------------------------------------------------------------------


def test_default_fallbacks_go_to_every_group_without_its_own() -> None:
    cfg = config.parse({"model_list": [entry("a"), entry("b"), entry("c")],
                        "router_settings": {"fallbacks": [{"a": ["c"]}]},
                        "litellm_settings": {"default_fallbacks": ["b"]}})
    assert cfg.router.fallbacks == {"a": ("c",), "b": (), "c": ("b",)}
    assert problems({"model_list": [entry("a")], "router_settings": {"default_fallbacks": ["zz"]}}) == [
        "router_settings.default_fallbacks: unknown model group 'zz'"]


def test_model_group_alias() -> None:
    cfg = config.parse({"model_list": [entry("a")], "router_settings": {"model_group_alias": {
        "b": "a", "c": {"model": "a", "hidden": True}}}})
    assert cfg.router.aliases == {"b": "a", "c": "a"}
    assert problems({"model_list": [entry("a")], "router_settings": {"model_group_alias": {"a": "a", "x": "q"}}}) \
        == ["router_settings.model_group_alias.a: 'a' is already a model group",
            "router_settings.model_group_alias.x: unknown model group 'q'"]


def test_retry_after_is_the_shortest_wait_before_a_retry() -> None:
    cfg = config.parse({"model_list": [entry()], "router_settings": {"retry_after": 3}})
    policy = RetryPolicy.from_settings(cfg.router, 60.0)
    import random

    from sidecar.core.errors import RateLimited, UpstreamServerError
    assert policy.delay(UpstreamServerError("x"), 0, random.Random(1)) == 3.0
    assert policy.delay(RateLimited("x", retry_after=0.5), 0, random.Random(1)) == 0.5  # the upstream's wins


def test_model_info_capability_flags_and_legacy_max_tokens() -> None:
    d = config.parse({"model_list": [entry(info={"supports_function_calling": False, "supports_vision": True,
                                                 "max_tokens": 2048}, input_cost_per_token=1e-6)]}).deployments[0]
    info = d.model_info
    assert (info.supports_function_calling, info.supports_vision, info.supports_response_schema) == (False, True,
                                                                                                     None)
    assert info.max_output_tokens == 2048 and info.input_cost_per_token == 1e-6


def test_general_settings_max_request_size_sets_the_body_limit() -> None:
    cfg = config.parse({"model_list": [entry()], "general_settings": {"max_request_size_mb": 4}})
    assert cfg.sidecar.max_body_size_mb == 4.0


def test_warning_text_never_contains_a_value() -> None:
    cfg = config.parse({"model_list": [entry()], "general_settings": {"database_url": "postgresql://u:pw@db"}})
    assert not any(re.search("pw@db", w) for w in cfg.warnings)


def test_a_reload_logs_only_the_warnings_it_did_not_have() -> None:
    from sidecar.config.changes import deployment_set_digest, new_warnings

    old = config.parse({"model_list": [entry()], "litellm_settings": {"set_verbose": True}})
    new = config.parse({"model_list": [entry()], "litellm_settings": {"set_verbose": True, "json_logs": True}})
    assert new_warnings(new, old) == [w for w in new.warnings if "json_logs" in w] and len(new.warnings) == 2
    tuned = config.parse({"model_list": [entry(temperature=0.7)]})
    assert deployment_set_digest(tuned) != deployment_set_digest(config.parse({"model_list": [entry()]}))
