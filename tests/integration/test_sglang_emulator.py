"""The SGLang emulator speaks SGLang's wire format and models its prefix cache, queue and aborts (§8)."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.sglang_procs import SGLangReplicas

SYSTEM = " ".join(f"rule{i}" for i in range(200))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SGLangReplicas]:
    procs = SGLangReplicas(tmp_path_factory.mktemp("sglang"), 2, "--cache-tokens", "1024")
    yield procs
    procs.stop()


@pytest.fixture(autouse=True)
def fresh(replicas: SGLangReplicas) -> None:
    replicas.reset()
    for i in range(2):
        replicas.set(i, max_running=8, max_queued=None, abort_next=0, healthy=True, decode_per_token=0.001,
                     cache_tokens=1024)


def _client(replicas: SGLangReplicas, index: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=replicas.api_bases[index], api_key="none", max_retries=0)


def _ask(client: openai.OpenAI, user: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="my-model", messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])


def test_answers_in_sglang_shape_and_reports_cached_tokens(replicas: SGLangReplicas) -> None:
    client = _client(replicas)
    first = _ask(client, "hello there")
    assert first.model == "my-model" and not first.id.startswith("chatcmpl")
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    raw = first.model_dump()
    assert raw["choices"][0]["matched_stop"] is None and raw["metadata"] == {"weight_version": "default"}
    second = _ask(client, "something else")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 192 <= cached < second.usage.prompt_tokens  # the system prompt's whole pages, not the new turn
    other = _ask(_client(replicas, 1), "something else")  # another replica has its own cache
    assert other.usage.prompt_tokens_details.cached_tokens == 0


def test_lru_capacity_evicts_least_recently_used(replicas: SGLangReplicas) -> None:
    client = _client(replicas)
    _ask(client, "a")
    for i in range(8):  # 8 other long prompts overflow a 1024-token cache
        client.chat.completions.create(model="m", messages=[
            {"role": "system", "content": " ".join(f"x{i}-{j}" for j in range(200))}, {"role": "user", "content": "b"}])
    assert _ask(client, "a").usage.prompt_tokens_details.cached_tokens == 0


def test_stream_shape_and_usage_chunk(replicas: SGLangReplicas) -> None:
    stream = _client(replicas).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0


def test_in_band_abort_chunk_on_a_200_stream(replicas: SGLangReplicas) -> None:
    replicas.set(0, abort_next=1)
    with pytest.raises(openai.APIError, match="timeout reached"):
        list(_client(replicas).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                       stream=True))


def test_full_queue_is_503_never_429(replicas: SGLangReplicas) -> None:
    replicas.set(0, max_running=1, max_queued=1, decode_per_token=0.1)
    client = _client(replicas)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_ask, client, f"q{i}") for i in range(6)]
        errors = [f.exception() for f in futures]
    rejected = [e for e in errors if e is not None]
    assert rejected and all(isinstance(e, openai.InternalServerError) and e.status_code == 503 for e in rejected)
    assert all("The request queue is full." in str(e) for e in rejected)


def test_validation_error_is_flat_400(replicas: SGLangReplicas) -> None:
    answer = requests.post(f"{replicas.api_bases[0]}/chat/completions", json={"messages": []}, timeout=5)
    assert answer.status_code == 400
    assert answer.json() == {"object": "error", "message": "Messages cannot be empty.", "type": "BadRequestError",
                             "param": None, "code": 400}


def test_health_loads_and_metrics(replicas: SGLangReplicas) -> None:
    url = replicas.urls[0]
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert requests.get(f"{url}/health", timeout=5).content == b""
    assert requests.get(f"{url}/get_load", timeout=5).status_code == 404
    _ask(_client(replicas), "a")
    _ask(_client(replicas), "b")
    loads = requests.get(f"{url}/v1/loads", timeout=5).json()
    load = loads["loads"][0]
    assert {"num_running_reqs", "num_waiting_reqs", "token_usage", "cache_hit_rate",
            "max_running_requests"} <= set(load)
    assert load["cache_hit_rate"] > 0
    text = requests.get(f"{url}/metrics", timeout=5).text
    for name in ("num_running_reqs", "num_queue_reqs", "token_usage", "cache_hit_rate", "gen_throughput"):
        assert re.search(rf"^sglang:{name}{{[^}}]*model_name=\"sglang-model\"[^}}]*}} \d", text, re.M), name
    assert re.search(r'^sglang:cached_tokens_total\{cache_source="device",engine_type="unified"', text, re.M)
    assert 'sglang:time_to_first_token_seconds_bucket{engine_type="unified",is_streaming="false",le="0.1"' in text
    replicas.set(0, healthy=False)
    assert requests.get(f"{url}/health", timeout=5).status_code == 503
    assert requests.get(f"{url}/ready", timeout=5).status_code == 503


def test_flush_cache(replicas: SGLangReplicas, tmp_path: Path) -> None:
    _ask(_client(replicas), "a")
    assert requests.post(f"{replicas.urls[0]}/flush_cache", timeout=5).text.startswith("Cache flushed.")
    assert _ask(_client(replicas), "a").usage.prompt_tokens_details.cached_tokens == 0
