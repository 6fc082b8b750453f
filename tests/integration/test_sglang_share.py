"""``replica_share: redis``: sidecars agree through a real Redis where each long shared prefix of a shared SGLang
pool lives — the placement script on its own, then two sidecars in front of emulated replicas, and a sidecar
whose Redis is not there."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import requests

from sidecar.config.shared import RedisSettings
from sidecar.state import placement as placement_module
from sidecar.state.placement import SLACK, ReplicaPlacement
from sidecar.testing.sglang_cache import PAGE
from tests.integration.procs import APP_KEY, RedisServer, Sidecar, free_port
from tests.integration.sglang_procs import SGLangReplicas

SYSTEM = "You are the support assistant of a large shop. " * 60  # a long shared prefix (> 2,048 characters)


def _place(server: RedisServer, namespace: str, calls: list[tuple[str, int, list[str]]],
           factor: float = 1.25) -> list[tuple[str, str] | None]:
    """Each call's answer, through one ``ReplicaPlacement`` (warmed up first, as a sidecar's is)."""
    async def main() -> list[tuple[str, str] | None]:
        placement = ReplicaPlacement(RedisSettings(port=server.port), namespace)
        await asyncio.wait({placement.warming})
        try:
            return [await placement.place(pool, prefix, names, factor) for pool, prefix, names in calls]
        finally:
            await placement.aclose()
    return asyncio.run(main())


def test_a_prefix_stays_on_its_holder_until_the_bound_then_gains_the_least_loaded(redis_server: RedisServer) -> None:
    names = ["a", "b", "c"]
    first = int(SLACK) + 2  # holder a takes conversations until a + 1 > mean + SLACK (the mean counting the new one)
    answers = _place(redis_server, f"share{time.time_ns()}", [("pool", 1, names)] * (first + 2) + [
        ("pool", 2, ["c", "b", "a"]), ("other-pool", 1, names)])
    assert answers[0] == ("a", "new")  # nothing placed yet: the ring order breaks the tie
    assert answers[1:first] == [("a", "holder")] * (first - 1)
    assert answers[first] == ("b", "new")  # a is past the bound: the least loaded replica joins the holders
    assert answers[first + 1] == ("b", "holder")  # the lighter holder
    assert answers[first + 2] == ("c", "new")  # another prefix: the least loaded, in its own ring order
    assert answers[first + 3] == ("a", "new")  # another pool counts apart


def test_counts_decay_and_every_key_expires(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement_module, "HALF_LIFE", 0.02)
    namespace = f"share{time.time_ns()}"
    _place(redis_server, namespace, [("pool", 1, ["a", "b"])] * 3)
    time.sleep(0.3)  # 15 half-lives: a's 3 decay below 0.01
    assert _place(redis_server, namespace, [("pool", 2, ["b", "a"])]) == [("b", "new")]
    client = redis.Redis(port=redis_server.port)
    keys = client.keys(f"{namespace}:*")
    assert len(keys) == 3  # the pool's counts and two prefixes' holders, in one Cluster slot (hash tag)
    assert len({key.split(b"{")[1].split(b"}")[0] for key in keys}) == 1
    counts = client.hgetall(next(k for k in keys if k.endswith(b":load")))
    assert set(counts) == {b"@t", b"b"}  # a's decayed count was dropped
    ttls = {key: client.ttl(key) for key in keys}
    assert all(0 < ttl <= placement_module.TTL for ttl in ttls.values())
    assert [ttl <= placement_module.TTL_ONCE for key, ttl in sorted(ttls.items())] == [
        key.endswith(f"{2:016x}".encode()) for key in sorted(ttls)]  # prefix 2, placed once, goes first


def test_redis_away_costs_nothing_but_the_fleets_agreement() -> None:
    async def main() -> tuple[Any, float, int]:
        placement = ReplicaPlacement(RedisSettings(port=free_port()), "away")  # nothing listens there
        await asyncio.wait({placement.warming})
        started = time.monotonic()
        answers = [await placement.place("pool", 1, ["a"], 1.25) for _ in range(20)]
        spent = time.monotonic() - started
        await placement.aclose()
        return answers, spent, placement.asked
    answers, spent, asked = asyncio.run(main())
    assert answers == [None] * 20 and spent < 0.2
    assert asked == 0  # the warm-up failed: the gate is shut, nobody pays a timeout


# ---- two sidecars in front of emulated replicas -----------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(workdir: Path) -> Iterator[SGLangReplicas]:
    procs = SGLangReplicas(workdir, 3, "--decode-per-token", "0.001", name="share")
    yield procs
    procs.stop()


def _config(replicas: SGLangReplicas, redis_url: str, namespace: str) -> dict[str, Any]:
    return {"model_list": [{"model_name": "local", "litellm_params": {
        "model": "sglang/my-model", "replicas": replicas.api_bases, "replica_poll_seconds": 0.1,
        "replica_share": "redis"}}],
        "router_settings": {"timeout": 20, "num_retries": 0},
        "sidecar_settings": {"redis": {"url": redis_url, "namespace": namespace}}}


def _ask(sidecar: Sidecar, conversation: int, turns: int) -> list[str]:
    """The replica that answered each turn of a conversation under ``SYSTEM``."""
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    messages: list[Any] = [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": f"conversation {conversation} starts"}]
    served = []
    for turn in range(turns):
        answer = client.chat.completions.create(model="local", messages=messages)
        text = answer.choices[0].message.content or ""
        served.append(text.split(":")[0])  # the emulator answers "<replica name>:0 <replica name>:1 …"
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"turn {turn}"}]
    return served


def _metric(sidecar: Sidecar, name: str) -> float:
    text = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_two_sidecars_put_a_shared_system_prompt_on_one_replica(workdir: Path, redis_server: RedisServer,
                                                               replicas: SGLangReplicas) -> None:
    namespace = f"share{time.time_ns()}"
    sidecars = [Sidecar(_config(replicas, redis_server.url, namespace), workdir, f"share-{i}") for i in range(2)]
    try:
        deadline = time.monotonic() + 5
        while _metric(sidecars[0], "llm_sidecar_sglang_placements_total") == 0 and time.monotonic() < deadline:
            _ask(sidecars[0], 0, 1)  # until its Redis warm-up is done (it answers meanwhile, placed alone)
            time.sleep(0.05)
        replicas.reset()
        served = [_ask(sidecars[n % 2], n + 1, 3) for n in range(4)]  # two conversations through each
    finally:
        for sidecar in sidecars:
            sidecar.stop()
    homes = {turns[0] for turns in served}
    assert len(homes) == 1, served  # both sidecars placed all four where the first went (within the bound)
    assert all(len(set(turns)) == 1 for turns in served), served  # and every later turn stayed
    stats = sorted((replicas.state(i)["stats"] for i in range(3)), key=lambda s: s["requests"])
    assert [s["requests"] for s in stats] == [0, 0, 12]
    # the system prompt was prefilled once there, then reused by every conversation of both sidecars
    assert stats[2]["cached_tokens"] >= 11 * (len(SYSTEM.split()) // PAGE * PAGE)


def test_a_sidecar_whose_redis_is_away_still_routes(workdir: Path, replicas: SGLangReplicas) -> None:
    sidecar = Sidecar(_config(replicas, f"redis://127.0.0.1:{free_port()}/0", "away"), workdir, "share-away")
    try:
        started = time.monotonic()
        served = [_ask(sidecar, n, 2) for n in range(3)]
        assert time.monotonic() - started < 10
        assert all(len(set(turns)) == 1 for turns in served)  # the ring and the pool's memory, as without Redis
        assert _metric(sidecar, "llm_sidecar_sglang_placements_unanswered_total") == 0  # the gate shut at start
    finally:
        sidecar.stop()


def test_the_script_runs_on_a_redis_cluster(workdir: Path) -> None:
    from sidecar import config
    from tests.integration.redis_ha import RedisClusterProcs

    cluster = RedisClusterProcs(workdir, "share-cluster")
    try:
        settings = config.parse({"model_list": [{"model_name": "m", "litellm_params": {
            "model": "openai/m", "api_key": "k"}}], "sidecar_settings": {"redis": {"url": cluster.url}}}
        ).sidecar.shared.redis
        assert settings is not None and settings.mode == "cluster"

        async def main() -> list[tuple[str, str] | None]:
            placement = ReplicaPlacement(settings, f"share{time.time_ns()}")
            await asyncio.wait({placement.warming})
            try:  # the pools' keys hash to different slots; each call's two keys share one (the hash tag)
                return [await placement.place(f"pool-{n}", n, ["a", "b"], 1.25) for n in range(8)]
            finally:
                await placement.aclose()
        assert asyncio.run(main()) == [("a", "new")] * 8
        assert sum(1 for n in cluster.keys_per_node() if n) >= 2
    finally:
        cluster.stop()


def test_a_hung_redis_costs_one_timeout_then_nothing_until_it_answers_again(workdir: Path) -> None:
    server = RedisServer(workdir, "share-hung")
    try:
        async def main() -> None:
            placement = ReplicaPlacement(RedisSettings(port=server.port), f"share{time.time_ns()}")
            placement.gate.backoff = 0.3
            await asyncio.wait({placement.warming})
            assert await placement.place("pool", 1, ["a", "b"], 1.25) == ("a", "new")
            os.kill(server.process.pid, signal.SIGSTOP)  # Redis hangs: accepts nothing, answers nothing
            try:
                started = time.monotonic()
                assert await placement.place("pool", 1, ["a", "b"], 1.25) is None
                assert time.monotonic() - started < 0.25  # PLACE_TIMEOUT, not the socket's
                asked = placement.asked
                assert [await placement.place("pool", 1, ["a", "b"], 1.25) for _ in range(5)] == [None] * 5
                assert placement.asked == asked and placement.unanswered == 1  # the gate is shut: nobody waits
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            await asyncio.sleep(0.4)  # past the backoff: the next call probes, and Redis answers again
            answers = [await placement.place("pool", 1, ["a", "b"], 1.25) for _ in range(3)]
            assert ("a", "holder") in answers
            await placement.aclose()
        asyncio.run(main())
    finally:
        server.stop()


def test_conversations_placed_alone_join_the_counts_in_batches(redis_server: RedisServer) -> None:
    namespace = f"share{time.time_ns()}"

    async def main() -> tuple[list[tuple[str, str] | None], int]:
        placement = ReplicaPlacement(RedisSettings(port=redis_server.port), namespace)
        await asyncio.wait({placement.warming})
        for _ in range(10):
            placement.record("pool", "a")  # the ring put ten conversations on a
        placement.record("pool", "b")
        await asyncio.sleep(placement_module.FLUSH_SECONDS + 0.2)
        try:  # a new prefix whose ring order starts at a goes to the least loaded, c
            return [await placement.place("pool", 7, ["a", "b", "c"], 1.25)], placement.flushes
        finally:
            await placement.aclose()
    answers, flushes = asyncio.run(main())
    assert answers == [("c", "new")] and flushes == 1  # one batch for the eleven
    client = redis.Redis(port=redis_server.port)
    counts = client.hgetall(next(k for k in client.keys(f"{namespace}:*") if k.endswith(b":load")))
    assert 9.9 < float(counts[b"a"]) <= 10 and 0.99 < float(counts[b"b"]) <= 1 and 0.99 < float(counts[b"c"]) <= 1


def test_a_conversation_placed_while_a_batch_is_on_its_way_goes_in_the_next(redis_server: RedisServer) -> None:
    namespace = f"share{time.time_ns()}"

    async def main() -> int:
        placement = ReplicaPlacement(RedisSettings(port=redis_server.port), namespace)
        await asyncio.wait({placement.warming})
        script, late = placement.record_script, ["b"]

        async def sending(**kwargs: object) -> object:
            while late:  # the ring places one more conversation while the first batch is on its way
                placement.record("pool", late.pop())
            return await script(**kwargs)

        placement.record_script = sending
        placement.record("pool", "a")
        await asyncio.sleep(placement_module.FLUSH_SECONDS * 2 + 0.3)  # no further record() comes
        try:
            return placement.flushes
        finally:
            await placement.aclose()
    assert asyncio.run(main()) == 2
    client = redis.Redis(port=redis_server.port)
    counts = client.hgetall(next(k for k in client.keys(f"{namespace}:*") if k.endswith(b":load")))
    assert 0.99 < float(counts[b"a"]) <= 1 and 0.99 < float(counts[b"b"]) <= 1


def test_a_reply_that_is_not_a_placement_is_a_failure_not_a_crash(redis_server: RedisServer) -> None:
    async def main() -> tuple[tuple[str, str] | None, int]:
        placement = ReplicaPlacement(RedisSettings(port=redis_server.port), f"share{time.time_ns()}")
        await asyncio.wait({placement.warming})

        async def odd(**_: object) -> list[int]:
            return [1, 2]  # what a wrong server (or a script of another version) might answer

        placement.place_script = odd
        try:
            return await placement.place("pool", 1, ["a"], 1.25), placement.unanswered
        finally:
            await placement.aclose()
    assert asyncio.run(main()) == (None, 1)


def test_the_route_span_says_the_fleet_placed_the_conversation(workdir: Path, redis_server: RedisServer,
                                                               replicas: SGLangReplicas) -> None:
    import uuid

    from tests.integration.test_telemetry import Receiver, Tree

    receiver = Receiver()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_TRACES_SAMPLER": "always_on"}
    sidecar = Sidecar(_config(replicas, redis_server.url, f"share{time.time_ns()}"), workdir, "share-traced", env=env)
    try:
        deadline = time.monotonic() + 5
        while _metric(sidecar, "llm_sidecar_sglang_placements_total") == 0 and time.monotonic() < deadline:
            _ask(sidecar, 0, 1)  # until the Redis warm-up is done
            time.sleep(0.05)
        client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
        messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "traced"}]
        hows = []
        for _ in range(2):
            request_id = uuid.uuid4().hex
            answer = client.chat.completions.create(model="local", messages=messages,
                                                    extra_headers={"x-request-id": request_id})
            spans = receiver.trace(request_id)
            (event,) = Tree.of(spans).events("replica")
            hows.append(event["sidecar.sglang.how"])
            assert event["sidecar.sglang.replica"].startswith("r-")  # a name, never an address
            said = repr([(s.attributes, s.events) for s in spans])
            assert not any(base.split("/")[2].split(":")[1] in said for base in replicas.api_bases)  # no port
            assert "server.address" not in said
            messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                         {"role": "user", "content": "and again"}]
        assert hows == ["shared", "sticky"]
    finally:
        sidecar.stop()
        receiver.stop()
