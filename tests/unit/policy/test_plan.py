"""Fallback plans and the value objects the router records."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import RouterSettings
from sidecar.policy.plan import (
    Attempt,
    FallbackStep,
    Panic,
    Skip,
    context_windows,
    groups_to_try,
    panic_choice,
    rejection_fallbacks,
)


def settings(**tables: dict[str, tuple[str, ...]]) -> RouterSettings:
    return RouterSettings(**tables)  # type: ignore[arg-type]


def test_no_fallbacks() -> None:
    assert groups_to_try("gpt-4o", RouterSettings()) == ("gpt-4o",)


def test_group_then_its_fallbacks_in_order() -> None:
    r = settings(fallbacks={"gpt-4o": ("claude-sonnet", "llama-70b")})
    assert groups_to_try("gpt-4o", r) == ("gpt-4o", "claude-sonnet", "llama-70b")
    assert groups_to_try("claude-sonnet", r) == ("claude-sonnet",)


def test_chains_breadth_first() -> None:
    r = settings(fallbacks={"a": ("b", "c"), "b": ("d",), "d": ("e",)})
    assert groups_to_try("a", r) == ("a", "b", "c", "d", "e")


def test_cycles_and_duplicates_end() -> None:
    r = settings(fallbacks={"a": ("b", "a", "b"), "b": ("a", "c"), "c": ("a",)})
    assert groups_to_try("a", r) == ("a", "b", "c")
    assert groups_to_try("b", r) == ("b", "a", "c")


def test_context_window_fallbacks() -> None:
    r = settings(fallbacks={"mini": ("other",)}, context_window_fallbacks={"mini": ("gpt-4o",)})
    assert groups_to_try("mini", r, "context_window_exceeded") == ("mini", "gpt-4o")
    assert groups_to_try("mini", r) == ("mini", "other")


def test_content_policy_fallbacks_only_when_configured() -> None:
    r = settings(fallbacks={"a": ("b",)}, content_policy_fallbacks={"a": ("lenient",)})
    assert groups_to_try("a", r, "content_policy") == ("a", "lenient")
    assert groups_to_try("a", settings(fallbacks={"a": ("b",)}), "content_policy") == ("a",)


def test_other_causes_use_the_general_fallbacks() -> None:
    r = settings(fallbacks={"a": ("b",)})
    assert groups_to_try("a", r, "rate_limited") == ("a", "b")
    assert groups_to_try("a", r, "server_error") == ("a", "b")


names = st.sampled_from("abcdef")


@given(names, st.dictionaries(names, st.lists(names, max_size=4).map(tuple), max_size=6))
def test_plan_is_duplicate_free_and_starts_with_the_group(group: str, table: dict[str, tuple[str, ...]]) -> None:
    out = groups_to_try(group, settings(fallbacks=table))
    assert out[0] == group
    assert len(out) == len(set(out))
    reachable = {group}
    for g in out:
        reachable.update(table.get(g, ()))
    assert set(out) == reachable


def test_value_objects_are_frozen() -> None:
    a = Attempt(deployment="d1", group="g", number=2, retry=1)
    s = Skip(deployment="d2", reason="breaker_open")
    f = FallbackStep(from_group="g", to_group="h", cause="rate_limited")
    for value in (a, s, f):
        name = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, "x")
    assert a == Attempt("d1", "g", 2, 1)
    assert hash(f) == hash(FallbackStep("g", "h", "rate_limited"))


# ---- where a rejected request goes (issue 14 §3) ----------------------------------------------------


def test_context_window_errors_use_the_general_fallbacks_when_no_context_table_entry() -> None:
    r = settings(fallbacks={"small": ("big", "huge")})
    assert rejection_fallbacks("small", r, "context_window_exceeded", {"small"}) == ["big", "huge"]


def test_the_context_window_table_wins_when_the_group_is_in_it() -> None:
    r = settings(fallbacks={"small": ("other",)}, context_window_fallbacks={"small": ("big",)})
    assert rejection_fallbacks("small", r, "context_window_exceeded", {"small"}) == ["big"]
    assert rejection_fallbacks("other", r, "context_window_exceeded", {"other"}) == []


def test_content_policy_uses_only_its_own_table() -> None:
    r = settings(fallbacks={"a": ("b",)})
    assert rejection_fallbacks("a", r, "content_policy", {"a"}) == []
    r = settings(fallbacks={"a": ("b",)}, content_policy_fallbacks={"a": ("c",)})
    assert rejection_fallbacks("a", r, "content_policy", {"a"}) == ["c"]


def test_other_rejections_have_no_fallbacks() -> None:
    assert rejection_fallbacks("a", settings(fallbacks={"a": ("b",)}), "bad_request", {"a"}) == []


def test_groups_already_tried_are_never_sent_the_same_request_again() -> None:
    r = settings(fallbacks={"a": ("b", "c"), "b": ("a",)})
    assert rejection_fallbacks("a", r, "context_window_exceeded", {"a", "b"}) == ["c"]


def test_a_group_whose_known_window_is_too_small_is_skipped() -> None:
    r = settings(fallbacks={"a": ("small", "unknown", "big")})
    windows = {"a": 8000, "small": 8000, "unknown": None, "big": 128000}
    chosen = rejection_fallbacks("a", r, "context_window_exceeded", {"a"}, windows=windows, needed=8001)
    assert chosen == ["unknown", "big"]
    assert rejection_fallbacks("a", r, "context_window_exceeded", {"a"}, windows=windows, needed=8000) == [
        "small", "unknown", "big"]  # a window fits a prompt of exactly its size
    # windows say nothing about content policy
    r = settings(content_policy_fallbacks={"a": ("small",)})
    assert rejection_fallbacks("a", r, "content_policy", {"a"}, windows=windows, needed=10**6) == ["small"]


def test_a_group_window_is_its_largest_deployment_window_when_all_are_known() -> None:
    windows = context_windows({"a": [8000, 32000], "b": [8000, None], "c": [], "d": [None]})
    assert windows == {"a": 32000, "b": None, "c": None, "d": None}


def test_panic_goes_to_the_candidate_that_reopens_soonest() -> None:
    assert panic_choice([]) is None
    assert panic_choice([("a", 30.0), ("b", 12.0), ("c", 20.0)]) == "b"
    assert panic_choice([("a", 12.0), ("b", 12.0)]) == "a"  # equals: the plan's order


def test_panic_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Panic("dep", "group").deployment = "other"  # type: ignore[misc]
