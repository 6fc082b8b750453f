"""The response cache, as the app sees it: a real sidecar (memory or a real Redis) in front of the fake.

Every test asks something no other test asks (``unique()``), so the module's shared sidecar and the
session's Redis never answer one test from another's entry.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment

_counter = itertools.count()


def unique(text: str = "cache me") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text} #{next(_counter)} {time.time_ns()}"}]


def client_for(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def config(primary: FakeProvider, cache: dict[str, Any]) -> dict[str, Any]:
    return {"model_list": [deployment("c", primary), deployment("e", primary)],
            "router_settings": {"timeout": 10, "num_retries": 0},
            "sidecar_settings": {"cache": cache}}


@pytest.fixture(scope="module")
def local(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    sidecar = Sidecar(config(primary, {"type": "local", "ttl": 60, "max_size": 100}), workdir, "cache-local")
    yield sidecar
    sidecar.stop()


def chat(sidecar: Sidecar, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return client_for(sidecar).chat.completions.with_raw_response.create(model="c", messages=messages, **kwargs)


def test_a_second_identical_deterministic_request_is_a_hit_without_an_upstream_call(
        local: Sidecar, primary: FakeProvider) -> None:
    messages = unique()
    first = chat(local, messages, temperature=0)
    # `user` and `metadata` do not change the answer: still the same entry
    second = chat(local, messages, temperature=0, user="someone-else")
    assert first.headers["x-sidecar-cache"] == "miss" and second.headers["x-sidecar-cache"] == "hit"
    assert second.headers["x-sidecar-attempts"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert primary.stats()["requests"] == 1
    metrics = requests.get(f"{local.admin_url}/metrics").text
    assert 'llm_sidecar_requests_total{model_group="c",deployment="",outcome="cache_hit"}' in metrics
    assert '"outcome":"cache_hit"' in _wait_log(local, '"outcome":"cache_hit"')


def _wait_log(sidecar: Sidecar, needle: str) -> str:
    deadline = time.monotonic() + 5
    while needle not in sidecar.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    return sidecar.logs()


def test_sampled_requests_and_streams_are_not_cached(local: Sidecar, primary: FakeProvider) -> None:
    messages = unique()
    for _ in range(2):
        raw = chat(local, messages, temperature=0.7)
        assert "x-sidecar-cache" not in raw.headers
    chat(local, messages)  # no temperature: the provider's default samples
    assert primary.stats()["requests"] == 3
    for _ in range(2):
        stream = client_for(local).chat.completions.create(model="c", messages=messages, temperature=0.7,
                                                           stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert primary.stats()["requests"] == 5
    chat(local, messages, temperature=0, n=2)
    assert primary.stats()["requests"] == 6


def test_cache_control_no_cache_skips_the_lookup_and_no_store_skips_the_cache(
        local: Sidecar, primary: FakeProvider) -> None:
    messages = unique()
    chat(local, messages, temperature=0)
    fresh = chat(local, messages, temperature=0, extra_headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-sidecar-cache"] == "miss" and primary.stats()["requests"] == 2
    untouched = chat(local, messages, temperature=0, extra_headers={"Cache-Control": "no-store"})
    assert "x-sidecar-cache" not in untouched.headers and primary.stats()["requests"] == 3
    assert chat(local, messages, temperature=0).headers["x-sidecar-cache"] == "hit"
    assert primary.stats()["requests"] == 3


def test_embeddings_are_cached(local: Sidecar, primary: FakeProvider) -> None:
    text = unique()[0]["content"]
    embeddings = client_for(local).embeddings.with_raw_response
    first, second = (embeddings.create(model="e", input=[text]) for _ in range(2))
    assert (first.headers["x-sidecar-cache"], second.headers["x-sidecar-cache"]) == ("miss", "hit")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert primary.stats()["requests"] == 1


def test_two_sidecars_share_a_redis_cache(workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    cache = {"type": "redis", "redis_url": redis_server.url, "ttl": 60, "namespace": f"t{time.time_ns()}"}
    first, second = (Sidecar(config(primary, cache), workdir, f"cache-redis-{i}") for i in range(2))
    try:
        messages = unique()
        stored = redis_server.keys()
        assert chat(first, messages, temperature=0).headers["x-sidecar-cache"] == "miss"
        redis_server.wait_for_keys(stored + 1)  # the store happens just after the answer is sent
        hit = chat(second, messages, temperature=0)
        assert hit.headers["x-sidecar-cache"] == "hit" and hit.parse().choices[0].message.content
        assert primary.stats()["requests"] == 1
    finally:
        first.stop()
        second.stop()


def test_a_redis_that_dies_leaves_the_memory_tier_and_requests_keep_working(
        workdir: Path, primary: FakeProvider) -> None:
    password = "redis-pass-SECRET-31337"
    redis = RedisServer(workdir, "redis-dies", password=password)
    cache = {"type": "redis", "host": "127.0.0.1", "port": redis.port, "password": password, "ttl": 60}
    sidecar = Sidecar(config(primary, cache), workdir, "cache-redis-dies")
    try:
        messages = unique()
        assert chat(sidecar, messages, temperature=0).headers["x-sidecar-cache"] == "miss"
        redis.wait_for_keys(1)  # the store lands after the answer is sent
        assert chat(sidecar, messages, temperature=0).headers["x-sidecar-cache"] == "hit"
        redis.stop()
        # the memory tier still has what this pod stored; anything else is a miss, served as usual
        assert chat(sidecar, messages, temperature=0).headers["x-sidecar-cache"] == "hit"
        fresh = unique()
        for i in range(3):
            started = time.monotonic()
            answer = chat(sidecar, fresh, temperature=0, extra_headers={"Cache-Control": "no-cache"} if i else None)
            assert answer.headers["x-sidecar-cache"] == "miss" and answer.parse().choices[0].message.content
            assert time.monotonic() - started < 2  # never waits on the dead Redis for long
        assert primary.stats()["requests"] == 4
        logs = _wait_log(sidecar, "unavailable for the response cache")
        assert logs.count("unavailable for the response cache") == 1  # once per failure burst
        assert password not in logs
    finally:
        sidecar.stop()
        redis.stop()
