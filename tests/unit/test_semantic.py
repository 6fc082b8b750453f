"""The semantic index (bounded, expiring, bucketed) and what a request's question and parameters are."""

from __future__ import annotations

from sidecar.routing.semantic import question
from sidecar.state.semantic import Entry, SemanticIndex


def test_the_best_entry_of_the_same_bucket_wins_and_others_never_answer() -> None:
    index = SemanticIndex(max_entries=10, ttl=60, clock=lambda: 0.0)
    index.add("g\0p", [1.0, 0.0, 0.0], b"east")
    index.add("g\0p", [0.0, 1.0, 0.0], b"north")
    index.add("g\0other", [1.0, 0.0, 0.0], b"elsewhere")
    similarity, answer = index.best("g\0p", [0.9, 0.1, 0.0])  # type: ignore[misc]
    assert answer == b"east" and 0.99 < similarity <= 1.0
    assert index.best("g\0none", [1.0, 0.0, 0.0]) is None
    assert index.best("g\0p", [0.0, 0.0, 0.0]) is None


def test_the_index_is_bounded_and_entries_expire() -> None:
    now = [0.0]
    index = SemanticIndex(max_entries=3, ttl=10, clock=lambda: now[0])
    for i in range(5):
        index.add(f"b{i % 2}", [1.0, float(i)], f"a{i}".encode())
    assert len(index) == 3 and sum(len(m) for m in index.buckets.values()) == 3
    now[0] = 11.0
    assert index.best("b0", [1.0, 4.0]) is None and index.best("b1", [1.0, 3.0]) is None
    assert len(index) == 0 and not index.buckets


def test_the_question_is_the_last_user_message_and_the_rest_are_the_parameters() -> None:
    body = {"model": "g", "temperature": 0, "user": "u1",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]}
    text, params = question(body)  # type: ignore[misc]
    assert text == "Capital of France?"
    same = question({**body, "user": "u2", "messages": [body["messages"][0],
                                                        {"role": "user", "content": "France's capital?"}]})
    assert same is not None and same[1] == params  # another question, the same parameters
    assert question({**body, "max_tokens": 5})[1] != params  # type: ignore[index]
    other_system = {**body, "messages": [{"role": "system", "content": "Be long."}, body["messages"][1]]}
    assert question(other_system)[1] != params  # type: ignore[index]
    parts = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert question(parts)[0] == "Hi"  # type: ignore[index]
    assert question({"messages": [{"role": "assistant", "content": "x"}]}) is None


def test_a_vector_with_nan_or_inf_is_not_kept_and_finds_nothing() -> None:
    index = SemanticIndex(max_entries=10, ttl=60, clock=lambda: 0.0)
    index.add("g\0p", [float("nan"), 0.0, 0.0], b"poison")
    index.add("g\0p", [float("inf"), 0.0, 0.0], b"poison")
    index.add("g\0p", [1.0, 0.0, 0.0], b"good")
    assert len(index) == 1
    assert index.best("g\0p", [1.0, 0.0, 0.0]) == (1.0, b"good")
    assert index.best("g\0p", [float("nan"), 1.0, 0.0]) is None


def test_an_entry_whose_similarity_is_not_a_number_never_hides_the_others() -> None:
    index = SemanticIndex(max_entries=10, ttl=60, clock=lambda: 0.0)
    index.add("g\0p", [1.0, 0.0, 0.0], b"first")
    first = next(iter(index.entries))
    index.entries[first] = index.buckets["g\0p"][first] = Entry("g\0p", (float("nan"), 0.0, 0.0), 1.0, b"nan", 60.0)
    index.add("g\0p", [1.0, 0.0, 0.0], b"good")
    assert index.best("g\0p", [1.0, 0.0, 0.0]) == (1.0, b"good")
