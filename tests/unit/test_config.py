"""Configuration: every problem reported with its location; secrets resolved once; file secrets refreshed."""

from __future__ import annotations

import os
import socket
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
        "model_list[2].litellm_params.timeout: expected a number >= 0.001, got a string",
        "sidecar_settings.max_body_size_mb: expected a number >= 0.001, got -1",
        "router_settings.fallbacks: unknown model group 'nope'",
    ]
    for line in expected:
        assert line in found, (line, found)
    assert any(p.startswith("router_settings.routing_strategy: expected one of") for p in found)
    assert not any("colour" in p or "retries" in p or "extra" in p for p in found)  # LiteLLM's sections: warnings


def test_model_whose_provider_cannot_be_inferred() -> None:
    assert problems({"model_list": [entry(model="mystery-7b")]}) == [
        "model_list[0].litellm_params.model: cannot tell the provider of 'mystery-7b': write '<provider>/mystery-7b' "
        "(e.g. 'openai/mystery-7b' for an OpenAI-compatible server at api_base) (model_name 'gpt-4o')"]


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
        == ["sidecar_settings.hedging.gpt-4o.after: expected a number of seconds > 0 or 'p95', got a string"]


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
    assert "warning: router: unknown key, ignored" in failed.stderr



# ---- hardening (issue 13, point 6) ---------------------------------------------------------------------


def test_an_empty_key_file_is_a_problem_and_a_rotation_to_empty_keeps_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("\n")
    found = problems({"model_list": [entry(api_key=f"file:{key_file}")]})
    assert found == [f"model_list[0].litellm_params.api_key: secret file {key_file} is empty"]
    key_file.write_text("sk-good")
    secret = config.parse({"model_list": [entry(api_key=f"file:{key_file}")]}).deployments[0].api_key
    assert secret is not None
    key_file.write_text("")
    os.utime(key_file, (1, 1))
    assert secret.refresh() is False and secret.value == "sk-good"


def test_a_key_file_everyone_can_read_is_a_warning(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-good")
    key_file.chmod(0o644)
    cfg = config.parse({"model_list": [entry(api_key=f"file:{key_file}")]})
    assert cfg.warnings == (f"model_list[0].litellm_params.api_key: secret file {key_file} is readable by every "
                            "user (mode 0644); make it 0600 or 0640",)
    key_file.chmod(0o640)
    assert config.parse({"model_list": [entry(api_key=f"file:{key_file}")]}).warnings == ()


def test_a_mounted_kubernetes_secret_is_not_warned_about(tmp_path: Path) -> None:
    """A Secret volume's files link into its atomic writer's ``..<timestamp>`` directory; only the containers
    that mount it can read them, whatever their mode."""
    data = tmp_path / "..2026_01_01_00_00_00.000000001"
    data.mkdir()
    (data / "key").write_text("sk-good")
    (data / "key").chmod(0o644)
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "key").symlink_to("..data/key")
    assert config.parse({"model_list": [entry(api_key=f"file:{tmp_path / 'key'}")]}).warnings == ()


@pytest.mark.parametrize(("settings", "field"), [
    ({"max_body_size_mb": "sk-live-0123456789abcdef"}, "max_body_size_mb"),
    ({"log_level": "sk-live-0123456789abcdef"}, "log_level"),
    ({"listeners": {"header_timeout": "sk-live-0123456789abcdef"}}, "listeners.header_timeout"),
    ({"hedging": {"gpt-4o": {"after": "sk-live-0123456789abcdef"}}}, "hedging.gpt-4o.after"),
])
def test_a_secret_in_a_typed_field_is_not_echoed(settings: dict[str, object], field: str) -> None:
    found = problems({"model_list": [entry()], "sidecar_settings": settings})
    assert len(found) == 1 and found[0].startswith(f"sidecar_settings.{field}: expected")
    assert "0123456789abcdef" not in found[0] and "a string" in found[0]


def test_a_misspelt_choice_gets_a_suggestion() -> None:
    found = problems({"model_list": [entry()], "router_settings": {"routing_strategy": "simple_shuffle"}})
    assert "did you mean simple-shuffle?" in found[0]


def test_limits_and_listeners_settings() -> None:
    cfg = config.parse({"model_list": [entry()], "sidecar_settings": {
        "limits": {"max_stream_mb": 8, "max_stream_events": 1000},
        "listeners": {"header_timeout": 5, "body_timeout": 20, "idle_timeout": 30, "max_connections": 100,
                      "admin_max_connections": 8}}})
    assert cfg.sidecar.limits.max_stream_bytes == 8 * 1024 * 1024 and cfg.sidecar.limits.max_stream_events == 1000
    assert (cfg.sidecar.listeners.idle_timeout, cfg.sidecar.listeners.admin_max_connections) == (30, 8)
    assert problems({"model_list": [entry()], "sidecar_settings": {"listeners": {"max_connection": 1}}}) == \
        ["sidecar_settings.listeners.max_connection: unknown key"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=60)


def test_a_deeply_nested_yaml_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("model_list: " + "[" * 5000 + "]" * 5000 + "\n")
    for args in (("check-config", str(path)), ("serve", "--config", str(path))):
        result = _cli(*args)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert f"{path}: not valid YAML: nested too deeply" in result.stderr


def test_an_empty_key_file_stops_check_config_and_serve(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("")
    path = tmp_path / "c.yaml"
    path.write_text(f"model_list:\n  - model_name: m\n    litellm_params: {{model: openai/x, api_key: "
                    f"'file:{tmp_path}/key'}}\n")
    for args in (("check-config", str(path)), ("serve", "--config", str(path))):
        result = _cli(*args)
        assert result.returncode != 0 and "is empty" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: openai/x, api_key: k}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("serve", "--config", str(path), "--port", str(port), "--admin-port", "0",
                      "--admin-host", "127.0.0.1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
