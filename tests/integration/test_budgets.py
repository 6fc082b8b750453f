"""Spend budgets, as the app sees it: a spent budget refuses requests before any upstream call.

The fake answers 5 completion tokens and one prompt token per word; at 0.001 USD a token, every request
here costs more than the 0.005 USD budgets, so the first answer spends the budget and the next is refused.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests

from sidecar.core.errors import BudgetExceeded
from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "spend a little"}]
PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.001}


def priced(group: str, provider: FakeProvider) -> dict[str, Any]:
    entry = deployment(group, provider)
    entry["model_info"] = PRICES
    return entry


def config(primary: FakeProvider, settings: dict[str, Any]) -> dict[str, Any]:
    return {"model_list": [priced("b", primary), priced("free", primary)],
            "router_settings": {"timeout": 10, "num_retries": 0}, "sidecar_settings": settings}


def openai_client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def ratio(sidecar: Sidecar, budget: str) -> float:
    text = requests.get(f"{sidecar.admin_url}/metrics").text
    match = re.search(rf'^llm_sidecar_budget_used_ratio{{budget="{budget}"}} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def test_a_spent_budget_refuses_with_429_and_retry_after_in_both_dialects(
        workdir: Path, primary: FakeProvider) -> None:
    budgets = [{"name": "team-a", "max_budget_usd": 0.005, "period": "1h", "models": ["b"]}]
    sidecar = Sidecar(config(primary, {"budgets": budgets}), workdir, "budget")
    try:
        client = openai_client(sidecar)
        assert ratio(sidecar, "team-a") == 0
        answer = client.chat.completions.with_raw_response.create(model="b", messages=MESSAGES)
        assert float(answer.headers["x-sidecar-cost"]) > 0.005
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="b", messages=MESSAGES)
        error = info.value
        assert error.code == "budget_exceeded" and error.type == "budget_exceeded"
        assert "team-a" in error.message and "http" not in error.message
        assert 1 <= int(error.response.headers["retry-after"]) <= 3600
        with pytest.raises(anthropic.RateLimitError) as refused:
            anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0, timeout=20).messages.create(
                model="b", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["type"] == "error" and "team-a" in refused.value.body["error"]["message"]
        assert 1 <= int(refused.value.response.headers["retry-after"]) <= 3600
        assert primary.stats()["requests"] == 1  # refused before any upstream call
        # a group the budget does not cover is still served
        assert client.chat.completions.create(model="free", messages=MESSAGES).choices[0].message.content
        assert ratio(sidecar, "team-a") == 1
        metrics = requests.get(f"{sidecar.admin_url}/metrics").text
        assert re.search(r'^llm_sidecar_budget_spend_usd\{budget="team-a"\} 0\.00[6-9]', metrics, re.M)
    finally:
        sidecar.stop()


def test_streams_spend_once_their_usage_is_known(workdir: Path, primary: FakeProvider) -> None:
    budgets = [{"name": "streams", "max_budget_usd": 0.005, "period": "1d"}]
    sidecar = Sidecar(config(primary, {"budgets": budgets}), workdir, "budget-stream")
    try:
        client = openai_client(sidecar)
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="b", messages=MESSAGES, stream=True) if c.choices)
        assert text
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="free", messages=MESSAGES, stream=True)
        assert primary.stats()["requests"] == 1
    finally:
        sidecar.stop()


def test_two_sidecars_share_a_budget_through_redis(workdir: Path, primary: FakeProvider,
                                                   redis_server: RedisServer) -> None:
    settings = {"redis": {"url": redis_server.url, "namespace": f"budget-{time.time_ns()}"},
                "budgets": [{"name": "shared", "max_budget_usd": 0.005, "period": "30d"}]}
    first, second = (Sidecar(config(primary, settings), workdir, f"budget-redis-{i}") for i in range(2))
    try:
        openai_client(first).chat.completions.create(model="b", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            openai_client(first).chat.completions.create(model="b", messages=MESSAGES)
        deadline = time.monotonic() + 5  # the other sidecar reads the shared total every second
        while ratio(second, "shared") < 1:
            assert time.monotonic() < deadline, "the second sidecar never saw the shared spend"
            time.sleep(0.1)
        with pytest.raises(openai.RateLimitError) as info:
            openai_client(second).chat.completions.create(model="b", messages=MESSAGES)
        assert "shared" in info.value.message
        assert primary.stats()["requests"] == 1
    finally:
        first.stop()
        second.stop()


def test_budgets_keep_counting_locally_when_redis_is_down(workdir: Path, primary: FakeProvider) -> None:
    redis = RedisServer(workdir, "redis-budget-dies")
    redis.stop()  # configured, but not there
    settings = {"redis": {"host": "127.0.0.1", "port": redis.port},
                "budgets": [{"name": "local-view", "max_budget_usd": 0.005, "period": "1h"}]}
    sidecar = Sidecar(config(primary, settings), workdir, "budget-no-redis")
    try:
        client = openai_client(sidecar)
        assert client.chat.completions.create(model="b", messages=MESSAGES).choices[0].message.content
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="b", messages=MESSAGES)
        assert primary.stats()["requests"] == 1
    finally:
        sidecar.stop()


async def test_the_redis_sync_merges_totals_and_queues_spend_while_redis_is_away(
        workdir: Path, redis_server: RedisServer) -> None:
    """The edge module in process, as two pods would run it, against the real Redis."""
    from sidecar.config.shared import BudgetSettings, RedisSettings, SharedSettings
    from sidecar.state.budgets import Budgets
    from sidecar.state.redis import client

    budget = BudgetSettings("pods", 1.0, 3600.0, "1h")
    shared = SharedSettings(budgets=(budget,), redis=RedisSettings(port=redis_server.port),
                            namespace=f"sync-{time.time_ns()}")
    now = [7200.5]
    pod_a, pod_b = (Budgets.from_settings(shared, ["g"]) for _ in range(2))
    for name, pod in (("a", pod_a), ("b", pod_b)):
        pod.clock = lambda: now[0]
        pod.pod, pod._field = name, name.encode()  # two processes (one process holds one id for its life)
    try:
        pod_a.spend(["g"], 0.4)
        await pod_a.drain()
        pod_b.spend(["g"], 0.4)
        await pod_b.drain()
        assert pod_b.ledger.windows["pods"].spent == pytest.approx(0.8)  # B's reply is the total of both
        pod_a.check("g")  # A has not heard of B's spend yet
        await pod_a.refresh()
        assert pod_a.ledger.windows["pods"].spent == pytest.approx(0.8)
        pod_b.redis = pod_b.gate = None  # as if B's Redis vanished: B counts alone; A keeps sharing
        pod_b.spend(["g"], 0.3)
        with pytest.raises(BudgetExceeded):
            pod_b.check("g")
        broken = RedisServer(workdir, "redis-sync-broken")
        broken.stop()
        await pod_a.redis.aclose()
        pod_a.redis = client(RedisSettings(port=broken.port))  # A's Redis goes away
        pod_a.spend(["g"], 0.1)
        await pod_a.drain()
        # queued: A's whole part of the window (0.4 + 0.1) and the window's end; the gate is shut
        assert pod_a.pending == {("pods", 2): (pytest.approx(0.5), 10800.0)} and not pod_a.gate.open
        assert pod_a.ledger.windows["pods"].spent == pytest.approx(0.9)  # still counted locally
    finally:
        await pod_a.aclose()
        await pod_b.aclose()


def test_a_stream_the_app_hangs_up_on_is_charged(workdir: Path, primary: FakeProvider) -> None:
    """The provider bills a stream the app left half-way: so does the budget (an estimate when no usage came).
    Hanging up before the end spent past any budget."""
    budgets = [{"name": "team-a", "max_budget_usd": 1.0, "period": "1h", "models": ["b"]}]
    sidecar = Sidecar(config(primary, {"budgets": budgets}), workdir, "budget-hangup")
    try:
        primary.set(text="one two three four five six seven eight", chunks=8, chunk_delay=0.3)
        response = requests.post(f"{sidecar.base_url}/chat/completions", stream=True, timeout=20,
                                 headers={"authorization": f"Bearer {APP_KEY}"},
                                 json={"model": "b", "messages": MESSAGES, "stream": True})
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith(b"data: "))  # the first chunk, then hang up
        response.close()
        deadline = time.monotonic() + 10
        while ratio(sidecar, "team-a") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ratio(sidecar, "team-a") > 0
    finally:
        primary.set(chunk_delay=0.0, chunks=5, text="")
        sidecar.stop()
