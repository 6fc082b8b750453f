"""Budgets at the edge: the ledger (``policy.budget``) fed by answered requests, shared through Redis.

The request path reads and writes memory: ``admit`` asks the ledger, ``spend`` adds to it and queues the
amount. The one exception is a window whose shared total this process has not read yet (after a start, for a
team, key or user first seen, or when a window rolls over): ``admit`` reads it first — one ``MGET``, shared by
the requests that need it at the same time, waited for at most ``LOAD_TIMEOUT`` — so a restart opens no
window in which a spent budget lets requests through. Redis slow or down: the check goes on from memory.

One background flush at a time sends the queued amounts to Redis (``INCRBYFLOAT`` on one key per budget and
window, with an ``EXPIRE`` just past the window) and merges each reply — the shared total across pods — into
the ledger; a timer also reads the totals every ``REFRESH_SECONDS`` (first at start), so a sidecar that
spends nothing still sees what the others spent. When Redis fails, amounts stay queued for the next try and
the ledger keeps counting this process's spend: requests are never failed by Redis, nor slowed by more than
``LOAD_TIMEOUT`` once per window.

A budget with a soft limit logs ``budget soft limit reached`` once per window (and team, key or user) when
its spend — this pod's or the fleet's, as Redis reports it — reaches it, and counts it in
``llm_sidecar_budget_soft_limit_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from sidecar.config.shared import KeyOwner, SharedSettings
from sidecar.core.errors import BudgetExceeded
from sidecar.policy.budget import BudgetLedger, BudgetWindow, Principal
from sidecar.state.redis import RedisGate, client, pod_id, warm_up

log = logging.getLogger("sidecar.budgets")
INBOUND_KEY: ContextVar[KeyOwner | None] = ContextVar("inbound_key", default=None)  # set by the server's auth
USER_HEADER = "x-sidecar-user"  # the user a request is for, when the body has no ``user``


def principal(body: Mapping[str, Any], headers: Mapping[str, str]) -> Principal:
    """Who a request is from: the inbound key it was made with (its name and team) and the user — the
    body's ``user`` (Anthropic's ``metadata.user_id`` arrives as it), else the ``x-sidecar-user`` header."""
    owner = INBOUND_KEY.get()
    user = body.get("user")
    if not isinstance(user, str) or not user:
        user = headers.get(USER_HEADER) or None
    if owner is None:
        return Principal(None, None, user)
    return Principal(owner.name, owner.team, user)
REFRESH_SECONDS = 1.0
REDIS_TIMEOUT = 0.5
LOAD_TIMEOUT = 0.1  # a request waits this long at most for a window's shared total read on its behalf
EXPIRE_MARGIN_SECONDS = 3600  # keys outlive their window a little, for late increments and inspection
MAX_PENDING = 20_000  # windows whose part waits for Redis (~300 bytes each); beyond, spend stays local
# KEYS[1]: a budget window's hash, one field per pod: that pod's own spend in the window. ARGV: this pod's
# field, its spend, the key's expiry (s). Setting a value, not adding to one, makes a write sent twice (a reply
# lost, a pipeline retried) count once. A counter of an earlier version (a string, INCRBYFLOAT'd) becomes the
# field "counter". Returns every field. One key per call: Redis Cluster routes it by that key.
WRITE = """
if redis.call('type', KEYS[1]).ok == 'string' then
  local old = redis.call('get', KEYS[1])
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[1], 'counter', old)
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
return redis.call('hgetall', KEYS[1])
"""
# KEYS[1]: a budget window's hash; ARGV[1]: this pod's field. At shutdown the pod's part joins the field "counter"
# (the same total, one field fewer): the hash holds the pods alive, not every process that ever ran in the window.
FOLD = """
local own = redis.call('hget', KEYS[1], ARGV[1])
if own then
  redis.call('hincrbyfloat', KEYS[1], 'counter', own)
  redis.call('hdel', KEYS[1], ARGV[1])
end
"""


class Budgets:
    """The process's budgets: checks and spend in memory, Redis synchronised off the request path."""

    def __init__(self, shared: SharedSettings, groups: Iterable[str], *, redis: Any = None,
                 gate: RedisGate | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ledger = BudgetLedger(shared.budgets, groups)
        self.prefix = f"{shared.namespace}:budget:"
        self.redis = redis
        self.gate = gate
        self.clock = clock  # wall clock: windows are aligned to the UTC epoch so all pods agree
        self.pod = pod_id()  # this process's field in every budget key
        self._field = self.pod.encode()
        # (window id, number) -> (this process's part of the window, when the window ends): sent, then dropped
        self.pending: dict[tuple[str, int], tuple[float, float]] = {}
        self.dropped = 0  # windows whose part was not queued: ``MAX_PENDING`` were waiting already
        self._damage_noted = False
        self._loading: dict[tuple[str, int], asyncio.Task[None]] = {}  # windows being read for ``admit``
        self._flush: asyncio.Task[None] | None = None
        self.soft_reached: dict[str, int] = {}  # budget name -> soft limits reached (metric)

    @classmethod
    def from_settings(cls, shared: SharedSettings, groups: Iterable[str]) -> Budgets:
        if shared.redis is None:
            return cls(shared, groups)
        return cls(shared, groups, redis=client(shared.redis), gate=RedisGate("budgets", shared.redis))

    # ---- the request path (memory only) ---------------------------------------------------------

    @property
    def scoped(self) -> bool:
        """Do budgets look at who asked? (If not, the request path does not work out who did.)"""
        return self.ledger.scoped

    async def admit(self, group: str, who: Principal | None = None) -> None:
        """``check``, after reading the shared totals of the windows covering the request that this process
        has not read yet (bounded by ``LOAD_TIMEOUT``; the read goes on in the background past it)."""
        if self.redis is not None:
            stale = self.ledger.unsynced(group, self.clock(), who)
            if stale:
                await self._load(stale)
        self.check(group, who)

    def check(self, group: str, who: Principal | None = None) -> None:
        """Raise ``BudgetExceeded`` when a budget covering ``group`` (and ``who``) is spent in its window."""
        exceeded = self.ledger.check(group, self.clock(), who)
        if exceeded is not None:
            raise BudgetExceeded(exceeded.message, retry_after=float(max(1, math.ceil(exceeded.retry_after))))

    def spend(self, groups: Iterable[str], cost: float, who: Principal | None = None) -> None:
        """Count an answer's cost against the budgets covering ``groups`` (and ``who``); share it in the
        background."""
        if cost <= 0:
            return
        touched = self.ledger.add(groups, cost, self.clock(), who)
        for window, _ in touched:
            self._soft(window)
        if self.redis is None or not touched:
            return
        for window, number in touched:
            self._queue(window, number, cost)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self.flush())

    # ---- Redis, off the request path ------------------------------------------------------------

    def _queue(self, window: BudgetWindow, number: int, cost: float) -> None:
        """Queue this process's part of ``window`` (its whole part so far: sending it twice counts it once)."""
        key = (window.id, number)
        queued = self.pending.get(key)
        if queued is not None:  # a window evicted and made again while its part waited: it goes on from there
            window.own = max(window.own, queued[0] + cost)
        elif len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % MAX_PENDING == 0:
                log.warning("budgets: %d windows' spend waits for redis; spend of further ones stays local",
                            MAX_PENDING, extra={"fields": {"dropped": self.dropped}})
            return
        self.pending[key] = (window.own, window.ends_at(number))

    def _key(self, name: str, window: int) -> str:
        return f"{self.prefix}{name}:{window}"

    def _gate_open(self) -> bool:
        """Asked once per operation: after a failure the gate lets one probe through, and a second ask
        in the same operation would be refused."""
        return self.gate is None or self.gate.open

    def _failed(self, error: BaseException) -> None:
        if self.gate is not None:
            self.gate.failed(error)

    def _succeeded(self) -> None:
        if self.gate is not None:
            self.gate.succeeded()

    async def flush(self) -> None:
        """Send the queued parts; merge the shared totals they return. Kept queued if Redis fails."""
        if self.redis is not None and self._gate_open():
            await self._send()

    async def _send(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, {}
            now = self.clock()
            # a window whose key has expired anyway is not written again
            sent = [(key, own, ends) for key, (own, ends) in batch.items() if ends + EXPIRE_MARGIN_SECONDS > now]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for (name, window), own, ends in sent:
                        pipe.eval(WRITE, 1, self._key(name, window), self.pod, repr(own),
                                  max(1, int(ends - now) + EXPIRE_MARGIN_SECONDS))
                    replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), REDIS_TIMEOUT)
            except Exception as error:
                for key, queued in batch.items():  # parts only grow: the larger is the newer
                    if key not in self.pending or self.pending[key][0] < queued[0]:
                        self.pending[key] = queued
                self._failed(error)
                return
            self._succeeded()
            for ((name, window), _, _), reply in zip(sent, replies, strict=True):
                self._observe(name, window, reply)

    async def _load(self, stale: list[tuple[str, int]]) -> None:
        missing = [w for w in stale if w not in self._loading]
        if missing:
            task = asyncio.ensure_future(self._read(missing))
            for window in missing:
                self._loading[window] = task

            def done(_: object) -> None:
                for window in missing:
                    if self._loading.get(window) is task:
                        del self._loading[window]
            task.add_done_callback(done)
        await asyncio.wait({self._loading[w] for w in stale if w in self._loading}, timeout=LOAD_TIMEOUT)

    async def _read(self, windows: list[tuple[str, int]]) -> None:
        """Read and merge the shared totals of ``windows`` (a window with no key yet has spent nothing)."""
        if self.redis is not None and self._gate_open():
            await self._fetch(windows)

    async def _fetch(self, windows: list[tuple[str, int]]) -> None:
        try:
            # one HGETALL per key, pipelined (a cluster client splits the pipeline per node)
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, window in windows:
                    pipe.hgetall(self._key(name, window))
                replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), REDIS_TIMEOUT)
        except Exception as error:
            self._failed(error)
            return
        self._succeeded()
        for (name, window), reply in zip(windows, replies, strict=True):
            self._observe(name, window, reply)

    async def refresh(self) -> None:
        """Read every budget's shared total for its current window (and send anything still queued)."""
        if self.redis is None or not self._gate_open():
            return
        if self.pending:
            await self._send()
            return
        now = self.clock()
        current = [(name, int(now // w.settings.period)) for name, w in self.ledger.windows.items()]
        if current:
            await self._fetch(current)

    def _observe(self, name: str, window: int, reply: object) -> None:
        """Merge a key's reply: its fields (a dict from HGETALL, a flat list from the script), one per pod."""
        if isinstance(reply, list):
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        if not isinstance(reply, dict):  # an error for this key alone (a value of another type)
            self._damaged(name, reply)
            return
        total = own = 0.0
        for field, value in reply.items():
            amount = _amount(value)
            if amount is None:
                self._damaged(name, value)
                continue
            total += amount
            if field == self._field:
                own = amount
        merged = self.ledger.observe(name, window, total, own)
        if merged is not None:
            self._soft(merged)

    def _damaged(self, name: str, what: object) -> None:
        """A budget key's value that is not a spend (not a number, NaN, infinite, negative): left out, logged
        once per process."""
        if not self._damage_noted:
            self._damage_noted = True
            log.warning("budgets: a value in redis that is not a spend was ignored",
                        extra={"fields": {"budget": name, "value": repr(what)[:80]}})

    def _soft(self, window: BudgetWindow) -> None:
        if window.past_soft():
            name = window.settings.name
            self.soft_reached[name] = self.soft_reached.get(name, 0) + 1
            log.warning("budget soft limit reached", extra={"fields": {
                "budget": window.id, "spent_usd": round(window.spent, 6),
                "soft_budget_usd": window.settings.soft_budget_usd, "max_budget_usd": window.settings.max_budget_usd}})

    async def run(self) -> None:
        """The refresh timer (started by the server when a Redis is configured); reads at once first. An
        error does not end it: it is logged (once per series) and the next tick tries again."""
        if self.redis is not None and self.gate is not None:
            await warm_up(self.redis, self.gate)
        failing = False
        while True:
            try:
                await self.refresh()
            except Exception:
                if not failing:
                    log.exception("budgets: reading the shared spend failed; trying again every %g s",
                                  REFRESH_SECONDS)
                failing = True
            else:
                failing = False
            await asyncio.sleep(REFRESH_SECONDS)

    async def drain(self) -> None:
        """Wait for the flush in flight, then send what is still queued (at shutdown, and in tests)."""
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)
        if self.pending and self.redis is not None:
            await self.flush()

    async def aclose(self, final: bool = True) -> None:
        """Send what is queued and close. ``final``: the process is stopping (not a reload handing the same
        fields on to the next config's budgets), so its fields fold into "counter"."""
        await self.drain()
        if final:
            await self._fold()
        if self.redis is not None:
            with contextlib.suppress(Exception):  # closing a connection to a Redis that is gone
                await self.redis.aclose()

    async def _fold(self) -> None:
        """At shutdown, once everything is sent: this process's field of each window it spent in joins the
        field "counter" (best effort, bounded: a pod that dies leaves its field until the key expires)."""
        if self.redis is None or self.pending or not self._gate_open():
            return
        spent = [w for w in self.ledger.windows.values() if w.own > 0 and w.window >= 0]
        if not spent:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for window in spent:
                    pipe.eval(FOLD, 1, self._key(window.id, window.window), self.pod)
                await asyncio.wait_for(pipe.execute(raise_on_error=False), REDIS_TIMEOUT)
        except Exception as error:
            self._failed(error)

    # ---- /metrics -------------------------------------------------------------------------------

    def render(self) -> str:
        """``llm_sidecar_budget_used_ratio`` and ``llm_sidecar_budget_spend_usd`` per budget (Prometheus)."""
        now = self.clock()
        # per-user windows would be a series each: the metrics show budgets, and per-team and per-key scopes
        windows: list[BudgetWindow] = [w for w in self.ledger.windows.values() if w.settings.per != "user"]
        ratio = [f'llm_sidecar_budget_used_ratio{{budget="{_esc(w.id)}"}} {w.ratio(now):.6g}' for w in windows]
        spend = [f'llm_sidecar_budget_spend_usd{{budget="{_esc(w.id)}"}} {w.spent:.10g}' for w in windows]
        soft = [f'llm_sidecar_budget_soft_limit_total{{budget="{_esc(name)}"}} {count}'
                for name, count in self.soft_reached.items()]
        return "\n".join([
            "# HELP llm_sidecar_budget_used_ratio Spend / limit of each budget in its current window, 0..1.",
            "# TYPE llm_sidecar_budget_used_ratio gauge", *ratio,
            "# HELP llm_sidecar_budget_spend_usd Spend in USD of each budget in its current window.",
            "# TYPE llm_sidecar_budget_spend_usd gauge", *spend,
            "# HELP llm_sidecar_budget_soft_limit_total Times a budget's spend reached its soft limit in a window.",
            "# TYPE llm_sidecar_budget_soft_limit_total counter", *soft,
            "# HELP llm_sidecar_budget_unshared_total Spends not queued for Redis (too many windows waiting for it).",
            "# TYPE llm_sidecar_budget_unshared_total counter",
            f"llm_sidecar_budget_unshared_total {self.dropped}", ""])


def _amount(value: object) -> float | None:
    """A pod's spend as Redis holds it, or None when it is not one (not a number, NaN, infinite, negative)."""
    try:
        amount = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
