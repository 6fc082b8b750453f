"""``litellm_params.replicas`` of sglang deployments: static lists, dns, and their problems."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.config import ConfigError


def _sglang(**params: object) -> dict[str, object]:
    return {"model_list": [{"model_name": "local", "litellm_params": {"model": "sglang/my-model", **params}}]}


def _problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(data)  # type: ignore[arg-type]
    return info.value.problems


def test_static_replicas_are_used_instead_of_api_base() -> None:
    cfg = config.parse(_sglang(replicas=["http://10.0.0.5:30000/v1/", "http://10.0.0.6:30000/v1"],
                               max_queue_per_replica=4))
    deployment = cfg.deployments[0]
    assert deployment.replicas is not None
    assert deployment.replicas.urls == ("http://10.0.0.5:30000/v1", "http://10.0.0.6:30000/v1")
    assert deployment.replicas.max_queue == 4 and deployment.replicas.refresh_seconds == 10.0
    assert deployment.api_base == "http://10.0.0.5:30000/v1"
    assert (deployment.replicas.spread, deployment.replicas.keep_factor) == (1, None)  # the defaults
    assert not cfg.warnings
    tuned = config.parse(_sglang(replicas=["http://10.0.0.5:30000/v1"], replica_spread=2, replica_keep_factor=2.5))
    assert (tuned.deployments[0].replicas.spread, tuned.deployments[0].replicas.keep_factor) == (2, 2.5)


def test_dns_replicas_resolve_the_api_base_host() -> None:
    cfg = config.parse(_sglang(replicas="dns", api_base="http://sglang.gpu.svc.cluster.local:30000/v1",
                               replica_refresh_seconds=3))
    assert cfg.deployments[0].replicas.dns and cfg.deployments[0].replicas.refresh_seconds == 3.0


def test_replica_problems_have_locations() -> None:
    assert any("replicas[1]" in p for p in _problems(_sglang(replicas=["http://a:1/v1", "ftp://b"])))
    assert any("api_base" in p for p in _problems(_sglang(replicas="dns")))
    assert any("only sglang" in p for p in _problems(
        {"model_list": [{"model_name": "x", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k",
                                                               "replicas": ["http://a:1/v1"]}}]}))
    assert any("replicas" in p for p in _problems(_sglang(replicas=[])))
    wildcard = {"model_list": [{"model_name": "sglang/*", "litellm_params": {
        "model": "sglang/*", "api_base": "http://sglang:30000/v1", "replicas": ["http://a:1/v1", "http://b:1/v1"]}}]}
    assert any("wildcard model_name cannot have replicas" in p for p in _problems(wildcard))


def test_the_health_path_is_a_path() -> None:
    replicas = config.parse(_sglang(replicas=["http://a:1/v1"], replica_health_path="/ready")).deployments[0].replicas
    assert replicas is not None and replicas.health_path == "/ready"
    assert config.parse(_sglang(replicas=["http://a:1/v1"])).deployments[0].replicas.health_path == "/health"
    assert any("replica_health_path" in p for p in _problems(_sglang(replicas=["http://a:1/v1"],
                                                                     replica_health_path="ready")))


def test_replica_share_needs_a_redis() -> None:
    assert any("replica_share: redis needs a Redis" in p for p in _problems(
        _sglang(replicas=["http://a:1/v1"], replica_share="redis")))
    assert any("replica_share" in p and "one of none, redis" in p for p in _problems(
        _sglang(replicas=["http://a:1/v1"], replica_share="gossip")))
    shared = config.parse({**_sglang(replicas=["http://a:1/v1"], replica_share="redis"),
                           "sidecar_settings": {"redis": {"url": "redis://redis.infra:6379/0"}}})
    assert shared.deployments[0].replicas.share and not shared.warnings
    assert not config.parse(_sglang(replicas=["http://a:1/v1"])).deployments[0].replicas.share
