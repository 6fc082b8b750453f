"""The cascade's outcome: the accepted step's outcome carries the earlier steps — why each was not accepted
(on the trail and the route span), their attempts and their cost. The real Router; a scripted upstream."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from sidecar import config
from sidecar.core.types import ChatRequest, ChatResponse, Usage
from sidecar.policy.cascade import CascadeStep, Checks
from sidecar.routing import cascade
from sidecar.routing.router import Router
from sidecar.telemetry.decisions import route_span


def entry(group: str, name: str, price: float) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:9",
                                                    "api_key": "sk-test"},
            "model_info": {"id": name, "input_cost_per_token": price, "output_cost_per_token": price}}


def test_escalation_is_on_the_trail_with_attempts_and_cost() -> None:
    cfg = config.parse({"model_list": [entry("small", "s", 1e-6), entry("medium", "m", 1e-5),
                                       entry("large", "l", 1e-4)],
                        "sidecar_settings": {"cascade": {"small": {"escalate": ["medium", "large"],
                                                                   "min_length": 10}}}})
    texts = {"s": "short", "m": "", "l": "a long enough answer"}

    async def call(target: Any, request: ChatRequest, deadline: float, outcome: Any) -> ChatResponse:
        name = target.deployment.id
        return ChatResponse({"choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": texts[name]}}]},
                            usage=Usage(100, 10))

    async def run() -> None:
        router = Router(cfg, None, rng=random.Random(1))  # type: ignore[arg-type]
        router._call = call  # type: ignore[method-assign]
        settings = cfg.sidecar.cascade["small"]
        chat = ChatRequest(model="small", body={"model": "small", "messages": [{"role": "user", "content": "hi"}]})
        prices = {d.id: d.model_info for d in cfg.deployments}
        response, outcome, earlier = await cascade.complete(router, chat, "small", settings, Checks(settings), None,
                                                            None, prices)
        assert response.data["choices"][0]["message"]["content"] == "a long enough answer"
        steps = [item for item in outcome.trail if isinstance(item, CascadeStep)]
        assert steps == [CascadeStep("small", "s", "too_short"), CascadeStep("medium", "m", "empty")]
        assert outcome.attempts == 3 and outcome.deployment == "l"
        assert outcome.group == "small" and outcome.fallback == "large"
        assert abs(earlier - (110 * 1e-6 + 110 * 1e-5)) < 1e-12
        labels = dict(route_span(outcome)[0])
        assert labels["sidecar.routing.cascade"] == ("small: too_short", "medium: empty")

    asyncio.run(run())
