"""Budgets per team, key and user, as apps see them: inbound keys that belong to teams, a soft limit that
warns before the hard one refuses, two sidecars sharing spend through a real Redis, and spend that
survives a restart. Prices as in ``test_budgets``: every answer here costs 0.008 USD."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import requests

from tests.integration.procs import FakeProvider, RedisServer, Sidecar
from tests.integration.test_budgets import MESSAGES, priced

SEARCH_KEY, ADS_KEY = "sk-team-search-0001", "sk-team-ads-0002"


def config(primary: FakeProvider, redis_server: RedisServer, namespace: str) -> dict[str, Any]:
    return {"model_list": [priced("b", primary)],
            "router_settings": {"timeout": 10, "num_retries": 0},
            "sidecar_settings": {
                "inbound_api_keys": [{"key": SEARCH_KEY, "name": "search-app", "team": "search"},
                                     {"key": ADS_KEY, "name": "ads-app", "team": "ads"}],
                "redis": {"url": redis_server.url, "namespace": namespace},
                "budgets": [
                    {"name": "search", "team": "search", "max_budget_usd": 0.02, "soft_budget_usd": 0.012,
                     "period": "1h"},
                    {"name": "per-user", "per": "user", "max_budget_usd": 0.005, "period": "1h"},
                ]}}


def client(sidecar: Sidecar, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=key, max_retries=0, timeout=20)


def ask(sidecar: Sidecar, key: str, user: str) -> Any:
    return client(sidecar, key).chat.completions.create(model="b", messages=MESSAGES, user=user)


def test_team_and_user_budgets_shared_by_two_sidecars_and_kept_across_a_restart(
        workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    namespace = f"teams{time.time_ns()}"
    first, second = (Sidecar(config(primary, redis_server, namespace), workdir, f"teams-{i}") for i in range(2))
    try:
        assert ask(first, SEARCH_KEY, "alice").choices[0].message.content
        with pytest.raises(openai.RateLimitError) as refused:  # alice's own budget is spent
            ask(first, SEARCH_KEY, "alice")
        assert "per-user" in refused.value.message and "alice" not in refused.value.message
        assert ask(second, SEARCH_KEY, "bob").choices[0].message.content  # the team's second answer
        logs = _wait(lambda: first.logs() + second.logs(), "budget soft limit reached")
        assert '"budget":"search"' in logs  # 0.016 of 0.02 spent: warned, still allowed
        time.sleep(1.5)  # each sidecar reads the shared totals every second
        assert ask(first, SEARCH_KEY, "carol").choices[0].message.content  # the team's third: now spent
        time.sleep(1.5)
        with pytest.raises(openai.RateLimitError) as team:
            ask(second, SEARCH_KEY, "dave")  # the other pod knows it through Redis
        assert "'search'" in team.value.message
        assert ask(second, ADS_KEY, "dave").choices[0].message.content  # another team is not held back
        metrics = requests.get(f"{second.admin_url}/metrics", timeout=5).text
        assert re.search(r'^llm_sidecar_budget_soft_limit_total\{budget="search"\} 1$', metrics, re.M)
        first.stop()
        restarted = Sidecar(config(primary, redis_server, namespace), workdir, "teams-restarted")
        try:
            time.sleep(0.5)
            with pytest.raises(openai.RateLimitError):  # spend survived the restart
                ask(restarted, SEARCH_KEY, "erin")
        finally:
            restarted.stop()
        assert primary.stats()["requests"] == 4
    finally:
        first.stop()
        second.stop()


def _wait(text: Any, needle: str) -> str:
    deadline = time.monotonic() + 5
    while needle not in text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return str(text())


def test_per_key_and_per_user_spend_is_refused_on_the_first_request_after_a_crash(
        workdir: Path, primary: FakeProvider, redis_server: RedisServer) -> None:
    """No window after a restart in which a spent key or user gets through: the first request of a key or
    user this process has not seen reads its window's shared spend before the check."""
    namespace = f"restart{time.time_ns()}"
    settings = config(primary, redis_server, namespace)
    settings["sidecar_settings"]["budgets"] = [
        {"name": "per-key", "per": "key", "max_budget_usd": 0.005, "period": "1h"},
        {"name": "per-user", "per": "user", "max_budget_usd": 0.005, "period": "1h"}]
    first = Sidecar(settings, workdir, "budget-crash")
    try:
        assert ask(first, SEARCH_KEY, "alice").choices[0].message.content  # spends search-app's and alice's
        spent = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2)
        deadline = time.monotonic() + 5
        while len(spent.keys(f"{namespace}:budget:*")) < 2:  # the spend reached Redis (sent right after)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        spent.close()
    finally:
        first.process.kill()  # no graceful drain: what Redis holds is all that survives
        first.process.wait(10)
    restarted = Sidecar(settings, workdir, "budget-crash-restarted")
    try:
        with pytest.raises(openai.RateLimitError) as key:  # the very first request after the start
            ask(restarted, SEARCH_KEY, "zoe")
        assert "per-key" in key.value.message
        with pytest.raises(openai.RateLimitError) as user:
            ask(restarted, ADS_KEY, "alice")
        assert "per-user" in user.value.message
        assert ask(restarted, ADS_KEY, "bob").choices[0].message.content  # a key and user with money left
        assert primary.stats()["requests"] == 2
    finally:
        restarted.stop()
