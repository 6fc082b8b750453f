"""Spend budgets as fixed windows: how much each budget has spent in its current window, and whether a
request for a model group may go ahead. Pure: the time (seconds since the UTC epoch) is an argument.

Windows are aligned to the epoch — window ``n`` of a budget with period ``p`` is ``[n·p, (n+1)·p)`` — so
every sidecar agrees on them without talking. Spend is a local view: ``add`` counts this process's
answers, ``observe`` merges a shared total (a Redis counter's reply) by taking the larger value, so a
reply never undoes spend counted while it was in flight or while Redis was unreachable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.config.shared import BudgetSettings


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A refusal: ``budget`` is spent until ``retry_after`` seconds from now."""

    budget: BudgetSettings
    spent: float
    retry_after: float

    @property
    def message(self) -> str:
        b = self.budget
        return (f"the budget '{b.name}' (${b.max_budget_usd:g} per {b.period_text}) is spent; "
                f"it resets in {math.ceil(self.retry_after)} s")


class BudgetWindow:
    """One budget's spend in its current window."""

    __slots__ = ("settings", "spent", "window")

    def __init__(self, settings: BudgetSettings) -> None:
        self.settings = settings
        self.window = -1
        self.spent = 0.0

    def roll(self, now: float) -> int:
        """Move to the window ``now`` falls in (spend starts at zero there); return its number."""
        window = int(now // self.settings.period)
        if window != self.window:
            self.window, self.spent = window, 0.0
        return window

    def ends_at(self, window: int) -> float:
        return (window + 1) * self.settings.period

    def ratio(self, now: float) -> float:
        """Spend / limit in the current window, 0..1."""
        self.roll(now)
        return min(1.0, self.spent / self.settings.max_budget_usd)


class BudgetLedger:
    """Every budget's window, and which budgets cover each model group (computed once)."""

    def __init__(self, budgets: Sequence[BudgetSettings], groups: Iterable[str]) -> None:
        self.windows = {b.name: BudgetWindow(b) for b in budgets}
        self.covering: dict[str, tuple[BudgetWindow, ...]] = {
            group: tuple(w for w in self.windows.values() if not w.settings.models or group in w.settings.models)
            for group in groups
        }

    def adopt(self, old: BudgetLedger) -> None:
        """Carry the current spend of every budget that ``old`` also has, with the same name and period
        (on config reload: a raised limit or new models do not forget what was spent)."""
        for name, window in self.windows.items():
            previous = old.windows.get(name)
            if previous is not None and previous.settings.period == window.settings.period:
                window.window, window.spent = previous.window, previous.spent

    def check(self, group: str, now: float) -> Exceeded | None:
        """The first budget covering ``group`` that is spent in this window, else None."""
        for window in self.covering.get(group, ()):
            current = window.roll(now)
            if window.spent >= window.settings.max_budget_usd:
                return Exceeded(window.settings, window.spent, window.ends_at(current) - now)
        return None

    def add(self, groups: Iterable[str], cost: float, now: float) -> list[tuple[BudgetWindow, int]]:
        """Count ``cost`` once against every budget covering any of ``groups`` (the group asked for and the
        one that answered, when a fallback did); returns (budget, window) pairs to share."""
        touched: list[tuple[BudgetWindow, int]] = []
        for group in groups:
            for window in self.covering.get(group, ()):
                if any(w is window for w, _ in touched):
                    continue
                touched.append((window, window.roll(now)))
                window.spent += cost
        return touched

    def observe(self, name: str, window: int, total: float) -> None:
        """Merge a shared total for ``name``'s ``window`` (ignored when that window is not the current one)."""
        budget = self.windows.get(name)
        if budget is None or window < budget.window:
            return
        if window > budget.window:
            budget.window, budget.spent = window, 0.0
        budget.spent = max(budget.spent, total)
