"""sidecar_settings.cache / budgets / redis and LiteLLM's cache and max_budget keys."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.config.shared import parse_duration
from tests.unit.test_config import entry, problems


def parse(sidecar: dict[str, object] | None = None, litellm: dict[str, object] | None = None,
          environ: dict[str, str] | None = None) -> config.Config:
    data: dict[str, object] = {"model_list": [entry(), entry(name="small")]}
    if sidecar is not None:
        data["sidecar_settings"] = sidecar
    if litellm is not None:
        data["litellm_settings"] = litellm
    return config.parse(data, environ=environ or {})


def test_nothing_configured_means_no_cache_no_budgets_no_redis() -> None:
    shared = parse().sidecar.shared
    assert (shared.cache, shared.budgets, shared.redis) == (None, (), None)


def test_the_cross_pod_lock_is_on_by_default_and_zero_turns_it_off() -> None:
    assert parse({"cache": {"type": "local"}}).sidecar.shared.cache.fleet_lock_ms == 3000  # type: ignore[union-attr]
    cache = parse({"cache": {"type": "redis", "host": "r", "fleet_lock_ms": 0}}).sidecar.shared.cache
    assert cache is not None and cache.fleet_lock_ms == 0


def test_a_local_cache() -> None:
    cache = parse({"cache": {"type": "local", "ttl": 30, "max_size": 10, "mode": "all"}}).sidecar.shared.cache
    assert cache is not None and (cache.type, cache.ttl, cache.max_size, cache.mode, cache.redis) == (
        "local", 30.0, 10, "all", None)


def test_a_redis_cache_from_a_url_with_its_password_from_the_environment() -> None:
    cfg = parse({"cache": {"type": "redis", "redis_url": "os.environ/REDIS_URL", "namespace": "app"}},
                environ={"REDIS_URL": "rediss://user:p%40ss@redis.svc:6380/2"})
    shared = cfg.sidecar.shared
    redis = shared.cache.redis  # type: ignore[union-attr]
    assert redis is not None and (redis.host, redis.port, redis.db, redis.username, redis.ssl) == (
        "redis.svc", 6380, 2, "user", True)
    assert redis.password is not None and redis.password.value == "p@ss" and "p@ss" not in repr(redis)
    assert shared.redis == redis and shared.namespace == "app"  # budgets use the cache's Redis


def test_a_redis_cache_from_host_port_password_or_the_shared_redis() -> None:
    redis = parse({"cache": {"type": "redis", "host": "r", "port": "6390", "password": "os.environ/PW"}},
                  environ={"PW": "pw"}).sidecar.shared.cache.redis  # type: ignore[union-attr]
    assert redis is not None and (redis.host, redis.port, redis.password.value) == ("r", 6390, "pw")  # type: ignore
    shared = parse({"redis": {"url": "redis://shared:7000", "namespace": "ns"},
                    "cache": {"type": "redis"}}).sidecar.shared
    assert shared.cache.redis.host == "shared" and shared.redis.port == 7000  # type: ignore[union-attr]
    assert shared.namespace == "ns"


def test_cache_problems_have_locations() -> None:
    found = problems({"model_list": [entry()], "sidecar_settings": {"cache": {
        "type": "memcached", "ttl": 0, "colour": "red", "mode": "sometimes", "fleet_lock_ms": -1}}})
    assert "sidecar_settings.cache.colour: unknown key" in found
    assert "sidecar_settings.cache.fleet_lock_ms: expected an integer >= 0, got -1" in found
    assert "sidecar_settings.cache.ttl: expected a number >= 0.001, got 0" in found
    assert any(p.startswith("sidecar_settings.cache.type: expected one of local, redis") for p in found)
    assert any(p.startswith("sidecar_settings.cache.mode: expected one of") for p in found)
    assert problems({"model_list": [entry()], "sidecar_settings": {"cache": {"type": "redis"}}}, environ={}) == [
        "sidecar_settings.cache.type: a redis cache needs redis_url or host (or sidecar_settings.redis, "
        "or REDIS_HOST)"]
    found = problems({"model_list": [entry()], "sidecar_settings": {
        "redis": {"url": "http://user:secret@x", "timeout": 1}}})
    assert found == ["sidecar_settings.redis.url: expected redis://[user:password@]host[:port][/db] or rediss://...",
                     "sidecar_settings.redis.timeout: unknown key"]


def test_litellm_cache_settings_work_unchanged() -> None:
    cache = parse(litellm={"cache": True, "cache_params": {"type": "redis", "host": "os.environ/REDIS_HOST",
                                                           "port": "os.environ/REDIS_PORT",
                                                           "password": "os.environ/REDIS_PASSWORD", "ttl": 120,
                                                           "namespace": "litellm"}},
                  environ={"REDIS_HOST": "h", "REDIS_PORT": "6379", "REDIS_PASSWORD": "x"}).sidecar.shared.cache
    assert cache is not None and cache.type == "redis" and cache.ttl == 120 and cache.namespace == "litellm"
    assert cache.redis is not None and cache.redis.host == "h" and cache.redis.password.value == "x"  # type: ignore
    env_only = parse(litellm={"cache": True}, environ={"REDIS_HOST": "envhost"}).sidecar.shared.cache
    assert env_only is not None and env_only.redis.host == "envhost"  # type: ignore[union-attr]
    assert parse(litellm={"cache": False, "cache_params": {"type": "redis"}}).sidecar.shared.cache is None
    assert problems({"model_list": [entry()], "litellm_settings": {"cache": True, "cache_params": {"type": "local"}},
                     "sidecar_settings": {"cache": {"type": "local"}}}) == [
        "sidecar_settings.cache: set either sidecar_settings.cache or litellm_settings.cache, not both"]


def test_budgets_and_litellm_max_budget() -> None:
    budgets = parse({"budgets": [{"name": "team", "max_budget_usd": 50, "period": "7d", "models": ["small"]}]},
                    {"max_budget": 100, "budget_duration": "30d"}).sidecar.shared.budgets
    assert [(b.name, b.max_budget_usd, b.period, b.models) for b in budgets] == [
        ("team", 50.0, 7 * 86400.0, ("small",)), ("global", 100.0, 30 * 86400.0, ())]


def test_budget_problems_have_locations() -> None:
    found = problems({"model_list": [entry()], "sidecar_settings": {"budgets": [
        {"name": "a", "max_budget_usd": 1, "period": "fortnight"},
        {"max_budget_usd": -1, "period": "1d", "extra": 1},
        {"name": "b", "period": "1h", "models": ["nope"]},
        {"name": "b", "max_budget_usd": 1, "period": "1h"},
        {"name": "c", "max_budget_usd": 1, "period": "1h", "models": ["nope"]},
    ]}, "litellm_settings": {"max_budget": 5}})
    expected = [
        "sidecar_settings.budgets[0].period: expected a duration like 1h, 1d, 7d, 30d, got a string",
        "sidecar_settings.budgets[1].name: is required",
        "sidecar_settings.budgets[1].max_budget_usd: expected a number >= 1e-06, got -1",
        "sidecar_settings.budgets[1].extra: unknown key",
        "sidecar_settings.budgets[2].max_budget_usd: is required",
        "litellm_settings.budget_duration: a duration like 1h, 1d, 30d is required with max_budget "
        "(budgets reset every fixed window)",
        "sidecar_settings.budgets: budget 'c': unknown model group 'nope'",
    ]
    for line in expected:
        assert line in found, (line, found)
    assert len(found) == len(expected)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("1d", 86400.0), ("2w", 14 * 86400.0), ("1mo", 30 * 86400.0),
    (90, 90.0), ("1.5h", 5400.0), ("0h", None), ("h", None), ("1y", None), (True, None), (-1, None)])
def test_durations(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_sentinel_and_cluster_urls() -> None:
    redis = parse({"redis": {"url": "redis+sentinel://:s%40cret@s1:26379,s2:26380/mymaster/3"}}).sidecar.shared.redis
    assert redis is not None and (redis.mode, redis.nodes, redis.service, redis.db, redis.ssl) == (
        "sentinel", (("s1", 26379), ("s2", 26380)), "mymaster", 3, False)
    assert redis.password is not None and redis.password.value == "s@cret" and "cret" not in redis.address
    cluster = parse({"cache": {"type": "redis", "redis_url": "rediss+cluster://n1:7000,n2:7001"}}).sidecar.shared.redis
    assert cluster is not None and (cluster.mode, cluster.nodes, cluster.ssl) == (
        "cluster", (("n1", 7000), ("n2", 7001)), True)
    for bad, message in [("redis+sentinel://s1:26379", "names the primary's service"),
                         ("redis+cluster://n1:7000/2", "has no path"),
                         ("redis+cluster://user:pw@n1", "expected redis+sentinel://")]:
        found = problems({"model_list": [entry()], "sidecar_settings": {"redis": {"url": bad}}})
        assert len(found) == 1 and message in found[0] and "pw" not in found[0]


def test_inbound_keys_with_teams_budgets_by_team_and_user_and_fleet_limits() -> None:
    sidecar = parse({
        "inbound_api_keys": ["plain-key", {"key": "os.environ/TEAM_KEY", "name": "app", "team": "search"}],
        "redis": {"url": "redis://r:6379"},
        "budgets": [{"name": "t", "team": "search", "max_budget_usd": 5, "soft_budget_usd": 4, "period": "1d"},
                    {"name": "u", "per": "user", "users": ["a", "b"], "max_budget_usd": 1, "period": "1h"}],
        "fleet_rate_limits": {"deployments": ["openai/gpt-4o"], "expected_pods": 4}},
        environ={"TEAM_KEY": "sk-team"}).sidecar
    assert [k.value for k in sidecar.inbound_api_keys] == ["plain-key", "sk-team"]
    assert [(o.name, o.team) for o in sidecar.key_owners] == [("key-0", None), ("app", "search")]
    team, user = sidecar.shared.budgets
    assert (team.teams, team.soft_budget_usd, team.per) == (("search",), 4.0, None)
    assert (user.per, user.users, user.scoped) == ("user", ("a", "b"), True)
    assert sidecar.shared.fleet is not None and sidecar.shared.fleet.expected_pods == 4
    found = problems({"model_list": [entry()], "sidecar_settings": {
        "budgets": [{"name": "x", "per": "planet", "max_budget_usd": 1, "soft_budget_usd": 2, "period": "1d"}],
        "fleet_rate_limits": {"deployments": ["d"]}}})
    assert any(p.startswith("sidecar_settings.budgets[0].per: expected one of team, key, user") for p in found)
    assert "sidecar_settings.budgets[0].soft_budget_usd: must be below max_budget_usd" in found
    assert any("expected_pods: is required" in p for p in found)
    assert any("fleet rate limits need a Redis" in p for p in found)


def test_the_semantic_cache_shares_its_entries_by_default_and_shared_false_keeps_them_in_the_pod() -> None:
    semantic = {"embedding_model": "small", "groups": ["gpt-4o"]}
    on = parse({"semantic_cache": semantic, "redis": {"url": "redis://r:6379/0"}}).sidecar.shared.semantic
    assert on is not None and on.shared
    off = parse({"semantic_cache": {**semantic, "shared": False}}).sidecar.shared.semantic
    assert off is not None and not off.shared
    assert problems({"model_list": [entry()], "sidecar_settings": {"semantic_cache": {**semantic, "shared": 3}}})
