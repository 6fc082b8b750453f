"""A replica pool's state and choice, without I/O: loads with this sidecar's in-flight, spill-over, leases."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from sidecar.config import Deployment
from sidecar.config.replicas import ReplicaSettings
from sidecar.core.errors import UpstreamServerError
from sidecar.core.types import ChatRequest
from sidecar.formats.sglang import Load
from sidecar.policy.ring import prefix_keys
from sidecar.providers.sglang import LEASE, MAX_REPLICAS, Lease, Replica, ReplicaPool

URLS = ("http://10.0.0.1:30000/v1", "http://10.0.0.2:30000/v1", "http://10.0.0.3:30000/v1")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _pool(max_queue: int = 2) -> tuple[ReplicaPool, Clock]:
    clock = Clock()
    settings = ReplicaSettings(urls=URLS, max_queue=max_queue)
    deployment = Deployment(id="sglang/m", model_name="local", provider="sglang", model="m", api_base=URLS[0],
                            replicas=settings)
    return ReplicaPool(deployment, settings, clock), clock



def test_load_is_the_poll_adjusted_by_this_sidecars_changes() -> None:
    replica = Replica(URLS[0])
    replica.inflight = 2
    replica.observe(Load(running=5, waiting=1), 2)  # the poll counted our 2
    assert replica.load() == 6
    replica.inflight = 4  # two more sent since
    assert replica.load() == 8
    replica.inflight = 0  # all of ours finished since
    assert replica.load() == 4
    assert replica.name.startswith("r-") and "10.0" not in replica.name


def test_queue_counts_past_running_slots_when_known() -> None:
    replica = Replica(URLS[0])
    replica.observe(Load(running=8, waiting=0, max_running=8), 0)
    replica.inflight = 3
    assert replica.queue() == 3
    replica.observe(Load(running=2, waiting=0, max_running=8), 3)
    assert replica.queue() == 0
    replica.inflight = 1  # two of ours the poll counted have finished since
    replica.observe(Load(running=2, waiting=0, max_running=8), 3)
    assert replica.load() == 1


def test_spill_reasons() -> None:
    pool, _ = _pool(max_queue=2)
    assert pool.spill_reason() is None
    for replica in pool.replicas:
        replica.observe(Load(running=1, waiting=2), 0)
    assert pool.spill_reason() == "pool_saturated"
    pool.replicas[1].observe(Load(running=1, waiting=1), 0)
    assert pool.spill_reason() is None
    for replica in pool.replicas:
        replica.healthy = False
    assert pool.spill_reason() == "no_healthy_replica"


def test_set_urls_keeps_state_and_retires_removed_replicas() -> None:
    pool, _ = _pool()
    kept = pool.replicas[0]
    kept.requests = 7
    removed = pool.replicas[2]
    pool.set_urls([URLS[0], URLS[1], "http://10.0.0.9:30000/v1"])
    assert pool.replicas[0] is kept and kept.requests == 7
    assert removed.removed and removed not in pool.replicas
    assert len(pool.ring.replicas) == 3


def test_a_lease_counts_in_flight_and_a_full_replica_is_avoided() -> None:
    pool, clock = _pool()

    async def attempt() -> None:
        replica = pool.lease(request)
        assert replica.inflight == 1
        raise UpstreamServerError("The request queue is full.", upstream_status=503)

    request = _body_request()
    trail: list[object] = []
    with pytest.raises(UpstreamServerError) as info:
        asyncio.run(pool.attempt(attempt(), trail, lambda _: None))
    assert not info.value.counts_as_failure  # a full replica is not a failing deployment
    chosen = next(r for r in pool.replicas if r.requests == 1)
    assert chosen.inflight == 0 and chosen.full_until > clock.now
    assert pool.pick(request.body)[0] is not chosen  # avoided until its next poll
    assert trail and trail[0].replica == chosen.name
    assert LEASE.get() is None


def _body_request() -> ChatRequest:
    class Body:
        body = {"model": "local", "messages": [{"role": "user", "content": "hello"}]}

    return Body()  # type: ignore[return-value]


def test_lease_without_context_still_counts() -> None:
    pool, _ = _pool()
    replica = pool.lease(_body_request())
    assert replica.inflight == 1 and isinstance(Lease(pool), Lease)


def _turns(conversation: str, count: int) -> list[dict]:
    messages: list[dict] = [{"role": "system", "content": "y " * 1500}]
    bodies = []
    for turn in range(count):
        messages = [*messages, {"role": "user", "content": f"{conversation} turn {turn}"}]
        bodies.append({"model": "local", "messages": messages})
        messages = [*messages, {"role": "assistant", "content": f"answer {turn}"}]
    return bodies


def test_a_conversation_returns_to_its_replica_while_it_is_within_the_bound() -> None:
    pool, _ = _pool()
    first, *later = _turns("alpha", 4)
    home, choice = pool.pick(first)
    assert home is not None and choice.how == "ring"
    ring_home = home
    # The ring would now send the conversation elsewhere (its home looks busy to this poll), but it is still
    # within the bound: the conversation stays where its prefix is cached.
    for replica in pool.replicas:
        replica.observe(Load(running=2, waiting=0), 0)
    for body in later:
        replica, choice = pool.pick(body)
        assert replica is ring_home and choice.how == "sticky"
    # Over the bound, it moves, and the new replica is remembered.
    ring_home.observe(Load(running=30, waiting=0), 0)
    moved, choice = pool.pick(later[-1])
    assert moved is not ring_home and choice.how == "ring"
    ring_home.observe(Load(running=2, waiting=0), 0)
    assert pool.pick(later[-1])[0] is moved


def test_the_conversation_memory_is_bounded_and_forgets_removed_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.providers import sglang

    monkeypatch.setattr(sglang, "CONVERSATIONS", 3)
    pool, _ = _pool()
    for name in "abcde":
        pool.pick(_turns(name, 1)[0])
    assert len(pool.conversations) == 3
    body = _turns("e", 2)[1]
    replica, _ = pool.pick(body)
    assert replica is not None
    pool.set_urls([url for url in URLS if url != replica.url])
    again, choice = pool.pick(body)
    assert again is not replica and again in pool.replicas and choice.how == "ring"


def test_shared_placement_puts_a_system_prompt_on_one_replica_and_remembers_each_conversation() -> None:
    clock = Clock()
    settings = ReplicaSettings(urls=URLS, key="shared")
    deployment = Deployment(id="sglang/m", model_name="local", provider="sglang", model="m", api_base=URLS[0],
                            replicas=settings)
    pool = ReplicaPool(deployment, settings, clock)
    homes = {pool.pick(_turns(name, 1)[0])[0] for name in ("one", "two", "three")}
    assert len(homes) == 1  # idle pool: every conversation under the long system prompt goes to its home
    assert len(pool.conversations) == 3


def test_a_conversation_stays_until_the_keep_bound_and_a_new_one_goes_to_the_lighter_of_two() -> None:
    clock = Clock()
    settings = ReplicaSettings(urls=URLS, key="shared", load_factor=1.25, keep_factor=2.5, spread=2)
    deployment = Deployment(id="sglang/m", model_name="local", provider="sglang", model="m", api_base=URLS[0],
                            replicas=settings)
    pool = ReplicaPool(deployment, settings, clock)
    first, second = _turns("alpha", 2)
    home, _ = pool.pick(first)
    assert home is not None
    for replica in pool.replicas:
        replica.observe(Load(running=4 if replica is home else 2, waiting=0), 0)
    # 4 of a mean of (8 + 1) / 3: above 1.25 x for a new conversation, well within 2.5 x to keep one
    kept, choice = pool.pick(second)
    assert kept is home and choice.how == "sticky"
    newcomer, choice = pool.pick(_turns("beta", 1)[0])  # same system prompt: the other of its two replicas
    assert newcomer is not home and choice.how == "ring"
    assert pool.pick(_turns("gamma", 1)[0])[0] is newcomer  # and again while it is the lighter
    home.observe(Load(running=30, waiting=0), 0)  # 31 of a mean of 11.7: past 2.5 x, the conversation moves
    moved, choice = pool.pick(second)
    assert moved is not home and choice.how == "ring"



class FakePlacement:
    """The fleet's placement (``state.placement``) without Redis: answers with a chosen replica's name."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int, list[str], float]] = []
        self.recorded: list[str] = []

    def record(self, pool: str, replica: str) -> None:
        self.recorded.append(replica)

    async def place(self, pool: str, prefix: int, replicas: list[str], factor: float) -> tuple[str, str] | None:
        self.asked.append((pool, prefix, replicas, factor))
        return (self.answer, "holder") if self.answer is not None else None


def _shared_pool(answer: str | None) -> tuple[ReplicaPool, FakePlacement]:
    pool, _ = _pool(max_queue=8)
    placement = FakePlacement(answer)
    pool.placement = placement
    return pool, placement


def _run(pool: ReplicaPool, body: dict) -> tuple[Replica, object]:
    """One attempt through ``pool.attempt``: the replica its lease chose and the trail's record."""
    class Request:
        pass

    request = Request()
    request.body = body  # type: ignore[attr-defined]
    trail: list[object] = []

    async def attempt() -> Replica:
        return pool.lease(request)  # type: ignore[arg-type]

    replica = asyncio.run(pool.attempt(attempt(), trail, lambda _: None, request))  # type: ignore[arg-type]
    return replica, trail[0]


def test_the_fleets_placement_decides_a_new_conversations_replica_and_later_turns_stay() -> None:
    pool, placement = _shared_pool(None)
    target = pool.replicas[2]
    placement.answer = target.name
    first, second, third = _turns("alpha", 3)
    replica, record = _run(pool, first)
    assert replica is target and record.how == "shared"  # type: ignore[attr-defined]
    (name, prefix, offered, factor), = placement.asked
    assert prefix == prefix_keys(first, True)[0]  # type: ignore[index]  # the system prompt's, not the conversation's
    assert name == "sglang/m" and factor == 1.25 and sorted(offered) == sorted(r.name for r in pool.replicas)
    # Later turns are not asked about, and stay even where the keep bound alone would move them: the fleet's
    # placement keeps the balance; only an ineligible replica (unhealthy, avoided, queue full) lets one go.
    target.observe(Load(running=6, waiting=0), 0)
    replica, record = _run(pool, second)
    assert replica is target and record.how == "sticky" and len(placement.asked) == 1  # type: ignore[attr-defined]
    target.healthy = False
    replica, record = _run(pool, third)
    assert replica is not target and record.how == "ring"  # type: ignore[attr-defined]


def test_the_fleet_is_asked_only_for_a_long_shared_prefix_and_offered_only_eligible_replicas() -> None:
    pool, placement = _shared_pool(None)
    short = {"model": "local", "messages": [{"role": "system", "content": "short"}, {"role": "user", "content": "x"}]}
    _, record = _run(pool, short)
    assert not placement.asked and record.how == "ring"  # type: ignore[attr-defined]
    pool.replicas[0].healthy = False
    placement.answer = pool.replicas[1].name
    replica, record = _run(pool, _turns("beta", 1)[0])
    assert pool.replicas[0].name not in placement.asked[0][2]
    assert replica is pool.replicas[1] and record.how == "shared"  # type: ignore[attr-defined]


def test_no_answer_or_an_answer_no_longer_eligible_falls_back_to_the_ring() -> None:
    pool, placement = _shared_pool(None)
    _, record = _run(pool, _turns("gamma", 1)[0])  # Redis away: the sidecar places alone
    assert len(placement.asked) == 1 and record.how == "ring"  # type: ignore[attr-defined]
    placement.answer = "r-unknown"  # a replica this sidecar no longer has
    _, record = _run(pool, _turns("delta", 1)[0])
    assert record.how == "ring"  # type: ignore[attr-defined]


def test_an_attempt_cancelled_while_the_fleet_is_asked_never_starts() -> None:
    pool, _ = _pool()
    started: list[bool] = []

    class Slow:
        async def place(self, *args: object) -> tuple[str, str] | None:
            await asyncio.sleep(10)
            return None

    pool.placement = Slow()

    async def attempt() -> None:
        started.append(True)

    class Request:
        body = _turns("epsilon", 1)[0]

    call = attempt()

    async def main() -> None:
        task = asyncio.ensure_future(pool.attempt(call, [], lambda _: None, Request()))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # closed, not left to be collected unawaited ("coroutine ... was never awaited")
    assert inspect.getcoroutinestate(call) == inspect.CORO_CLOSED
    assert not started and all(r.inflight == 0 for r in pool.replicas)


def test_what_the_sidecar_places_alone_is_recorded_with_the_fleets_counts() -> None:
    pool, placement = _shared_pool(None)
    short = {"model": "local", "messages": [{"role": "user", "content": "no long system prompt"}]}
    replica, record = _run(pool, short)  # the ring: recorded
    assert record.how == "ring" and placement.recorded == [replica.name]  # type: ignore[attr-defined]
    replica, record = _run(pool, {**short, "messages": [*short["messages"], {"role": "assistant", "content": "a"},
                                                        {"role": "user", "content": "again"}]})
    assert record.how == "sticky" and len(placement.recorded) == 1  # type: ignore[attr-defined]  # a later turn
    placement.answer = pool.replicas[0].name
    _, record = _run(pool, _turns("zeta", 1)[0])  # placed by the script, which counted it already
    assert record.how == "shared" and len(placement.recorded) == 1  # type: ignore[attr-defined]
    replica, record = _run(pool, {"model": "local", "messages": [{"role": "system", "content": "no user turn"}]})
    assert record.how == "least_loaded" and placement.recorded[-1] == replica.name  # type: ignore[attr-defined]


def test_a_pool_routes_among_at_most_max_replicas_the_same_ones_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    pool, _ = _pool()
    urls = [f"http://10.0.{i // 250}.{i % 250}:30000/v1" for i in range(MAX_REPLICAS + 50)]
    with caplog.at_level("WARNING", logger="sidecar.sglang"):
        pool.set_urls(list(reversed(urls)))
        pool.set_urls(urls)  # the same answer again: nothing changes, nothing said
    assert [r.url for r in pool.replicas] == sorted(urls)[:MAX_REPLICAS]
    assert len(pool.ring.replicas) == MAX_REPLICAS
    assert [r.message for r in caplog.records] == [f"sglang replicas of sglang/m: {MAX_REPLICAS + 50} found, "
                                                   f"routing among the first {MAX_REPLICAS}"]
