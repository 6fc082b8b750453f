"""Sentinel and Cluster URLs through redis-py's own clients: the cache, budgets and fleet limits on a real
3-node Redis Cluster, and a Sentinel primary failover under load that loses no request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment
from tests.integration.redis_ha import RedisClusterProcs, SentinelProcs
from tests.integration.test_budgets import priced
from tests.integration.test_cache import unique


def config(primary: FakeProvider, url: str, namespace: str) -> dict[str, Any]:
    limited = priced("h", primary)
    limited["litellm_params"]["rpm"] = 6000
    limited["model_info"]["id"] = "ha-limited"
    return {"model_list": [limited],
            "router_settings": {"timeout": 10, "num_retries": 0},
            "sidecar_settings": {
                "redis": {"url": url, "namespace": namespace},
                "cache": {"type": "redis", "ttl": 60, "namespace": namespace},
                "budgets": [{"name": "ha", "max_budget_usd": 100, "period": "1h"}],
                "fleet_rate_limits": {"deployments": ["ha-limited"], "expected_pods": 2}}}


def ask(sidecar: Sidecar, messages: list[dict[str, str]]) -> Any:
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    return client.chat.completions.with_raw_response.create(model="h", messages=messages, temperature=0)


@pytest.fixture
def cluster(workdir: Path) -> Iterator[RedisClusterProcs]:
    procs = RedisClusterProcs(workdir)
    yield procs
    procs.stop()


def test_cache_budgets_and_fleet_limits_on_a_three_node_cluster(
        workdir: Path, primary: FakeProvider, cluster: RedisClusterProcs) -> None:
    namespace = f"ha{time.time_ns()}"
    first, second = (Sidecar(config(primary, cluster.url, namespace), workdir, f"ha-cluster-{i}") for i in range(2))
    try:
        questions = [unique() for _ in range(12)]
        for messages in questions:
            assert ask(first, messages).headers["x-sidecar-cache"] == "miss"
        time.sleep(1.5)  # stores land after the answers; budgets flush and refresh
        for messages in questions:
            assert ask(second, messages).headers["x-sidecar-cache"] == "hit"
        assert primary.stats()["requests"] == 12
        per_node = cluster.keys_per_node()
        assert sum(1 for n in per_node if n) >= 2  # keys spread over the cluster's slots
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        deadline = time.monotonic() + 15  # a slow first contact (the slot map) may shut the gate for 5 s
        while not list(client.scan_iter(f"{namespace}:budget:*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        parts = client.hvals(next(k for k in client.scan_iter(f"{namespace}:budget:*")))  # a field per pod
        assert parts and sum(float(v) for v in parts) > 0
        assert list(client.scan_iter(f"{namespace}:fleet:*"))  # the fleet bucket
        client.close()
    finally:
        first.stop()
        second.stop()


def test_a_sentinel_primary_failover_under_load_loses_no_request(
        workdir: Path, primary: FakeProvider) -> None:
    sentinel = SentinelProcs(workdir)
    namespace = f"ha{time.time_ns()}"
    sidecar = Sidecar(config(primary, sentinel.url, namespace), workdir, "ha-sentinel")
    failures: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                ask(sidecar, unique())
                answered[0] += 1
            except Exception as error:  # every failure is what this test counts
                failures.append(error)

    try:
        messages = unique()
        assert ask(sidecar, messages).headers["x-sidecar-cache"] == "miss"
        time.sleep(0.5)
        assert ask(sidecar, messages).headers["x-sidecar-cache"] == "hit"
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        sentinel.fail_primary()
        time.sleep(7)  # the gate's 5 s backoff, then the sentinel names the new primary
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not failures and answered[0] > 20
        fresh = unique()
        ask(sidecar, fresh)
        time.sleep(0.5)
        assert ask(sidecar, fresh).headers["x-sidecar-cache"] == "hit"  # stored on the promoted primary
        promoted = redis.Redis(port=sentinel.replica_port)
        assert promoted.dbsize() >= 1
        promoted.close()
    finally:
        stop.set()
        sidecar.stop()
        sentinel.stop()


def test_the_shared_semantic_cache_on_a_three_node_cluster(
        workdir: Path, primary: FakeProvider, backup: FakeProvider, cluster: RedisClusterProcs) -> None:
    from tests.integration.test_semantic_fleet import ask as ask_semantic
    from tests.integration.test_semantic_fleet import wait_for

    namespace = f"ha-sem{time.time_ns()}"
    settings = {"model_list": [deployment("chat", primary), deployment("embed", backup, model="openai/bow-embed")],
                "router_settings": {"timeout": 10, "num_retries": 0},
                "sidecar_settings": {"redis": {"url": cluster.url, "namespace": namespace},
                                     "semantic_cache": {"embedding_model": "embed", "groups": ["chat"],
                                                        "threshold": 0.8, "timeout_ms": 500}}}
    first, second = (Sidecar(settings, workdir, f"ha-semantic-{i}") for i in range(2))
    try:
        before = primary.stats()["requests"]
        answer = ask_semantic(first, "Which river flows through the city of Vienna?")
        wait_for(second, "received", 1, timeout=15)
        again = ask_semantic(second, "which river flows through the city of vienna")
        assert again.headers["x-sidecar-cache"] == "semantic-hit"
        assert again.parse().choices[0].message.content == answer.parse().choices[0].message.content
        assert primary.stats()["requests"] == before + 1
    finally:
        first.stop()
        second.stop()
