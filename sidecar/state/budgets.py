"""Budgets at the edge: the ledger (``policy.budget``) fed by answered requests, shared through Redis.

The request path only reads and writes memory: ``check`` asks the ledger, ``spend`` adds to it and queues
the amount. One background flush at a time sends the queued amounts to Redis (``INCRBYFLOAT`` on one key per
budget and window, with an ``EXPIRE`` just past the window) and merges each reply — the shared total across
pods — into the ledger; a timer also reads the totals every ``REFRESH_SECONDS``, so a sidecar that spends
nothing still sees what the others spent. When Redis fails, amounts stay queued for the next try and the
ledger keeps counting this process's spend: requests are never failed or slowed by Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.config.shared import SharedSettings
from sidecar.core.errors import BudgetExceeded
from sidecar.policy.budget import BudgetLedger, BudgetWindow
from sidecar.state.redis import RedisGate, client

REFRESH_SECONDS = 1.0
REDIS_TIMEOUT = 0.5
EXPIRE_MARGIN_SECONDS = 3600  # keys outlive their window a little, for late increments and inspection


class Budgets:
    """The process's budgets: checks and spend in memory, Redis synchronised off the request path."""

    def __init__(self, shared: SharedSettings, groups: Iterable[str], *, redis: Any = None,
                 gate: RedisGate | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ledger = BudgetLedger(shared.budgets, groups)
        self.prefix = f"{shared.namespace}:budget:"
        self.redis = redis
        self.gate = gate
        self.clock = clock  # wall clock: windows are aligned to the UTC epoch so all pods agree
        self.pending: dict[tuple[str, int], float] = {}
        self._flush: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, shared: SharedSettings, groups: Iterable[str]) -> Budgets:
        if shared.redis is None:
            return cls(shared, groups)
        return cls(shared, groups, redis=client(shared.redis), gate=RedisGate("budgets", shared.redis))

    # ---- the request path (memory only) ---------------------------------------------------------

    def check(self, group: str) -> None:
        """Raise ``BudgetExceeded`` when a budget covering ``group`` is spent in its current window."""
        exceeded = self.ledger.check(group, self.clock())
        if exceeded is not None:
            raise BudgetExceeded(exceeded.message, retry_after=float(max(1, math.ceil(exceeded.retry_after))))

    def spend(self, groups: Iterable[str], cost: float) -> None:
        """Count an answer's cost against the budgets covering ``groups``; share it in the background."""
        if cost <= 0:
            return
        touched = self.ledger.add(groups, cost, self.clock())
        if self.redis is None or not touched:
            return
        for window, number in touched:
            key = (window.settings.name, number)
            self.pending[key] = self.pending.get(key, 0.0) + cost
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self.flush())

    # ---- Redis, off the request path ------------------------------------------------------------

    def _key(self, name: str, window: int) -> str:
        return f"{self.prefix}{name}:{window}"

    async def flush(self) -> None:
        """Send the queued amounts; merge the shared totals they return. Kept queued if Redis fails."""
        while self.pending and self.redis is not None:
            if self.gate is not None and not self.gate.open:
                return
            batch, self.pending = self.pending, {}
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for (name, window), amount in batch.items():
                        budget = self.ledger.windows[name]
                        expire = int(budget.ends_at(window) - self.clock()) + EXPIRE_MARGIN_SECONDS
                        pipe.incrbyfloat(self._key(name, window), amount)
                        pipe.expire(self._key(name, window), max(1, expire))
                    replies = await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT)
            except Exception as error:
                for key, amount in batch.items():
                    self.pending[key] = self.pending.get(key, 0.0) + amount
                if self.gate is not None:
                    self.gate.failed(error)
                return
            if self.gate is not None:
                self.gate.succeeded()
            for (name, window), total in zip(batch, replies[::2], strict=True):
                self.ledger.observe(name, window, float(total))

    async def refresh(self) -> None:
        """Read every budget's shared total for its current window (and send anything still queued)."""
        if self.redis is None or (self.gate is not None and not self.gate.open):
            return
        if self.pending:
            await self.flush()
            return
        now = self.clock()
        current = [(name, int(now // w.settings.period)) for name, w in self.ledger.windows.items()]
        try:
            totals = await asyncio.wait_for(self.redis.mget([self._key(n, w) for n, w in current]), REDIS_TIMEOUT)
        except Exception as error:
            if self.gate is not None:
                self.gate.failed(error)
            return
        if self.gate is not None:
            self.gate.succeeded()
        for (name, window), total in zip(current, totals, strict=True):
            if total is not None:
                self.ledger.observe(name, window, float(total))

    async def run(self) -> None:
        """The refresh timer (started by the server when a Redis is configured)."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self.refresh()

    async def drain(self) -> None:
        """Wait for the flush in flight, then send what is still queued (at shutdown, and in tests)."""
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)
        if self.pending and self.redis is not None:
            await self.flush()

    async def aclose(self) -> None:
        await self.drain()
        if self.redis is not None:
            with contextlib.suppress(Exception):  # closing a connection to a Redis that is gone
                await self.redis.aclose()

    # ---- /metrics -------------------------------------------------------------------------------

    def render(self) -> str:
        """``llm_sidecar_budget_used_ratio`` and ``llm_sidecar_budget_spend_usd`` per budget (Prometheus)."""
        now = self.clock()
        windows: list[BudgetWindow] = list(self.ledger.windows.values())
        ratio = [f'llm_sidecar_budget_used_ratio{{budget="{_esc(w.settings.name)}"}} {w.ratio(now):.6g}'
                 for w in windows]
        spend = [f'llm_sidecar_budget_spend_usd{{budget="{_esc(w.settings.name)}"}} {w.spent:.10g}' for w in windows]
        return "\n".join([
            "# HELP llm_sidecar_budget_used_ratio Spend / limit of each budget in its current window, 0..1.",
            "# TYPE llm_sidecar_budget_used_ratio gauge", *ratio,
            "# HELP llm_sidecar_budget_spend_usd Spend in USD of each budget in its current window.",
            "# TYPE llm_sidecar_budget_spend_usd gauge", *spend, ""])


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
