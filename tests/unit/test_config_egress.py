"""Egress settings (issue 12): proxies read from the environment as curl and httpx read them, per-deployment
overrides, answer limits, and config that could never send a request refused by ``check-config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar import config
from sidecar.config.egress import Proxy, ProxySettings, parse_proxy, proxy_settings
from tests.unit.test_config import entry, problems


def settings(**env: str) -> ProxySettings:
    found: list[str] = []
    result = proxy_settings(env, found)
    assert found == []
    return result


def test_the_variable_for_the_scheme_then_all_proxy_lower_case_first() -> None:
    env = settings(HTTPS_PROXY="http://upper:3128", https_proxy="http://lower:3128", ALL_PROXY="fallback:8080")
    assert env.choose("https", "api.openai.com", 443) == Proxy("lower", 3128)
    assert env.choose("http", "ollama", 11434) == Proxy("fallback", 8080)  # schemeless means http://
    assert settings(HTTP_PROXY="http://p:1").choose("https", "x", 443) is None  # http's proxy is not https's
    # a lower-case variable set but empty hides the upper-case one
    assert settings(https_proxy="", HTTPS_PROXY="http://p:1").choose("https", "x", 443) is None


def test_credentials_become_proxy_authorization() -> None:
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy.corp:3128")
    assert (proxy.host, proxy.port, proxy.authorization) == ("proxy.corp", 3128, "Basic dXNAZXI6cDpzcw==")
    assert "p:ss" not in repr(proxy) and "dXNA" not in repr(proxy)


@pytest.mark.parametrize("value", ["https://proxy:443", "socks5://proxy:1080", "http://proxy:3128/path", "http://:80"])
def test_unusable_proxies_are_problems_naming_the_variable(value: str) -> None:
    found: list[str] = []
    proxy_settings({"HTTPS_PROXY": value}, found)
    assert len(found) == 1 and found[0].startswith("environment HTTPS_PROXY: ")


@pytest.mark.parametrize(("no_proxy", "host", "port", "direct"), [
    ("*", "api.openai.com", 443, True),
    ("example.com", "example.com", 443, True),
    ("example.com", "api.example.com", 443, True),
    (".example.com", "api.example.com", 443, True),
    ("*.example.com", "api.example.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("EXAMPLE.com.", "api.Example.COM", 443, True),
    ("10.0.0.0/8, 192.168.1.1", "10.20.30.40", 443, True),
    ("10.0.0.0/8, 192.168.1.1", "192.168.1.1", 443, True),
    ("10.0.0.0/8, 192.168.1.1", "192.168.1.2", 443, False),
    ("fd00::/8", "fd12::1", 443, True),
    ("::1", "::1", 443, True),
    ("svc.cluster.local:8080", "sglang.svc.cluster.local", 8080, True),
    ("svc.cluster.local:8080", "sglang.svc.cluster.local", 443, False),
    ("[::1]:8080", "::1", 8080, True),
    ("localhost 127.0.0.1", "127.0.0.1", 80, True),
    ("", "api.openai.com", 443, False),
])
def test_no_proxy_as_curl_reads_it(no_proxy: str, host: str, port: int, direct: bool) -> None:
    env = settings(HTTPS_PROXY="http://proxy:3128", HTTP_PROXY="http://proxy:3128", NO_PROXY=no_proxy)
    assert (env.choose("https", host, port) is None) == direct


def test_a_deployment_may_override_the_environment() -> None:
    env = settings(HTTPS_PROXY="http://proxy:3128")
    assert env.choose("https", "api.openai.com", 443, "none") is None
    assert env.choose("https", "api.openai.com", 443, "http://other:8080") == Proxy("other", 8080)
    cfg = config.parse({"model_list": [entry(proxy="none"), entry(name="b", proxy="http://u:p@other:8080")]},
                       environ={"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "internal"})
    assert [d.proxy for d in cfg.deployments] == ["none", "http://u:p@other:8080"]
    assert cfg.sidecar.proxies.choose("https", "api.openai.com", 443) == Proxy("proxy", 3128)
    assert problems({"model_list": [entry(proxy="https://p:1")]}) == [
        "model_list[0].litellm_params.proxy: 'https://' proxies are not supported (only http://) (or 'none' to go "
        "direct)"]


def test_limits_and_connect_timeout() -> None:
    cfg = config.parse({"model_list": [entry()], "sidecar_settings": {
        "connect_timeout_seconds": 3, "limits": {"upstream_answer_mb": 8, "upstream_answers_total_mb": 32,
                                                 "upstream_sse_event_mb": 0.5}}})
    assert cfg.sidecar.connect_timeout_seconds == 3.0
    assert (cfg.sidecar.limits.upstream_answer_mb, cfg.sidecar.limits.upstream_answers_total_mb) == (8.0, 32.0)
    assert cfg.deployments[0].max_sse_event_bytes == 512 * 1024
    assert problems({"model_list": [entry()], "sidecar_settings": {"limits": {"upstream_answer_mb": 0,
                                                                                "answers": 1}}}) == [
        "sidecar_settings.limits.upstream_answer_mb: expected a number >= 0.001, got 0",
        "sidecar_settings.limits.answers: unknown key"]


@pytest.mark.parametrize(("params", "message"), [
    ({"extra_headers": {"x-team": "a\r\nx-injected: 1"}}, "header x-team: the value contains a control character"),
    ({"extra_headers": {"x-team": "a\x00"}}, "header x-team: the value contains a control character"),
    ({"extra_headers": {"bad name": "a"}}, "'bad name' is not a valid header name"),
    ({"extra_headers": {"x-list": ["a"]}}, "header x-list: expected a string value"),
    ({"api_key": "sk-\nabc"}, "the value contains a control character"),
    ({"api_base": "https://api.openai.com/v1 "}, "the URL contains whitespace or a control character"),
    ({"api_base": "api.openai.com/v1"}, "expected an http:// or https:// URL with a host"),
])
def test_what_no_request_could_carry_is_refused_at_load(params: dict[str, object], message: str) -> None:
    [problem] = problems({"model_list": [entry(**params)]})
    assert message in problem and problem.startswith("model_list[0].litellm_params.")


def test_keys_from_the_environment_lose_surrounding_whitespace_as_from_files() -> None:
    cfg = config.parse({"model_list": [entry(api_key="os.environ/KEY")]}, environ={"KEY": "sk-from-env\n"})
    assert cfg.deployments[0].api_key is not None and cfg.deployments[0].api_key.value == "sk-from-env"
    assert problems({"model_list": [entry(api_key="os.environ/KEY")]}, environ={"KEY": "sk-a\nsk-b\n"}) == [
        "model_list[0].litellm_params.api_key: the value contains a control character (CR, LF, NUL, ...)"]


def test_check_config_refuses_a_header_value_with_a_line_break(tmp_path: Path) -> None:
    """Issue 12 point 7: this config made every request fail with 500 while check-config said ok."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [entry(extra_headers={"x-team": "a\nb"})]}))
    result = subprocess.run([sys.executable, "-m", "sidecar", "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "x-team" in result.stdout + result.stderr


def test_pool_settings_take_effect_at_restart_the_sse_event_cap_at_reload() -> None:
    from sidecar.config.changes import compare

    old = config.parse({"model_list": [entry()]})
    new = config.parse({"model_list": [entry()], "sidecar_settings": {
        "connect_timeout_seconds": 3, "limits": {"upstream_answer_mb": 8, "upstream_sse_event_mb": 1}}})
    assert compare(old, new).restart_only == ("connect_timeout_seconds", "limits.upstream_answer_mb")
    assert new.deployments[0].max_sse_event_bytes == 1024 * 1024  # travels with the deployments
