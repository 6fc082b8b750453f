"""The semantic cache shared by the fleet through a real Redis: a question answered on one pod answers its
paraphrase on another without an upstream call; a pod started later loads what was stored; Redis stopped
costs no request (each pod keeps its own index) and sharing resumes when it is back. Embeddings from the
fake's ``bow…`` model (a bag of words: paraphrases land close)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment


def config(primary: FakeProvider, backup: FakeProvider, redis: RedisServer, namespace: str) -> dict[str, Any]:
    return {"model_list": [deployment("chat", primary), deployment("embed", backup, model="openai/bow-embed")],
            "router_settings": {"timeout": 10, "num_retries": 0},
            "sidecar_settings": {"redis": {"url": redis.url, "namespace": namespace},
                                 "semantic_cache": {"embedding_model": "embed", "groups": ["chat"],
                                                    "threshold": 0.8, "timeout_ms": 500}}}


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"sem{time.time_ns()}"


@pytest.fixture(scope="module")
def pods(workdir: Path, primary: FakeProvider, backup: FakeProvider, redis_server: RedisServer,
         namespace: str) -> Iterator[list[Sidecar]]:
    started = [Sidecar(config(primary, backup, redis_server, namespace), workdir, f"semantic-pod-{i}")
               for i in range(2)]
    yield started
    for pod in started:
        pod.stop()


def ask(pod: Sidecar, text: str) -> Any:
    client = openai.OpenAI(base_url=pod.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    return client.chat.completions.with_raw_response.create(model="chat", temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}])


def shared(pod: Sidecar, result: str) -> int:
    text = requests.get(f"{pod.admin_url}/metrics", timeout=5).text
    match = re.search(rf'^llm_sidecar_semantic_cache_shared_total{{result="{result}"}} (\d+)$', text, re.M)
    assert match, result
    return int(match.group(1))


def wait_for(pod: Sidecar, result: str, count: int, timeout: float = 10.0) -> float:
    """Seconds until ``pod``'s shared counter ``result`` reaches ``count``."""
    started = time.monotonic()
    while shared(pod, result) < count:
        assert time.monotonic() - started < timeout, f"{result} stayed below {count}"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_question_answered_on_one_pod_answers_its_paraphrase_on_another(
        pods: list[Sidecar], primary: FakeProvider) -> None:
    a, b = pods
    received = shared(b, "received")
    first = ask(a, "What is the capital city of France?")
    assert "x-sidecar-cache" not in first.headers
    took = wait_for(b, "received", received + 1)
    print(f"semantic fleet: stored on A, searchable on B within {took * 1000:.0f} ms (polled /metrics every 5 ms)")
    again = ask(b, "what is the capital city of france")
    assert again.headers["x-sidecar-cache"] == "semantic-hit"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert primary.stats()["requests"] == 1  # B made no upstream call
    assert shared(a, "published") >= 1 and shared(a, "received") == 0  # A never takes its own entries back


def test_a_pod_started_later_loads_what_the_fleet_stored(
        pods: list[Sidecar], workdir: Path, primary: FakeProvider, backup: FakeProvider, redis_server: RedisServer,
        namespace: str) -> None:
    ask(pods[0], "How many legs does a spider have?")
    ask(pods[1], "Which river runs through the city of Vienna?")
    for pod in pods:
        wait_for(pod, "published", 1)
    late = Sidecar(config(primary, backup, redis_server, namespace), workdir, "semantic-pod-late")
    try:
        wait_for(late, "received", 2)
        calls = primary.stats()["requests"]
        assert ask(late, "how many legs does a spider have").headers["x-sidecar-cache"] == "semantic-hit"
        assert ask(late, "which river runs through the city of vienna").headers["x-sidecar-cache"] == "semantic-hit"
        assert primary.stats()["requests"] == calls
    finally:
        late.stop()


def test_redis_stopped_costs_no_request_and_sharing_resumes_when_it_is_back(
        workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    server = RedisServer(workdir, "redis-semantic")
    namespace = f"semdown{time.time_ns()}"
    a, b = (Sidecar(config(primary, backup, server, namespace), workdir, f"semantic-down-{i}") for i in range(2))
    try:
        ask(a, "Which planet is the largest one?")
        wait_for(b, "received", 1)

        server.stop()
        assert ask(b, "which planet is the largest one").headers["x-sidecar-cache"] == "semantic-hit"  # shared before
        ask(a, "What is the tallest mountain on planet Earth?")  # a miss, stored in A's index only
        local = ask(a, "what is the tallest mountain on planet earth")
        assert local.headers["x-sidecar-cache"] == "semantic-hit"  # A's own index goes on
        assert "x-sidecar-cache" not in ask(b, "what is the tallest mountain on planet earth").headers
        assert shared(a, "dropped") >= 1

        server = RedisServer(workdir, "redis-semantic-back", port=server.port)  # empty, where the pods expect it
        for pod in (a, b):  # the reader's backoff (at most 5 s) and its next XREAD
            deadline = time.monotonic() + 15
            while "redis is back for the shared semantic cache" not in pod.logs():
                assert time.monotonic() < deadline, "the reader did not find Redis again"
                time.sleep(0.05)
        received = shared(b, "received")
        ask(a, "Name a green vegetable please")
        wait_for(b, "received", received + 1)
        assert ask(b, "name a green vegetable, please").headers["x-sidecar-cache"] == "semantic-hit"
        assert "redis unavailable for the shared semantic cache" in a.logs()
    finally:
        a.stop()
        b.stop()
        server.stop()
