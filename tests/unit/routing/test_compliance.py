"""Hard compliance: a request a rule restricts to ``eu`` deployments never reaches another one — not on a retry,
not in a fallback group (plain or context-window), not through hedging or panic routing, and not from the
catch-all's remembered answers — under any mix of failures (hypothesis). The real ``Router`` runs; only its
one non-streaming call (``Router._call``) is replaced by a scripted upstream that records who was called."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import config
from sidecar.core.errors import (
    ContextWindowExceeded,
    RateLimited,
    RuleRefused,
    SidecarError,
    UpstreamServerError,
    UpstreamTimeout,
)
from sidecar.core.types import ChatRequest, ChatResponse, Usage
from sidecar.policy.rules import RuleDecision, RuleSet
from sidecar.routing.router import Router
from sidecar.telemetry.decisions import event, route_span

EU = {"eu-a", "eu-b", "eu-backup", "eu-big"}


def entry(group: str, name: str, eu: bool) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:9",
                                                    "api_key": "sk-test"},
            "model_info": {"id": name, "tags": ["eu"] if eu else ["us"]}}


def make_config(hedging: bool, refuse: bool, retries: int, only_us: bool = False) -> config.Config:
    models = [entry("main", "us-a", False), entry("main", "us-b", False), entry("backup", "us-backup", False),
              entry("big", "us-big", False), entry("usonly", "us-only", False)]
    if not only_us:
        models += [entry("main", "eu-a", True), entry("main", "eu-b", True), entry("backup", "eu-backup", True),
                   entry("big", "eu-big", True)]
    sidecar: dict[str, Any] = {
        "rules": [{"name": "eu-only", "when": {"headers": {"x-sidecar-region": "eu"}}, "require_tags": ["eu"]}]
        if not only_us else [],
        "catch_all": {"last_good": True},
        "breaker": {"when_all_open": "refuse" if refuse else "panic", "error_rate": False},
    }
    if hedging:
        sidecar["hedging"] = {"main": {"after": 0.001}, "backup": {"after": 0.001}}
    return config.parse({
        "model_list": models,
        "router_settings": {"num_retries": retries, "allowed_fails": 1, "cooldown_time": 0.05, "timeout": 5,
                            "fallbacks": [{"main": ["backup"]}, {"usonly": ["main"]}],
                            "context_window_fallbacks": [{"main": ["big"]}]},
        "sidecar_settings": sidecar,
    })


BEHAVIOURS = ("ok", "429", "500", "timeout", "slow", "context")


class Upstream:
    """Answers each call by the next scripted behaviour (then ``ok``), recording which deployment was called."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.calls: list[str] = []

    async def __call__(self, target: Any, request: ChatRequest, deadline: float, outcome: Any) -> ChatResponse:
        name = target.deployment.id
        self.calls.append(name)
        behaviour = self.script.pop(0) if self.script else "ok"
        if behaviour == "slow":
            await asyncio.sleep(0.003)
        elif behaviour == "429":
            raise RateLimited("slow down", upstream_status=429, retry_after=0.01)
        elif behaviour == "500":
            raise UpstreamServerError("boom", upstream_status=500)
        elif behaviour == "timeout":
            raise UpstreamTimeout("too slow", phase="first_byte")
        elif behaviour == "context":
            raise ContextWindowExceeded("too long", upstream_status=400)
        data = {"id": "x", "object": "chat.completion", "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"from {name}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        return ChatResponse(data, usage=Usage(1, 1))


def no_backoff(router: Router) -> None:
    """Retries with millisecond backoffs (the policy decides as configured; only its waits are short)."""
    router.retry_policy = dataclasses.replace(router.retry_policy, base=0.001, cap=0.002)


def chat(text: str) -> ChatRequest:
    body = {"model": "main", "messages": [{"role": "user", "content": text}]}
    return ChatRequest(model="main", body=body)


async def scenario(cfg: config.Config, seed: int, warmup: list[str], script: list[str], requests: int,
                   ) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Unrestricted requests fill the catch-all from any deployment; then restricted requests run the script.
    Returns (deployments the restricted requests called, (how each ended, who answered))."""
    router = Router(cfg, None, rng=random.Random(seed))  # type: ignore[arg-type]
    no_backoff(router)
    rules = RuleSet(cfg.sidecar.rules)
    warm = Upstream(warmup)
    router._call = warm  # type: ignore[method-assign]
    for i in range(requests):
        with contextlib.suppress(SidecarError):
            await router.complete(chat(f"q{i}"))
    upstream = Upstream(script)
    router._call = upstream  # type: ignore[method-assign]
    ends: list[tuple[str, str | None]] = []
    for i in range(requests):
        request = chat(f"q{i}")
        decision = rules.decide(request, {"x-sidecar-region": "eu"})
        assert decision is not None and decision.restricted
        try:
            response, outcome = await router.complete(request, decision)
        except SidecarError as error:
            ends.append((error.error_class, None))
            continue
        ends.append((outcome.catch_all or "answer", response.data.get("model")))
    return upstream.calls, ends


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), hedging=st.booleans(), refuse=st.booleans(), retries=st.integers(0, 2),
       warmup=st.lists(st.sampled_from(BEHAVIOURS), max_size=8),
       script=st.lists(st.sampled_from(BEHAVIOURS), max_size=24), requests=st.integers(1, 4))
def test_restricted_requests_never_reach_untagged_deployments(seed: int, hedging: bool, refuse: bool, retries: int,
                                                             warmup: list[str], script: list[str],
                                                             requests: int) -> None:
    cfg = make_config(hedging, refuse, retries)
    calls, ends = asyncio.run(scenario(cfg, seed, warmup, script, requests))
    assert set(calls) <= EU, f"a restricted request reached {set(calls) - EU}"
    for how, model in ends:
        assert how != "last_good", "a restricted request got a remembered answer"
        if how == "answer":
            assert model in EU


def test_a_script_of_only_successes_reaches_eu_and_the_trail_shows_the_rule() -> None:
    async def run() -> None:
        cfg = make_config(False, False, 0)
        router = Router(cfg, None, rng=random.Random(1))  # type: ignore[arg-type]
        router._call = Upstream([])  # type: ignore[method-assign]
        decision = RuleSet(cfg.sidecar.rules).decide(chat("q"), {"x-sidecar-region": "eu"})
        response, outcome = await router.complete(chat("q"), decision)
        assert response.data["model"] in EU and outcome.rule == "eu-only"
        assert outcome.trail[0] == decision
        skipped = {s.deployment: s.reason for s in outcome.trail if type(s).__name__ == "Skip"}
        assert skipped == {"us-a": "rule:eu-only", "us-b": "rule:eu-only"}
        labels = dict(route_span(outcome)[0])  # the route span shows the decision
        assert labels["sidecar.routing.rule"] == "eu-only"
        assert event(decision) == ("rule", {"sidecar.routing.rule": "eu-only", "sidecar.rule.group": None,
                                            "sidecar.rule.require_tags": ("eu",), "sidecar.rule.exclude_tags": None,
                                            "sidecar.rule.strategy": None})

    asyncio.run(run())


def test_nothing_eligible_is_a_403_naming_the_rule() -> None:
    async def run() -> None:
        cfg = make_config(False, False, 0)
        router = Router(cfg, None, rng=random.Random(1))  # type: ignore[arg-type]
        upstream = Upstream([])
        router._call = upstream  # type: ignore[method-assign]
        decision = RuleDecision("eu-only", group="usonly", require=frozenset({"eu"}))
        # usonly's one deployment is not eu: its fallback (main) has eu ones, so the request goes there
        response, _ = await router.complete(chat("q"), decision)
        assert response.data["model"] in EU
        strict = RuleDecision("mars-only", require=frozenset({"mars"}))
        with pytest.raises(RuleRefused) as refused:
            await router.complete(chat("q"), strict)
        assert refused.value.status == 403 and "'mars-only'" in refused.value.message
        assert set(upstream.calls) <= EU

    asyncio.run(run())


def test_eligible_deployments_all_failing_is_a_503_naming_the_rule() -> None:
    async def run() -> None:
        cfg = make_config(False, True, 0)
        router = Router(cfg, None, rng=random.Random(1))  # type: ignore[arg-type]
        router._call = Upstream(["500"] * 50)  # type: ignore[method-assign]
        decision = RuleSet(cfg.sidecar.rules).decide(chat("q"), {"x-sidecar-region": "eu"})
        with pytest.raises(SidecarError) as failed:
            await router.complete(chat("fresh"), decision)
        assert failed.value.status == 503 and "'eu-only'" in failed.value.message

    asyncio.run(run())
