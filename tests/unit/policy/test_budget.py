"""Budget windows with a fake clock: epoch-aligned fixed windows, refusals with the time to reset, and
shared totals merged without undoing local spend."""

from __future__ import annotations

import pytest

from sidecar.config.shared import BudgetSettings, SharedSettings
from sidecar.core.errors import BudgetExceeded
from sidecar.policy.budget import BudgetLedger, Principal
from sidecar.state.budgets import Budgets

HOUR = 3600.0
TEAM = BudgetSettings("team", 1.0, HOUR, "1h", ("gpt-4o",))
GLOBAL = BudgetSettings("global", 10.0, 86400.0, "1d")


def ledger() -> BudgetLedger:
    return BudgetLedger([TEAM, GLOBAL], ["gpt-4o", "claude"])


def test_budgets_cover_their_groups_or_all() -> None:
    book = ledger()
    assert [b.name for b in book.covering["gpt-4o"]] == ["team", "global"]
    assert [b.name for b in book.covering["claude"]] == ["global"]
    assert book.check("unknown-group", 0.0) is None


def test_spend_up_to_the_limit_then_refuse_until_the_window_ends() -> None:
    book = ledger()
    now = 10 * HOUR + 600  # ten minutes into a window
    assert book.check("gpt-4o", now) is None
    book.add(["gpt-4o"], 0.6, now)
    assert book.check("gpt-4o", now) is None  # 0.6 < 1.0
    book.add(["gpt-4o"], 0.4, now + 1)
    refused = book.check("gpt-4o", now + 60)
    assert refused is not None and refused.budget is TEAM
    assert refused.retry_after == pytest.approx(HOUR - 660)
    assert "team" in refused.message and "1h" in refused.message and "resets in 2940 s" in refused.message
    assert book.check("claude", now) is None  # another group, another budget
    assert book.check("gpt-4o", 11 * HOUR) is None  # a new window starts at zero
    assert book.windows["team"].spent == 0.0


def test_windows_are_aligned_to_the_epoch() -> None:
    book = ledger()
    book.add(["gpt-4o"], 5.0, HOUR - 0.001)
    assert book.check("gpt-4o", HOUR - 0.0005) is not None
    assert book.check("gpt-4o", HOUR) is None


def test_an_answer_counts_once_per_budget_even_across_a_fallback() -> None:
    book = ledger()
    touched = book.add(["gpt-4o", "claude"], 2.0, 0.0)
    assert sorted(w.settings.name for w, _ in touched) == ["global", "team"]
    assert book.windows["global"].spent == 2.0


def test_shared_totals_only_raise_the_local_view_and_only_for_the_current_window() -> None:
    book = ledger()
    book.add(["claude"], 3.0, 5.0)
    book.observe("global", 0, 2.0)  # an older reply: never lowers what we counted
    assert book.windows["global"].spent == 3.0
    book.observe("global", 0, 7.5)
    assert book.windows["global"].spent == 7.5
    book.observe("global", -1, 100.0)  # a past window's total is ignored
    assert book.windows["global"].spent == 7.5
    book.observe("global", 1, 0.5)  # the next window started elsewhere first
    assert (book.windows["global"].window, book.windows["global"].spent) == (1, 0.5)
    book.observe("nope", 0, 1.0)


def test_budgets_raise_budget_exceeded_with_a_whole_second_retry_after() -> None:
    now = [HOUR + 0.25]
    budgets = Budgets(SharedSettings(budgets=(TEAM,)), ["gpt-4o", "claude"], clock=lambda: now[0])
    budgets.check("gpt-4o")
    budgets.spend(["gpt-4o"], 1.5)
    budgets.spend(["gpt-4o"], -1.0)  # nothing to count
    with pytest.raises(BudgetExceeded) as info:
        budgets.check("gpt-4o")
    assert info.value.status == 429 and info.value.type == "budget_exceeded"
    assert info.value.retry_after == 3600.0  # ceil(3599.75)
    budgets.check("claude")
    text = budgets.render()
    assert 'llm_sidecar_budget_used_ratio{budget="team"} 1\n' in text
    assert 'llm_sidecar_budget_spend_usd{budget="team"} 1.5\n' in text
    now[0] = 2 * HOUR
    assert 'llm_sidecar_budget_used_ratio{budget="team"} 0\n' in budgets.render()


def test_budgets_for_a_team_a_key_and_per_user_count_only_their_requests() -> None:
    search = BudgetSettings("search", 1.0, HOUR, "1h", teams=("search",))
    per_user = BudgetSettings("per-user", 0.5, HOUR, "1h", per="user")
    per_key = BudgetSettings("per-key", 2.0, HOUR, "1h", per="key", models=("gpt-4o",))
    book = BudgetLedger([search, per_user, per_key], ["gpt-4o"])
    alice = Principal("app-a", "search", "alice")
    bob = Principal("app-b", "ads", "bob")
    book.add(["gpt-4o"], 0.5, 100.0, alice)
    refused = book.check("gpt-4o", 101.0, alice)
    assert refused is not None and refused.budget is per_user and "for this user" in refused.message
    assert book.check("gpt-4o", 101.0, Principal("app-a", "search", "carol")) is None  # another user
    book.add(["gpt-4o"], 0.5, 102.0, Principal("app-a", "search", "carol"))
    refused = book.check("gpt-4o", 103.0, Principal("app-a", "search", "dave"))
    assert refused is not None and refused.budget is search  # the team's 1.0 is spent
    assert book.check("gpt-4o", 103.0, bob) is None  # another team, another key, another user
    assert book.check("gpt-4o", 103.0, None) is None  # nobody known: only unscoped budgets apply
    ids = sorted(book.windows)
    assert "per-key/key=app-a" in ids and "search" in ids
    assert not any("alice" in i for i in ids)  # users are hashed in ids (Redis keys, metrics)


def test_windows_are_unsynced_until_a_shared_total_of_their_current_window_is_merged() -> None:
    per_user = BudgetSettings("per-user", 0.5, HOUR, "1h", per="user")
    book = BudgetLedger([BudgetSettings("global", 5.0, HOUR, "1h"), per_user], ["gpt-4o"])
    alice = Principal(None, None, "alice")
    stale = book.unsynced("gpt-4o", 10.0, alice)  # a restart, or alice's first request: nothing read yet
    assert [number for _, number in stale] == [0, 0] and stale[0][0] == "global"
    user_id = stale[1][0]
    book.observe(user_id, 0, 0.6)  # what the other pods (or this one before a restart) spent
    book.observe("global", 0, 0.0)  # no key in Redis yet reads as nothing spent
    assert book.unsynced("gpt-4o", 20.0, alice) == []
    refused = book.check("gpt-4o", 20.0, alice)
    assert refused is not None and refused.budget is per_user
    assert book.unsynced("gpt-4o", HOUR + 1, alice) == [("global", 1), (user_id, 1)]  # a new window: read again


def test_per_user_windows_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.policy.budget.MAX_SCOPES", 3)
    per_user = BudgetSettings("per-user", 1.0, HOUR, "1h", per="user")
    book = BudgetLedger([per_user], ["g"])
    for i in range(10):
        book.add(["g"], 0.1, 0.0, Principal(user=f"u{i}"))
    assert len(book.windows) == 3 and len(book.scopes["per-user"]) == 3


def test_the_soft_limit_is_reported_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    soft = BudgetSettings("team-soft", 1.0, HOUR, "1h", teams=("t",), soft_budget_usd=0.5)
    budgets = Budgets(SharedSettings(budgets=(soft,)), ["g"], clock=lambda: 10.0)
    who = Principal("k", "t", None)
    for _ in range(4):
        budgets.spend(["g"], 0.2, who)
    budgets.check("g", who)  # 0.8 < 1.0: still allowed
    warnings = [r for r in caplog.records if r.getMessage() == "budget soft limit reached"]
    assert len(warnings) == 1 and budgets.soft_reached == {"team-soft": 1}
    assert 'llm_sidecar_budget_soft_limit_total{budget="team-soft"} 1' in budgets.render()
    budgets.spend(["g"], 0.2, who)
    with pytest.raises(BudgetExceeded):
        budgets.check("g", who)
