"""The two-tier cache with a real Redis: memory in front, a Redis hit filling memory for the time left,
large answers compressed in Redis, streams shared by two sidecars."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import openai
import redis
import requests

from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment
from tests.integration.test_cache import chat, unique


def config(primary: FakeProvider, redis_server: RedisServer, namespace: str, ttl: float) -> dict[str, object]:
    return {"model_list": [deployment("c", primary)],
            "router_settings": {"timeout": 10, "num_retries": 0},
            "sidecar_settings": {"cache": {"type": "redis", "redis_url": redis_server.url, "ttl": ttl,
                                           "namespace": namespace, "max_size": 50}}}


def test_a_redis_hit_fills_memory_which_answers_without_redis_until_the_entry_expires(
        workdir: Path, primary: FakeProvider) -> None:
    server = RedisServer(workdir, "redis-tiers")
    namespace = f"tiers{time.time_ns()}"
    first, second = (Sidecar(config(primary, server, namespace, 4), workdir, f"tiers-{i}") for i in range(2))
    try:
        primary.set(text="a long answer " * 600)  # ~8 KiB: stored compressed
        messages = unique()
        assert chat(first, messages, temperature=0).headers["x-sidecar-cache"] == "miss"
        server.wait_for_keys(1)
        client = redis.Redis(host="127.0.0.1", port=server.port)
        (key,) = client.keys(f"{namespace}*")
        stored = client.get(key)
        assert stored is not None and stored[:1] == b"Z" and len(stored) < 2000
        client.close()
        hit = chat(second, messages, temperature=0)  # from Redis, into the second sidecar's memory
        assert hit.headers["x-sidecar-cache"] == "hit"
        assert hit.parse().choices[0].message.content == "a long answer " * 600
        server.stop()
        for sidecar in (first, second):  # Redis is gone: memory still answers, for the entry's time
            assert chat(sidecar, messages, temperature=0).headers["x-sidecar-cache"] == "hit"
        time.sleep(4.5)
        assert chat(second, messages, temperature=0).headers["x-sidecar-cache"] == "miss"
        assert primary.stats()["requests"] == 2
    finally:
        first.stop()
        second.stop()
        server.stop()


def test_a_stream_stored_by_one_sidecar_is_replayed_by_another(
        workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    namespace = f"tiers{time.time_ns()}"
    first, second = (Sidecar(config(primary, redis_server, namespace, 60), workdir, f"tiers-s{i}") for i in range(2))
    try:
        messages = unique()
        stored = redis_server.keys()
        clients = [openai.OpenAI(base_url=s.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
                   for s in (first, second)]
        texts = []
        for client in clients:
            raw = client.chat.completions.with_raw_response.create(model="c", messages=messages, temperature=0,
                                                                   stream=True)
            texts.append((raw.headers["x-sidecar-cache"],
                          "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)))
            redis_server.wait_for_keys(stored + 1)
        assert [verdict for verdict, _ in texts] == ["miss", "hit"] and texts[0][1] == texts[1][1]
        assert primary.stats()["requests"] == 1
    finally:
        first.stop()
        second.stop()


def test_a_redis_entry_that_is_not_an_answer_is_a_miss_in_both_dialects(
        workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    namespace = f"tiers{time.time_ns()}"
    first, second = (Sidecar(config(primary, redis_server, namespace, 60), workdir, f"tiers-bad{i}") for i in range(2))
    try:
        messages = unique()
        anthropic_body = {"model": "c", "temperature": 0, "max_tokens": 50, "messages": messages}
        headers = {"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"}
        assert chat(first, messages, temperature=0).headers["x-sidecar-cache"] == "miss"
        assert requests.post(f"{first.url}/v1/messages", json=anthropic_body, headers=headers,
                             timeout=20).headers["x-sidecar-cache"] == "miss"
        client = redis.Redis(host="127.0.0.1", port=redis_server.port)
        deadline = time.monotonic() + 10
        while len(client.keys(f"{namespace}*")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for key in client.keys(f"{namespace}*"):  # another client's damage, or its writes
            client.set(key, b"P" + struct.pack(">d", time.time() + 600) + b"<html>not json</html>")
        client.close()
        answer = chat(second, messages, temperature=0)  # a fresh memory tier: the lookup goes to Redis
        assert answer.headers["x-sidecar-cache"] == "miss"
        assert answer.parse().choices[0].message.content
        anthropic_answer = requests.post(f"{second.url}/v1/messages", json=anthropic_body, headers=headers, timeout=20)
        assert anthropic_answer.status_code == 200 and anthropic_answer.headers["x-sidecar-cache"] == "miss"
        assert anthropic_answer.json()["content"][0]["text"]
        assert primary.stats()["requests"] == 4
    finally:
        first.stop()
        second.stop()
