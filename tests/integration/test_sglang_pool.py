"""A shared SGLang deployment with replicas: prefix-sticky choice, health, spill-over, aborts, telemetry."""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment
from tests.integration.sglang_procs import SGLangReplicas

POLL = 0.1


@pytest.fixture(scope="module")
def replicas(workdir: Path) -> Iterator[SGLangReplicas]:
    procs = SGLangReplicas(workdir, 3, "--decode-per-token", "0.001", name="pool")
    yield procs
    procs.stop()


@pytest.fixture(scope="module")
def pool_sidecar(workdir: Path, replicas: SGLangReplicas, backup: FakeProvider) -> Iterator[Sidecar]:
    config = {
        "model_list": [
            {"model_name": "local", "litellm_params": {
                "model": "sglang/my-model", "replicas": replicas.api_bases, "replica_poll_seconds": POLL,
                "replica_poll_timeout_seconds": 5, "max_queue_per_replica": 2}},
            deployment("remote", backup)],
        "router_settings": {"timeout": 20, "num_retries": 2, "fallbacks": [{"local": ["remote"]}],
                            "retry_policy": {"InternalServerErrorRetries": 2}},
    }
    sidecar = Sidecar(config, workdir, "sglang-pool")
    yield sidecar
    sidecar.stop()


@pytest.fixture(autouse=True)
def fresh(replicas: SGLangReplicas) -> None:
    replicas.reset()
    for i in range(3):
        replicas.set(i, max_running=8, max_queued=None, abort_next=0, healthy=True, decode_per_token=0.001)
    time.sleep(1.1)  # replicas that failed a test's attempts are avoided for a second (AVOID_SECONDS)


def _client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def _conversation(n: int, turns: int) -> list[list[dict[str, str]]]:
    """The message lists of each turn of conversation ``n`` (a system prompt shared by all)."""
    messages = [{"role": "system", "content": "You are helpful. " * 50},
                {"role": "user", "content": f"conversation {n} starts"}]
    out = []
    for t in range(turns):
        out.append(list(messages))
        messages += [{"role": "assistant", "content": f"answer {t}"}, {"role": "user", "content": f"turn {t}"}]
    return out


def _replica_of(answer: str) -> str:
    return answer.split(":")[0]  # the emulator answers "<replica name>:0 <replica name>:1 …"


def test_conversations_stick_to_one_replica_and_loads_stay_balanced(pool_sidecar: Sidecar,
                                                                   replicas: SGLangReplicas) -> None:
    client = _client(pool_sidecar)
    homes: dict[int, set[str]] = collections.defaultdict(set)
    cached = [0]

    def converse(n: int) -> None:
        for turn, messages in enumerate(_conversation(n, 3)):
            answer = client.chat.completions.with_raw_response.create(model="local", messages=messages)
            assert answer.headers["x-sidecar-deployment"].startswith("sglang/")
            completion = answer.parse()
            homes[n].add(_replica_of(completion.choices[0].message.content))
            if turn:
                cached[0] += completion.usage.prompt_tokens_details.cached_tokens

    for n in range(24):  # one at a time: nothing is ever over the bound, so nothing moves
        converse(n)
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len(collections.Counter(r for h in homes.values() for r in h)) == 3
    assert cached[0] > 0  # later turns found their conversation's prefix cached
    homes.clear()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # 6 at once: the bound moves some turns
        list(pool.map(converse, range(100, 124)))
    assert sum(len(h) == 1 for h in homes.values()) >= 16, homes
    # 6 requests in flight over 3 replicas: the bound is max(ceil(1.25 * 7/3), ceil(7/3) + 1) = 4
    assert all(replicas.state(i)["stats"]["peak_load"] <= 4 for i in range(3))


def test_an_unhealthy_replica_is_skipped_and_readmitted(pool_sidecar: Sidecar, replicas: SGLangReplicas) -> None:
    client = _client(pool_sidecar)
    replicas.set(1, healthy=False)
    time.sleep(POLL * 6)
    seen = collections.Counter(_replica_of(client.chat.completions.create(
        model="local", messages=_conversation(n, 1)[0]).choices[0].message.content) for n in range(30))
    assert "pool-1" not in seen and sum(seen.values()) == 30
    replicas.set(1, healthy=True)
    time.sleep(POLL * 6)
    # New conversations (the first 30 stay where their prefixes are now cached: the sidecar remembers them).
    seen = collections.Counter(_replica_of(client.chat.completions.create(
        model="local", messages=_conversation(n, 1)[0]).choices[0].message.content) for n in range(30, 60))
    assert seen["pool-1"] > 0


def test_a_saturated_pool_spills_to_the_fallback_at_once(pool_sidecar: Sidecar, replicas: SGLangReplicas) -> None:
    for i in range(3):
        replicas.set(i, max_running=1, decode_per_token=0.4)
    direct = [openai.OpenAI(base_url=b, api_key="none", max_retries=0, timeout=30) for b in replicas.api_bases]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:  # each replica: 1 running, 3 waiting
        busy = [pool.submit(direct[i % 3].chat.completions.create, model="m",
                            messages=[{"role": "user", "content": f"busy {i}"}]) for i in range(12)]
        time.sleep(POLL * 6)
        before = sum(replicas.state(i)["stats"]["requests"] for i in range(3))
        answer = _client(pool_sidecar).chat.completions.with_raw_response.create(
            model="local", messages=_conversation(99, 1)[0])
        after = sum(replicas.state(i)["stats"]["requests"] for i in range(3))
        assert answer.headers["x-sidecar-fallback"] == "remote"
        assert answer.headers["x-sidecar-attempts"] == "1"  # no attempt against the full pool
        assert after == before
        assert requests.get(f"{pool_sidecar.admin_url}/readyz", timeout=5).status_code == 200
        for future in busy:
            future.result()
    time.sleep(POLL * 6)  # the pool drained: traffic returns to it
    answer = _client(pool_sidecar).chat.completions.with_raw_response.create(
        model="local", messages=_conversation(98, 1)[0])
    assert "x-sidecar-fallback" not in answer.headers


def test_queue_full_503s_move_on_without_opening_the_breaker(pool_sidecar: Sidecar,
                                                            replicas: SGLangReplicas) -> None:
    for i in range(3):
        replicas.set(i, max_running=0, max_queued=0)  # every request: 503 "The request queue is full."
    client = _client(pool_sidecar)
    for n in range(4):
        answer = client.chat.completions.with_raw_response.create(model="local",
                                                                  messages=_conversation(200 + n, 1)[0])
        assert answer.headers["x-sidecar-fallback"] == "remote"
    assert sum(replicas.state(i)["stats"]["rejected"] for i in range(3)) >= 1
    assert "breaker sglang" not in pool_sidecar.logs()  # full replicas are not a failing deployment
    assert requests.get(f"{pool_sidecar.admin_url}/readyz", timeout=5).status_code == 200


def test_a_mid_stream_abort_continues_on_another_replica(pool_sidecar: Sidecar, replicas: SGLangReplicas) -> None:
    for i in range(3):  # whichever replica takes the stream aborts it in-band after 6 words (each only once)
        replicas.set(i, abort_next=1, abort_after=6, decode_per_token=0.005)
    stream = _client(pool_sidecar).chat.completions.with_raw_response.create(
        model="local", messages=_conversation(300, 1)[0], stream=True)
    assert stream.headers["x-sidecar-deployment"].startswith("sglang/")
    words = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices).split()
    assert [int(w.split(":")[1]) for w in words] == list(range(8))  # one answer, nothing repeated or lost
    assert len({_replica_of(w) for w in words}) >= 2  # continued on another replica (continue_final_message)
    assert sum(replicas.state(i)["stats"]["aborted"] for i in range(3)) >= 1


def test_chunks_in_the_same_read_as_an_abort_reach_the_app(pool_sidecar: Sidecar,
                                                          replicas: SGLangReplicas) -> None:
    for i in range(3):  # no decode time: the words and the abort chunk arrive together, in one read
        replicas.set(i, abort_next=1, abort_after=6, decode_per_token=0)
    stream = _client(pool_sidecar).chat.completions.create(
        model="local", messages=_conversation(301, 1)[0], stream=True)
    words = "".join(c.choices[0].delta.content or "" for c in stream if c.choices).split()
    assert [int(w.split(":")[1]) for w in words] == list(range(8))
    first = {_replica_of(w) for w in words[:6]}
    assert len(first) == 1 and _replica_of(words[6]) not in first  # the aborted replica's 6 words were kept


def test_replica_metrics_name_replicas_without_addresses(pool_sidecar: Sidecar) -> None:
    _client(pool_sidecar).chat.completions.create(model="local", messages=_conversation(400, 1)[0])
    metrics = requests.get(f"{pool_sidecar.admin_url}/metrics", timeout=5).text
    for name in ("requests_total", "in_flight", "queue_depth", "cached_prompt_tokens_total", "healthy"):
        assert f"llm_sidecar_sglang_replica_{name}{{" in metrics, name
    assert "127.0.0.1" not in metrics


def test_ready_polling_generates_nothing_and_still_takes_a_replica_out(workdir: Path) -> None:
    ready = SGLangReplicas(workdir, 2, name="ready")
    sidecar = Sidecar({"model_list": [{"model_name": "local", "litellm_params": {
        "model": "sglang/my-model", "replicas": ready.api_bases, "replica_poll_seconds": POLL,
        "replica_health_path": "/ready"}}]}, workdir, "sglang-ready")
    try:
        ready.set(1, healthy=False)
        time.sleep(POLL * 6)
        seen = collections.Counter(_replica_of(_client(sidecar).chat.completions.create(
            model="local", messages=_conversation(n, 1)[0]).choices[0].message.content) for n in range(10))
        assert seen == {"ready-0": 10}
        assert [ready.state(i)["stats"]["health_checks"] for i in range(2)] == [0, 0]  # no generating probe
    finally:
        sidecar.stop()
        ready.stop()
