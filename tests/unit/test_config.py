"""Configuration: every problem reported with its location; secrets resolved once; file secrets refreshed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import config
from sidecar.config import ConfigError


def entry(name: str = "gpt-4o", model: str = "openai/gpt-4o", **params: object) -> dict[str, object]:
    return {"model_name": name, "litellm_params": {"model": model, "api_key": "sk-test", **params}}


def problems(data: object, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(data, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_a_litellm_config_parses_into_typed_objects() -> None:
    cfg = config.parse({
        "model_list": [entry(weight=3, order=1, timeout=30, stream_timeout=5, rpm=10),
                       entry(model="groq/llama-3.3-70b", api_key="os.environ/GROQ_KEY"),
                       entry(name="small", model="azure/dep", api_base="https://r.openai.azure.com",
                             api_version="2024-10-21")],
        "router_settings": {"routing_strategy": "least-busy", "num_retries": 1, "allowed_fails": 2,
                            "retry_policy": {"RateLimitErrorRetries": 4}, "fallbacks": [{"gpt-4o": ["small"]}]},
        "litellm_settings": {"request_timeout": 45},
        "general_settings": {"master_key": "sk-inbound"},
    }, environ={"GROQ_KEY": "gsk-1"})
    group = cfg.groups["gpt-4o"]
    first, second = group.deployments
    assert (first.provider, first.model, first.api_base) == ("openai", "gpt-4o", "https://api.openai.com/v1")
    assert (first.weight, first.order, first.timeout, first.stream_timeout, first.rpm) == (3.0, 1, 30.0, 5.0, 10)
    assert second.api_key is not None and second.api_key.value == "gsk-1"
    assert second.api_base == "https://api.groq.com/openai/v1"
    assert cfg.router.routing_strategy == "least-busy" and cfg.router.timeout == 45.0
    assert cfg.router.retry_policy == {"RateLimitErrorRetries": 4}
    assert cfg.router.fallbacks == {"gpt-4o": ("small",)}
    assert [k.value for k in cfg.sidecar.inbound_api_keys] == ["sk-inbound"]
    assert cfg.sidecar.max_body_bytes == 32 * 1024 * 1024


def test_every_problem_is_reported_with_its_location() -> None:
    found = problems({
        "model_list": [entry(), entry(model="opnai/gpt-4o"), {"model_name": "x", "litellm_params": {
            "model": "openai/x", "timeout": "soon", "colour": "blue"}}],
        "router_settings": {"routing_strategy": "fastest", "retries": 3, "fallbacks": [{"gpt-4o": ["nope"]}]},
        "sidecar_settings": {"max_body_size_mb": -1},
        "extra": True,
    })
    assert "model_list[1].litellm_params.model: unknown provider 'opnai'" in found[0] or any(
        p.startswith("model_list[1].litellm_params.model: unknown provider 'opnai'") for p in found)
    expected = [
        "model_list[2].litellm_params.timeout: expected a number >= 0.001, got 'soon'",
        "model_list[2].litellm_params.colour: unknown key",
        "router_settings.retries: unknown key",
        "sidecar_settings.max_body_size_mb: expected a number >= 0.001, got -1",
        "extra: unknown key",
        "router_settings.fallbacks: unknown model group 'nope'",
    ]
    for line in expected:
        assert line in found, (line, found)
    assert any(p.startswith("router_settings.routing_strategy: expected one of") for p in found)


def test_model_without_provider_prefix() -> None:
    assert problems({"model_list": [entry(model="gpt-4o")]}) == [
        "model_list[0].litellm_params.model: expected '<provider>/<model>', got 'gpt-4o'"]


def test_provider_without_default_base_needs_api_base() -> None:
    assert problems({"model_list": [entry(model="hosted_vllm/llama")]}) == [
        "model_list[0].litellm_params.api_base: required for provider 'hosted_vllm'"]


def test_missing_environment_secret_is_a_problem_unless_skipped() -> None:
    data = {"model_list": [entry(api_key="os.environ/NOT_SET_ANYWHERE")]}
    assert problems(data, environ={}) == [
        "model_list[0].litellm_params.api_key: environment variable NOT_SET_ANYWHERE is not set"]
    assert config.parse(data, environ={}, resolve_secrets=False).groups


def test_environment_variables_section_feeds_secrets() -> None:
    cfg = config.parse({"environment_variables": {"K": "from-config"},
                        "model_list": [entry(api_key="os.environ/K")]}, environ={})
    assert cfg.deployments[0].api_key.value == "from-config"  # type: ignore[union-attr]


def test_file_secret_is_read_and_refreshed(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("first\n")
    cfg = config.parse({"model_list": [entry(api_key=f"file:{key_file}")]})
    secret = cfg.deployments[0].api_key
    assert secret is not None and secret.value == "first"
    assert "first" not in repr(secret)
    key_file.write_text("second\n")
    os.utime(key_file, (1, 1))  # a different mtime, whatever the clock's resolution
    assert secret.refresh() is True and secret.value == "second"
    assert secret.refresh() is False
    key_file.unlink()
    assert secret.refresh() is False and secret.value == "second"  # keep the last good value


def test_unreadable_file_secret(tmp_path: Path) -> None:
    found = problems({"model_list": [entry(api_key=f"file:{tmp_path}/missing")]})
    assert found[0].startswith("model_list[0].litellm_params.api_key: cannot read secret file")


def test_duplicate_deployments_get_distinct_ids() -> None:
    cfg = config.parse({"model_list": [entry(), entry(), entry(model="openai/gpt-4o-mini")]})
    assert [d.id for d in cfg.deployments] == ["openai/gpt-4o", "openai/gpt-4o#2", "openai/gpt-4o-mini"]


def test_catch_all_and_hedging_settings() -> None:
    cfg = config.parse({"model_list": [entry()], "sidecar_settings": {
        "catch_all": {"static_response": "sorry", "last_good": True, "max_entries": 10},
        "hedging": {"gpt-4o": {"after": "p95"}}}})
    assert cfg.sidecar.catch_all.enabled and cfg.sidecar.catch_all.max_entries == 10
    assert cfg.sidecar.hedging["gpt-4o"].after is None
    assert problems({"model_list": [entry()], "sidecar_settings": {"hedging": {"gpt-4o": {"after": "soon"}}}}) \
        == ["sidecar_settings.hedging.gpt-4o.after: expected a number of seconds > 0 or 'p95', got 'soon'"]


def test_empty_config() -> None:
    assert problems(None) == ["model_list: at least one deployment is required"]
    assert problems([1, 2]) == ["(top level): expected a mapping"]


def test_check_config_command(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: openai/x, api_key: k}\n")
    bad.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: opnai/x}\nrouter: {}\n")
    ok = subprocess.run([sys.executable, "-m", "sidecar", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "sidecar", "check-config", str(bad)], capture_output=True,
                            text=True)
    assert failed.returncode == 1
    assert "model_list[0].litellm_params.model: unknown provider 'opnai'" in failed.stderr
    assert "router: unknown key" in failed.stderr
