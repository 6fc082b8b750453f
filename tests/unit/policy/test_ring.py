"""Consistent hashing with bounded loads: stability, ~1/N movement, the load bound, the prefix key."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy.ring import (
    build_ring,
    capacity,
    choose,
    hash64,
    keep_capacity,
    least_loaded,
    prefix_keys,
    within,
)

NAMES = [f"http://10.0.0.{i}:30000/v1" for i in range(1, 13)]
keys = st.integers(min_value=0, max_value=2**64 - 1)
replica_sets = st.lists(st.sampled_from(NAMES), min_size=2, max_size=8, unique=True)


def _idle(ring, key):  # type: ignore[no-untyped-def]
    n = len(ring.replicas)
    return ring.replicas[choose(ring, key, [0.0] * n, [True] * n, 1.25).replica]


@settings(deadline=None)
@given(replica_sets, keys, st.data())
def test_a_key_moves_only_when_its_replica_leaves(names: list[str], key: int, data: st.DataObject) -> None:
    before = _idle(build_ring(names), key)
    leaving = data.draw(st.sampled_from(names))
    after = _idle(build_ring([n for n in names if n != leaving]), key)
    assert (after == before) == (leaving != before)


@settings(deadline=None)
@given(replica_sets, keys, st.data())
def test_a_key_moves_only_when_its_replica_is_overloaded(names: list[str], key: int, data: st.DataObject) -> None:
    ring = build_ring(names)
    n = len(names)
    loads = data.draw(st.lists(st.integers(0, 20).map(float), min_size=n, max_size=n))
    home = choose(ring, key, [0.0] * n, [True] * n, 1.25).replica
    choice = choose(ring, key, loads, [True] * n, 1.25)
    bound = capacity(loads, [True] * n, 1.25)
    assert choice.replica is not None  # some replica is always under ceil(factor * mean)
    assert loads[choice.replica] + 1 <= bound
    if loads[home] + 1 <= bound:
        assert choice.replica == home and choice.passed_over == ()
    else:
        assert choice.replica != home and choice.passed_over[0] == (home, loads[home])
        assert all(loads[r] + 1 > bound for r, _ in choice.passed_over)


@settings(deadline=None)
@given(replica_sets, keys)
def test_ineligible_replicas_are_never_chosen(names: list[str], key: int) -> None:
    n = len(names)
    eligible = [i % 2 == 0 for i in range(n)]
    choice = choose(build_ring(names), key, [0.0] * n, eligible, 1.25)
    assert choice.replica is not None and eligible[choice.replica]
    assert choose(build_ring(names), key, [0.0] * n, [False] * n, 1.25).replica is None


@settings(max_examples=20, deadline=None)
@given(st.integers(3, 9))
def test_adding_a_replica_moves_about_one_nth_of_keys(n: int) -> None:
    sample = [hash64(str(i).encode()) for i in range(3000)]
    old, new = build_ring(NAMES[:n]), build_ring(NAMES[:n + 1])
    moved = [k for k in sample if _idle(old, k) != _idle(new, k)]
    assert all(_idle(new, k) == NAMES[n] for k in moved)  # keys move only to the newcomer
    share = len(moved) / len(sample)
    assert 0.5 / (n + 1) < share < 1.6 / (n + 1)


def test_every_sidecar_builds_the_same_ring() -> None:
    assert build_ring(NAMES[:4]) == build_ring(list(NAMES[:4]))


@settings(deadline=None, max_examples=50)
@given(replica_sets, replica_sets)
def test_a_ring_rebuilt_from_the_one_it_replaces_is_the_same_ring(before: list[str], after: list[str]) -> None:
    """A DNS change re-sorts the kept replicas' points and hashes only the newcomers: the same ring."""
    assert build_ring(after, previous=build_ring(before)) == build_ring(after)
    assert build_ring(after, previous=build_ring([])) == build_ring(after)


@given(st.lists(st.integers(0, 50).map(float), min_size=4, max_size=4), st.integers(0, 100))
def test_bounded_loads_keep_max_within_the_factor(loads: list[float], key: int) -> None:
    choice = choose(build_ring(NAMES[:4]), key, loads, [True] * 4, 1.25)
    assert choice.replica is not None
    mean = (sum(loads) + 1) / 4
    assert loads[choice.replica] + 1 <= max(1.25 * mean, mean + 1)


def test_least_loaded_breaks_ties_by_turn() -> None:
    assert least_loaded([3.0, 1.0, 1.0, 2.0], [True] * 4, 0).replica == 1
    assert least_loaded([3.0, 1.0, 1.0, 2.0], [True] * 4, 2).replica == 2
    assert least_loaded([3.0, 1.0, 1.0, 2.0], [True, False, False, True], 0).replica == 3
    assert least_loaded([0.0], [False], 0).replica is None


def test_prefix_keys_are_the_conversation_start() -> None:
    system = {"role": "system", "content": "shared by everybody"}
    turn1 = [system, {"role": "user", "content": "my question"}]
    later = [*turn1, {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "more"}]
    other = [system, {"role": "user", "content": "another conversation"}]
    keys = prefix_keys({"messages": turn1})
    assert keys is not None and keys[0] == keys[1]  # placement: the conversation itself
    assert prefix_keys({"messages": later}) == keys
    assert prefix_keys({"messages": other}) != keys
    assert prefix_keys({"messages": [system]}) is None
    assert prefix_keys({"input": "embed me"}) is None
    assert prefix_keys({"prompt": "abc"}) == prefix_keys({"prompt": "abc"}) is not None


def test_shared_placement_is_a_long_system_prompt() -> None:
    system = {"role": "system", "content": "x " * 2000}
    one = [system, {"role": "user", "content": "first conversation"}]
    two = [system, {"role": "user", "content": "second conversation"}]
    shared_one, shared_two = prefix_keys({"messages": one}, True), prefix_keys({"messages": two}, True)
    assert shared_one is not None and shared_two is not None
    assert shared_one[0] == shared_two[0]  # one home for the system prompt
    assert shared_one[1] != shared_two[1]  # two conversations, remembered apart
    assert prefix_keys({"messages": one}) == (shared_one[1], shared_one[1])
    short = {"role": "system", "content": "be brief"}
    assert prefix_keys({"messages": [short, one[1]]}, True) == prefix_keys({"messages": [short, one[1]]})


def test_a_system_prompt_sent_as_text_parts_is_as_long_as_its_text() -> None:
    parts = {"role": "system", "content": [{"type": "text", "text": "x " * 600, "cache_control": {"type": "ephemeral"}},
                                           {"type": "text", "text": "y " * 600}]}
    one, two = ([parts, {"role": "user", "content": text}] for text in ("first", "second"))
    shared_one, shared_two = prefix_keys({"messages": one}, True), prefix_keys({"messages": two}, True)
    assert shared_one is not None and shared_two is not None and shared_one[0] == shared_two[0] != shared_one[1]
    odd = {"role": "system", "content": [{"type": "text", "text": 5}, "x" * 4000, None]}  # no text: not counted
    assert prefix_keys({"messages": [odd, one[1]]}, True) == prefix_keys({"messages": [odd, one[1]]})


def test_within_is_the_bound_for_one_replica() -> None:
    loads, eligible = [6.0, 2.0, 2.0, 2.0], [True] * 4
    assert capacity(loads, eligible, 1.25) == 4.25  # mean (12 + 1) / 4 = 3.25: 1.25 x 3.25 = 4.06, mean + 1
    assert keep_capacity(loads, eligible, 1.25) == 5.0  # ceil(4.06), at least ceil(mean) + 1
    assert within(loads, eligible, 1.25, 1) and not within(loads, eligible, 1.25, 0)
    assert within([4.0, 3.0, 3.0, 3.0], eligible, 1.25, 0)  # keeps its conversation at 5 of 4.25 new
    assert not within(loads, [True, False, True, True], 1.25, 1)


def _home_set(ring, key, k):  # type: ignore[no-untyped-def]
    """The first k distinct replicas clockwise from the key (every replica eligible)."""
    order: list[int] = []
    n = len(ring.replicas)
    for _ in range(n):
        choice = choose(ring, key, [0.0] * n, [j not in order for j in range(n)], 1.25)
        assert choice.replica is not None
        order.append(choice.replica)
        if len(order) == k:
            break
    return order


@settings(deadline=None)
@given(replica_sets, keys, st.data())
def test_spread_takes_the_lighter_of_the_home_set_within_the_bound(names: list[str], key: int,
                                                                    data: st.DataObject) -> None:
    ring = build_ring(names)
    n = len(names)
    loads = data.draw(st.lists(st.integers(0, 20).map(float), min_size=n, max_size=n))
    home = _home_set(ring, key, 2)
    bound = capacity(loads, [True] * n, 1.25)
    choice = choose(ring, key, loads, [True] * n, 1.25, spread=2)
    assert choice.replica is not None and loads[choice.replica] + 1 <= bound
    fitting = [r for r in home if loads[r] + 1 <= bound]
    if fitting:  # within the home set: the lighter one (the first clockwise among equal loads)
        assert choice.replica == min(fitting, key=lambda r: loads[r])
    else:  # both passed over, then the ring as without spread from there
        assert [r for r, _ in choice.passed_over[:2]] == sorted(home, key=lambda r: loads[r])
        assert choice.replica not in home
    idle = choose(ring, key, [0.0] * n, [True] * n, 1.25, spread=2)
    assert idle.replica == home[0]  # at equal loads the home, as without spread: stability is kept


def test_spread_keeps_a_shared_key_on_two_replicas_while_they_have_room() -> None:
    ring = build_ring(NAMES[:4])
    loads = [8.0] * 4  # other work
    home = _home_set(ring, 12345, 2)
    for _ in range(8):  # one key, 8 conversations
        choice = choose(ring, 12345, loads, [True] * 4, 1.5, spread=2)
        assert choice.replica is not None
        loads[choice.replica] += 1
    assert {r for r in range(4) if loads[r] > 8} == set(home)  # cached on 2 replicas, not 4
    assert loads[home[0]] == loads[home[1]] == 12  # and balanced between them
    without = [8.0] * 4
    for _ in range(8):
        without[choose(ring, 12345, without, [True] * 4, 1.5).replica] += 1  # type: ignore[index]
    assert sorted(without) == [8, 8, 9, 15]  # one replica, until the bound: 1.5 x the mean
    eligible = [r != home[1] for r in range(4)]  # one of the two is out: the next on the ring joins the set
    choice = choose(ring, 12345, [0.0] * 4, eligible, 1.25, spread=2)
    assert choice.replica == home[0]
    assert choose(ring, 12345, [5.0 if r == home[0] else 0.0 for r in range(4)], eligible, 1.25,
                  spread=2).replica not in (home[0], home[1])

