"""Spend budgets as fixed windows: how much each budget has spent in its current window, and whether a
request for a model group may go ahead. Pure: the time (seconds since the UTC epoch) is an argument.

Windows are aligned to the epoch — window ``n`` of a budget with period ``p`` is ``[n·p, (n+1)·p)`` — so
every sidecar agrees on them without talking. Spend is a local view: ``add`` counts this process's
answers (in ``spent`` and in ``own``, this process's part alone, which is what it shares), ``observe`` merges
a shared total (the sum of every pod's part in Redis) by taking the larger value, so a reply never undoes
spend counted while it was in flight or while Redis was unreachable.

A budget may look at who asked (``Principal``: the inbound key's name and team, and the user): it covers only
the teams, keys or users it names, and with ``per`` it is one limit per team, key or user — a window each,
made when first needed, at most ``MAX_SCOPES`` per budget (the least recently used goes first).

A window is *synced* once a shared total for its current window number has been merged (``observe``);
``unsynced`` names the windows a request would be checked against that are not — after a restart, a scope
first seen, or a window that just rolled over — so the caller can read their totals before the check.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sidecar.config.shared import BudgetSettings

MAX_SCOPES = 10_000  # windows of one per-team/key/user budget kept in memory


class Principal(NamedTuple):
    """Who a request is from, as budgets see it (None: not known)."""

    key: str | None = None  # the inbound key's name
    team: str | None = None
    user: str | None = None


def scope_label(per: str, value: str) -> str:
    """A scope in window ids (Redis keys, metrics): team and key names are the operator's; a user is the
    app's value, so it is hashed (bounded, no personal data in Redis or on /metrics)."""
    if per == "user":
        return "user#" + hashlib.blake2b(value.encode(), digest_size=8).hexdigest()
    return f"{per}={value}"


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A refusal: ``budget`` is spent until ``retry_after`` seconds from now."""

    budget: BudgetSettings
    spent: float
    retry_after: float

    @property
    def message(self) -> str:
        b = self.budget
        whose = f" for this {b.per}" if b.per else ""
        return (f"the budget '{b.name}' (${b.max_budget_usd:g} per {b.period_text}{whose}) is spent; "
                f"it resets in {math.ceil(self.retry_after)} s")


class BudgetWindow:
    """One budget's spend in its current window (for one team, key or user when the budget is ``per`` one)."""

    __slots__ = ("id", "own", "settings", "soft_noted", "spent", "synced", "window")

    def __init__(self, settings: BudgetSettings, id_: str | None = None) -> None:
        self.settings = settings
        self.id = id_ or settings.name  # the budget's name, or name/scope: its Redis key and metric label
        self.window = -1
        self.spent = 0.0
        self.own = 0.0  # this process's part of ``spent`` (what it writes to Redis as its own field)
        self.soft_noted = False  # the soft limit was reported in this window
        self.synced = -1  # the window whose shared total was last merged (-1: none yet)

    def roll(self, now: float) -> int:
        """Move to the window ``now`` falls in (spend starts at zero there); return its number."""
        window = int(now // self.settings.period)
        if window != self.window:
            self.window, self.spent, self.own, self.soft_noted = window, 0.0, 0.0, False
        return window

    def ends_at(self, window: int) -> float:
        return (window + 1) * self.settings.period

    def ratio(self, now: float) -> float:
        """Spend / limit in the current window, 0..1."""
        self.roll(now)
        return min(1.0, self.spent / self.settings.max_budget_usd)

    def past_soft(self) -> bool:
        """True once per window: the spend has reached the soft limit (report it now)."""
        soft = self.settings.soft_budget_usd
        if soft is None or self.soft_noted or self.spent < soft:
            return False
        self.soft_noted = True
        return True


class BudgetLedger:
    """Every budget's windows, and which budgets cover each model group (computed once)."""

    def __init__(self, budgets: Sequence[BudgetSettings], groups: Iterable[str]) -> None:
        self.budgets = {b.name: b for b in budgets}
        self.windows: dict[str, BudgetWindow] = {b.name: BudgetWindow(b) for b in budgets if b.per is None}
        self.scopes: dict[str, OrderedDict[str, BudgetWindow]] = {b.name: OrderedDict() for b in budgets if b.per}
        self.scoped = any(b.scoped for b in budgets)  # False: who asked never matters (skip building it)
        self.covering: dict[str, tuple[BudgetSettings, ...]] = {
            group: tuple(b for b in budgets if not b.models or group in b.models) for group in groups
        }

    def adopt(self, old: BudgetLedger) -> None:
        """Carry the current spend of every budget that ``old`` also has, with the same name and period
        (on config reload: a raised limit or new models do not forget what was spent)."""
        for id_, previous in old.windows.items():
            window = self._carried(id_, previous)
            if window is not None and previous.settings.period == window.settings.period:
                window.window, window.spent, window.synced = previous.window, previous.spent, previous.synced
                window.own = previous.own

    def _carried(self, id_: str, previous: BudgetWindow) -> BudgetWindow | None:
        window = self.windows.get(id_)
        if window is not None or previous.settings.per is None:
            return window
        scopes = self.scopes.get(previous.settings.name)
        if scopes is None:
            return None
        budget = self.budgets.get(previous.settings.name)
        if budget is None or budget.per != previous.settings.per:
            return None
        window = BudgetWindow(budget, id_)
        scopes[id_] = self.windows[id_] = window
        return window

    def _windows(self, group: str, who: Principal | None) -> Iterable[BudgetWindow]:
        """The windows that count a request of ``group`` from ``who``."""
        for budget in self.covering.get(group, ()):
            if not budget.scoped:
                yield self.windows[budget.name]
                continue
            if who is None:
                continue
            if ((budget.teams and who.team not in budget.teams) or (budget.keys and who.key not in budget.keys)
                    or (budget.users and who.user not in budget.users)):
                continue
            if budget.per is None:
                yield self.windows[budget.name]
                continue
            value = getattr(who, budget.per)
            if value is None:
                continue  # a per-team budget does not cover a key without a team
            yield self._scope(budget, f"{budget.name}/{scope_label(budget.per, value)}")

    def _scope(self, budget: BudgetSettings, id_: str) -> BudgetWindow:
        scopes = self.scopes[budget.name]
        window = scopes.get(id_)
        if window is None:
            window = scopes[id_] = self.windows[id_] = BudgetWindow(budget, id_)
            if len(scopes) > MAX_SCOPES:
                oldest, _ = scopes.popitem(last=False)
                del self.windows[oldest]
        else:
            scopes.move_to_end(id_)
        return window

    def check(self, group: str, now: float, who: Principal | None = None) -> Exceeded | None:
        """The first budget covering ``group`` (and ``who``) that is spent in this window, else None."""
        for window in self._windows(group, who):
            current = window.roll(now)
            if window.spent >= window.settings.max_budget_usd:
                return Exceeded(window.settings, window.spent, window.ends_at(current) - now)
        return None

    def unsynced(self, group: str, now: float, who: Principal | None = None) -> list[tuple[str, int]]:
        """(window id, window number) of the windows covering ``group`` (and ``who``) whose shared total for
        the current window has not been merged yet."""
        stale = []
        for window in self._windows(group, who):
            number = window.roll(now)
            if window.synced != number:
                stale.append((window.id, number))
        return stale

    def add(self, groups: Iterable[str], cost: float, now: float,
            who: Principal | None = None) -> list[tuple[BudgetWindow, int]]:
        """Count ``cost`` once against every budget covering any of ``groups`` (the group asked for and the
        one that answered, when a fallback did) and ``who``; returns (budget window, number) pairs to share."""
        touched: list[tuple[BudgetWindow, int]] = []
        for group in groups:
            for window in self._windows(group, who):
                if any(w is window for w, _ in touched):
                    continue
                touched.append((window, window.roll(now)))
                window.spent += cost
                window.own += cost
        return touched

    def observe(self, id_: str, window: int, total: float, own: float = 0.0) -> BudgetWindow | None:
        """Merge a shared total for window ``id_`` (ignored when that window is not the current one), and
        ``own``, this process's part of it as Redis has it (a window evicted and made again starts from it, so
        this process never writes a smaller part over a larger one); the window is synced."""
        budget = self.windows.get(id_)
        if budget is None or window < budget.window:
            return None
        if window > budget.window:
            budget.window, budget.spent, budget.own, budget.soft_noted = window, 0.0, 0.0, False
        budget.spent = max(budget.spent, total)
        budget.own = max(budget.own, own)
        budget.synced = window
        return budget
