"""The budgets' Redis edge in process, against a real Redis: writes that count once however often they are
sent, a refresh timer that comes back after an outage, values that are not spends, and a bounded queue."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sidecar.config.shared import BudgetSettings, RedisSettings, SharedSettings
from sidecar.policy import budget as policy
from sidecar.policy.budget import Principal
from sidecar.state import budgets as edge
from sidecar.state.budgets import Budgets
from sidecar.state.redis import RedisGate
from tests.integration.procs import RedisServer

HOUR = BudgetSettings("hour", 100.0, 3600.0, "1h")


@pytest.fixture
def own_redis(workdir: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: some tests stop it (SIGSTOP)."""
    server = RedisServer(workdir, f"redis-budget-sync-{time.time_ns()}")
    yield server
    server.stop()


def pod(server: RedisServer, *budgets: BudgetSettings, namespace: str, clock: list[float] | None = None) -> Budgets:
    """A pod's budgets whose gate lets Redis be tried again at once after a failure (``clock``: the gate's)."""
    settings = RedisSettings(port=server.port)
    shared = SharedSettings(budgets=budgets or (HOUR,), redis=settings, namespace=namespace)
    budgets_ = Budgets.from_settings(shared, ["g"])
    budgets_.pod = f"pod-{time.time_ns()}"  # a process of its own (one process holds one id for its life)
    budgets_._field = budgets_.pod.encode()
    budgets_.gate = RedisGate("budgets", settings, backoff=0.0) if clock is None else RedisGate(
        "budgets", settings, backoff=5.0, clock=lambda: clock[0])
    return budgets_


def total(server: RedisServer, key: str) -> float:
    """A budget key's fleet total, whichever way it is kept (a counter, or a field per pod)."""
    client = redis.Redis(port=server.port)
    try:
        if client.type(key) == b"string":
            return float(client.get(key) or 0)
        return sum(float(v) for v in client.hvals(key))
    finally:
        client.close()


def key(namespace: str, name: str) -> str:
    return f"{namespace}:budget:{name}:{int(time.time() // 3600)}"


async def test_a_write_whose_reply_was_lost_counts_once(own_redis: RedisServer) -> None:
    namespace = f"twice-{time.time_ns()}"
    budgets = pod(own_redis, namespace=namespace)
    try:
        budgets.spend(["g"], 1.0)
        await budgets.drain()
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # Redis hangs: the write is sent, its reply never comes
        try:
            budgets.spend(["g"], 1.0)
            await budgets.drain()
            assert budgets.pending and budgets.gate.down  # kept queued: the flush could not tell it landed
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)  # ...and Redis applies it after all
        await budgets.flush()  # sent again
        assert not budgets.pending
        assert total(own_redis, key(namespace, "hour")) == pytest.approx(2.0)
        assert budgets.ledger.windows["hour"].spent == pytest.approx(2.0)
    finally:
        await budgets.aclose()


async def test_a_key_redis_refuses_does_not_add_the_others_again(own_redis: RedisServer) -> None:
    namespace = f"refused-{time.time_ns()}"
    other = BudgetSettings("other", 100.0, 3600.0, "1h")
    redis.Redis(port=own_redis.port).rpush(key(namespace, "hour"), "not a budget")  # WRONGTYPE for any write
    budgets = pod(own_redis, HOUR, other, namespace=namespace)
    try:
        budgets.spend(["g"], 1.0)  # counted by both budgets
        await budgets.drain()
        for _ in range(3):
            await budgets.flush()
        assert total(own_redis, key(namespace, "other")) == pytest.approx(1.0)
        assert not budgets.pending  # the refused key is not sent again and again (the refresh timer reads)
        assert budgets.ledger.windows["hour"].spent == pytest.approx(1.0)  # still counted here
    finally:
        await budgets.aclose()


async def test_the_refresh_after_an_outage_reaches_redis(own_redis: RedisServer) -> None:
    namespace = f"probe-{time.time_ns()}"
    clock = [0.0]
    budgets, other = pod(own_redis, namespace=namespace, clock=clock), pod(own_redis, namespace=namespace)
    try:
        await budgets.refresh()
        budgets.gate.failed(ConnectionError("an outage"))
        other.spend(["g"], 30.0)
        await other.drain()
        clock[0] += 6  # the backoff is over: the gate lets one probe through
        await budgets.refresh()
        assert not budgets.gate.down
        assert budgets.ledger.windows["hour"].spent == pytest.approx(30.0)
        budgets.gate.failed(ConnectionError("another outage"))
        budgets.spend(["g"], 1.0)  # queued while the gate is shut
        await budgets.drain()
        clock[0] += 6
        await budgets.refresh()  # the probe sends what is queued
        assert not budgets.pending and not budgets.gate.down
        assert total(own_redis, key(namespace, "hour")) == pytest.approx(31.0)
    finally:
        await budgets.aclose()
        await other.aclose()


@pytest.mark.parametrize("bad", [b"not-a-number", b"nan", b"inf", b"-5"])
async def test_a_value_that_is_not_a_spend_is_ignored_and_the_timer_goes_on(
        own_redis: RedisServer, bad: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "REFRESH_SECONDS", 0.01)
    namespace = f"poison-{time.time_ns()}"
    other = BudgetSettings("other", 100.0, 3600.0, "1h")
    client = redis.Redis(port=own_redis.port)
    client.set(key(namespace, "hour"), bad)  # a counter of an earlier version, damaged
    budgets = pod(own_redis, HOUR, other, namespace=namespace)
    timer = asyncio.create_task(budgets.run())
    try:
        await asyncio.sleep(0.1)
        client.delete(key(namespace, "hour"))
        client.hset(key(namespace, "hour"), mapping={"a-pod": bad, "b-pod": b"2.5"})
        client.hset(key(namespace, "other"), "a-pod", b"150")
        deadline = time.monotonic() + 10
        while budgets.ledger.windows["other"].spent < 150:  # the timer is still running
            assert not timer.done(), timer
            assert time.monotonic() < deadline, "the timer never read the totals again"
            await asyncio.sleep(0.01)
        assert budgets.ledger.windows["hour"].spent == pytest.approx(2.5)  # the bad field left out
        budgets.spend(["g"], 1.0)
        await budgets.drain()
        assert budgets.ledger.windows["hour"].spent == pytest.approx(3.5)
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)
        await budgets.aclose()
        client.close()


async def test_the_refresh_timer_outlives_an_error(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "REFRESH_SECONDS", 0.01)
    budgets = pod(own_redis, namespace=f"timer-{time.time_ns()}")
    calls = []

    async def refresh() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")

    monkeypatch.setattr(budgets, "refresh", refresh)
    timer = asyncio.create_task(budgets.run())
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 3:
            assert not timer.done(), timer
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)
        await budgets.aclose()


async def test_queued_spend_is_bounded_and_evicted_users_spend_still_reaches_redis(
        own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "MAX_SCOPES", 3)
    monkeypatch.setattr(edge, "MAX_PENDING", 5)
    namespace = f"pending-{time.time_ns()}"
    per_user = BudgetSettings("pu", 1.0, 3600.0, "1h", per="user")
    budgets = pod(own_redis, per_user, namespace=namespace)
    try:
        budgets.gate.failed(ConnectionError("redis is away"))
        budgets.gate.backoff = budgets.gate.shut_until = 1e12
        for i in range(8):
            budgets.spend(["g"], 0.25, Principal(None, None, f"user-{i}"))
        budgets.spend(["g"], 0.25, Principal(None, None, "user-0"))  # evicted from memory, its part still queued
        await asyncio.sleep(0)
        assert len(budgets.pending) == 5 and budgets.dropped == 3
        assert "llm_sidecar_budget_unshared_total 3" in budgets.render()
        assert len(budgets.ledger.scopes["pu"]) == 3  # users 1..7 pushed 0..4 out; user-0 came back
        budgets.gate = RedisGate("budgets", RedisSettings(port=own_redis.port), backoff=0.0)  # Redis is back
        await budgets.flush()
        client = redis.Redis(port=own_redis.port)
        hour = int(time.time() // 3600)
        for i, spent in enumerate([0.5, 0.25, 0.25, 0.25, 0.25]):
            name = f"{namespace}:budget:pu/{policy.scope_label('user', f'user-{i}')}:{hour}"
            assert total(own_redis, name) == pytest.approx(spent)
            assert 0 < client.ttl(name) <= 3600 + edge.EXPIRE_MARGIN_SECONDS  # the window's end, not a live one's
        client.close()
    finally:
        await budgets.aclose()


async def test_a_pod_that_stops_folds_its_field_into_the_counter(own_redis: RedisServer) -> None:
    """The hash holds the pods alive: a stopping pod's part joins "counter", the fleet total unchanged."""
    namespace = f"fold-{time.time_ns()}"
    first, second = pod(own_redis, namespace=namespace), pod(own_redis, namespace=namespace)
    try:
        first.spend(["g"], 1.5)
        second.spend(["g"], 2.0)
        await first.drain()
        await second.drain()
        await first.aclose()
        client = redis.Redis(port=own_redis.port)
        try:
            fields = client.hgetall(key(namespace, "hour"))
        finally:
            client.close()
        assert set(fields) == {b"counter", second.pod.encode()} and float(fields[b"counter"]) == pytest.approx(1.5)
        assert total(own_redis, key(namespace, "hour")) == pytest.approx(3.5)
    finally:
        await second.aclose()


async def test_a_reload_hands_this_processs_field_on_and_counts_nothing_twice(own_redis: RedisServer) -> None:
    """The next config's budgets write the same field (one id per process) from the spend they adopted; the old
    ones, retired, do not fold it into "counter" (that would count it again)."""
    from sidecar.state.redis import pod_id

    assert pod_id() == pod_id()
    namespace = f"reload-{time.time_ns()}"
    old = pod(own_redis, namespace=namespace)
    old.spend(["g"], 1.0)
    await old.drain()
    raised = BudgetSettings("hour", 200.0, 3600.0, "1h")
    new = pod(own_redis, raised, namespace=namespace)
    new.pod, new._field = old.pod, old._field
    new.ledger.adopt(old.ledger)
    try:
        new.spend(["g"], 0.5)
        await new.drain()
        await old.aclose(final=False)
        assert total(own_redis, key(namespace, "hour")) == pytest.approx(1.5)
    finally:
        await new.aclose()
    assert total(own_redis, key(namespace, "hour")) == pytest.approx(1.5)  # folded at the end: the same total
