"""Shadow traffic: a share of a model group's requests is copied to a shadow group, whose answers are discarded.

After the app has its answer (the copy never delays it), ``Shadows.copy`` starts the copy as a task of its own:
a whole (non-streamed) request to the shadow group with the router's own timeout — not the app's deadline —
no budget check or spend, no response cache, no catch-all, no session affinity. A request rule's tags still
bind it: a copy of a restricted request goes only to deployments the rule allows (else it is not sent, and
counted ``rule_refused``). Its latency, errors, tokens and cost go to the ``llm_sidecar_shadow_*`` metrics, and,
with tracing on, to a trace of its own (``POST /shadow/<group>``). At most ``max_in_flight`` copies run at
once; past that a copy is dropped and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING

from sidecar.config import ModelInfo, ShadowSettings
from sidecar.core.cost import request_cost
from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, Endpoint
from sidecar.policy.rules import RuleDecision
from sidecar.routing.cascade import whole
from sidecar.routing.outcome import Outcome
from sidecar.routing.router import Router
from sidecar.telemetry import RequestMetrics
from sidecar.telemetry.record import CURRENT_OUTCOME, RequestRecord

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Tracing

log = logging.getLogger("sidecar.shadow")


class Shadows:
    """The configured shadows of one config (one router), and the copies they have under way."""

    def __init__(self, settings: Mapping[str, ShadowSettings], router: Router, metrics: RequestMetrics,
                 tracing: Tracing | None, prices: Mapping[str, ModelInfo], rng: random.Random | None = None) -> None:
        self.settings = settings
        self.router = router
        self.metrics = metrics
        self.tracing = tracing
        self.prices = prices
        self.rng = rng or random.Random()
        self.running: dict[str, set[asyncio.Task[None]]] = {group: set() for group in settings}

    def copy(self, group: str, chat: ChatRequest, decision: RuleDecision | None) -> None:
        """Maybe copy ``chat`` (asked of ``group``, decided by ``decision``) to the group's shadow."""
        shadow = self.settings.get(group)
        if shadow is None or chat.endpoint is not Endpoint.CHAT or self.rng.random() >= shadow.share:
            return
        running = self.running[group]
        if len(running) >= shadow.max_in_flight:
            self.metrics.shadow[(group, shadow.to, "", "dropped")] += 1
            return
        request = whole(chat)
        request = dataclasses.replace(request, model=shadow.to, body={**request.body, "model": shadow.to})
        if decision is not None:  # its tags still bind the copy; its group does not
            decision = dataclasses.replace(decision, group=None)
        task = asyncio.get_running_loop().create_task(self._run(group, shadow.to, request, decision))
        running.add(task)
        task.add_done_callback(running.discard)

    async def _run(self, group: str, to: str, request: ChatRequest, decision: RuleDecision | None) -> None:
        record = RequestRecord(f"shadow-{uuid.uuid4().hex[:16]}", to)
        spans = None if self.tracing is None else self.tracing.start_request(
            "POST", f"/shadow/{to}", {}, to, request.body)
        CURRENT_OUTCOME.set(None)
        started, outcome = perf_counter(), None
        try:
            _, outcome = await self.router.complete(request, decision, catch_all=False)
            record.outcome, record.status = "success", 200
        except SidecarError as error:
            record.outcome, record.status, record.error_type = "error", error.status, error.error_class
        except Exception:  # a copy must never take anything down with it
            log.exception("shadow copy to %s failed", to)
            record.error_type = "internal"
        finally:
            record.seconds = perf_counter() - started
            tried = outcome or CURRENT_OUTCOME.get()
            self._record(group, to, record, tried if isinstance(tried, Outcome) else None)
            if spans is not None:
                spans.finish(record, tried if isinstance(tried, Outcome) else None)

    def _record(self, group: str, to: str, record: RequestRecord, outcome: Outcome | None) -> None:
        deployment = (outcome.deployment or "") if outcome is not None else ""
        record.deployment = deployment
        verdict = "success" if record.outcome == "success" else (record.error_type or "error")
        metrics = self.metrics
        metrics.shadow[(group, to, deployment, verdict)] += 1
        metrics.shadow_duration.observe((group, to, verdict), record.seconds)
        usage = outcome.usage if outcome is not None else None
        if usage is not None:
            record.usage = usage
            metrics.shadow_tokens[(to, deployment, "input")] += usage.prompt_tokens
            metrics.shadow_tokens[(to, deployment, "output")] += usage.completion_tokens
            cost = request_cost(usage, self.prices.get(deployment))
            if cost is not None:
                record.cost = cost
                metrics.shadow_cost[(to, deployment)] += cost
