"""Coalescing across pods: two real sidecars sharing one real redis-server through the Redis cache tier, in
front of the fake upstream with a slow answer. One pod takes the short Redis lock and calls; the other waits
for its answer in the cache. Every test asks its own question (``unique``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment
from tests.integration.test_coalescing import async_client, metric, unique

LEASE_MS = 1000


def config(primary: FakeProvider, redis_server: RedisServer, namespace: str) -> dict[str, Any]:
    return {"model_list": [deployment("c", primary)],
            "router_settings": {"timeout": 20, "num_retries": 0, "cooldown_time": 0},
            "sidecar_settings": {"cache": {"type": "redis", "redis_url": redis_server.url, "ttl": 60,
                                           "namespace": namespace, "fleet_lock_ms": LEASE_MS}}}


@pytest.fixture(scope="module")
def pods(workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> Iterator[tuple[Sidecar, Sidecar]]:
    namespace = f"fleet-lock-{time.time_ns()}"
    first, second = (Sidecar(config(primary, redis_server, namespace), workdir, f"fleet-lock-{i}") for i in range(2))
    yield first, second
    first.stop()
    second.stop()


async def burst(pods: tuple[Sidecar, ...], messages: list[dict[str, str]], n: int) -> list[Any]:
    """``n`` identical requests at once, dealt round-robin over ``pods``; exceptions returned, not raised."""
    clients = [async_client(pod) for pod in pods]
    try:
        return await asyncio.gather(*(clients[i % len(clients)].chat.completions.with_raw_response.create(
            model="c", messages=messages, temperature=0) for i in range(n)), return_exceptions=True)
    finally:
        for client in clients:
            await client.close()


def commands(server: RedisServer) -> dict[str, int]:
    """Calls per Redis command so far (INFO commandstats)."""
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    try:
        return {name.removeprefix("cmdstat_"): int(stats["calls"])
                for name, stats in client.info("commandstats").items()}
    finally:
        client.close()


def test_identical_requests_on_two_pods_make_one_upstream_call(pods: tuple[Sidecar, Sidecar],
                                                               primary: FakeProvider) -> None:
    primary.set(latency=1.0)
    messages = unique("fleet")
    before = sum(metric(pod, "llm_sidecar_fleet_coalesced_requests_total") for pod in pods)
    answers = asyncio.run(burst(pods, messages, 40))
    assert not [a for a in answers if isinstance(a, Exception)]
    assert primary.stats()["requests"] == 1
    verdicts = [a.headers["x-sidecar-cache"] for a in answers]
    assert verdicts.count("miss") == 1 and set(verdicts) <= {"miss", "coalesced", "hit"}
    assert len({a.parse().choices[0].message.content for a in answers}) == 1
    # the pod that did not call served its own leader from the other's answer; its others joined that leader
    assert sum(metric(pod, "llm_sidecar_fleet_coalesced_requests_total") for pod in pods) - before == 1


def test_the_lock_adds_one_set_and_one_release_to_a_miss(pods: tuple[Sidecar, Sidecar], primary: FakeProvider,
                                                         redis_server: RedisServer) -> None:
    client = openai.OpenAI(base_url=pods[0].base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    client.chat.completions.create(model="c", messages=unique("warm"), temperature=0)
    time.sleep(0.3)  # the store and the release land after the answer
    before = commands(redis_server)
    raw = client.chat.completions.with_raw_response.create(model="c", messages=unique("count"), temperature=0)
    assert raw.headers["x-sidecar-cache"] == "miss"
    time.sleep(0.3)
    after = commands(redis_server)
    added = {name: after[name] - before.get(name, 0) for name in after
             if after[name] != before.get(name, 0) and name not in ("hello", "info")}  # ours: reading the stats
    # the cache's own lookup (GET) and store (PSETEX); the lock's SET NX PX and its release (EVAL, which runs a
    # GET and a DEL inside Redis)
    assert added == {"get": 2, "psetex": 1, "set": 1, "eval": 1, "del": 1}, added


def test_a_pod_that_dies_holding_the_lock_is_replaced_after_the_lease(
        workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    namespace = f"fleet-lock-dies-{time.time_ns()}"
    holder, other = (Sidecar(config(primary, redis_server, namespace), workdir, f"fleet-lock-dies-{i}")
                     for i in range(2))
    try:
        primary.set(latency=30.0)
        messages = unique("dies")
        errors: list[BaseException] = []

        def doomed() -> None:
            try:
                openai.OpenAI(base_url=holder.base_url, api_key=APP_KEY, max_retries=0, timeout=60).chat.completions \
                    .create(model="c", messages=messages, temperature=0)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=doomed, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while primary.stats()["requests"] < 1:  # the holder has the lock and is calling
            assert time.monotonic() < deadline
            time.sleep(0.02)
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(
            openai.OpenAI(base_url=other.base_url, api_key=APP_KEY, max_retries=0, timeout=60).chat.completions
            .with_raw_response.create(model="c", messages=messages, temperature=0)))
        waiter.start()
        time.sleep(2 * LEASE_MS / 1000)  # the holder renews its lease: the other pod still waits
        assert primary.stats()["requests"] == 1 and not result
        primary.set(latency=0.0)
        holder.process.kill()  # mid-call: its lease lapses within one lease
        waiter.join(30)
        assert result and result[0].headers["x-sidecar-cache"] == "miss"
        assert result[0].parse().choices[0].message.content
        assert metric(other, "llm_sidecar_fleet_lock_lapsed_total") == 0  # it took the lapsed lock, not the deadline
        assert primary.stats()["requests"] == 2
        thread.join(10)
        assert errors  # the holder's own app lost its connection
    finally:
        holder.stop()
        other.stop()


def test_no_request_fails_when_redis_stops(workdir: Path, primary: FakeProvider) -> None:
    server = RedisServer(workdir, "redis-fleet-lock")
    namespace = f"fleet-lock-down-{time.time_ns()}"
    first, second = (Sidecar(config(primary, server, namespace), workdir, f"fleet-lock-down-{i}") for i in range(2))
    try:
        primary.set(latency=0.3)
        answers = asyncio.run(burst((first, second), unique("up"), 10))
        assert not [a for a in answers if isinstance(a, Exception)]
        server.stop()
        for round_ in range(3):  # the first meets the dead Redis; the next find the gate shut
            answers = asyncio.run(burst((first, second), unique(f"down {round_}"), 10))
            assert not [a for a in answers if isinstance(a, Exception)]
            assert {a.headers["x-sidecar-cache"] for a in answers} <= {"miss", "coalesced"}
        assert "redis unavailable for the response cache" in first.logs() + second.logs()
    finally:
        first.stop()
        second.stop()
        server.stop()


def test_a_wait_for_another_pods_lock_counts_against_the_requests_timeout(
        workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    """A pod whose request waited its whole timeout on the other pod's lock does not then call with a fresh
    timeout: its time is spent, so it makes no upstream call."""
    namespace = f"fleet-deadline-{time.time_ns()}"
    patient = Sidecar(config(primary, redis_server, namespace), workdir, "fleet-deadline-a")  # 20 s
    hasty_config = config(primary, redis_server, namespace)
    hasty_config["router_settings"]["timeout"] = 1.0
    hasty = Sidecar(hasty_config, workdir, "fleet-deadline-b")
    try:
        primary.set(latency=3.0)  # the patient pod's call holds the lock past the hasty pod's timeout
        messages = unique("deadline")
        results: dict[str, Any] = {}

        def ask(name: str, pod: Sidecar) -> None:
            client = openai.OpenAI(base_url=pod.base_url, api_key=APP_KEY, max_retries=0, timeout=30)
            try:
                results[name] = client.chat.completions.with_raw_response.create(
                    model="c", messages=messages, temperature=0)
            except openai.APIStatusError as error:
                results[name] = error

        first = threading.Thread(target=ask, args=("patient", patient))
        first.start()
        deadline = time.monotonic() + 10
        while primary.stats()["requests"] < 1:  # the patient pod holds the lock and calls
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ask("hasty", hasty)
        first.join()
        assert results["patient"].headers["x-sidecar-cache"] == "miss"
        assert isinstance(results["hasty"], openai.APIStatusError) and results["hasty"].status_code == 504
        assert primary.stats()["requests"] == 1  # the hasty pod did not call after its time was spent
    finally:
        patient.stop()
        hasty.stop()
