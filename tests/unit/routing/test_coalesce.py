"""In-flight coalescing with fake calls: one call per key, leaders that leave, failures, streams, bounds."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import orjson
import pytest

from sidecar.core.errors import SidecarError, UpstreamBadRequest, UpstreamServerError
from sidecar.core.types import StreamChunk
from sidecar.routing.coalesce import LEADERS, Broadcast, Coalescer, keep_running
from sidecar.routing.outcome import Outcome


class Calls:
    """A fake upstream call: counts calls, waits for ``release``, then answers or raises ``errors`` in turn."""

    def __init__(self, *errors: SidecarError) -> None:
        self.count = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.errors = list(errors)

    async def __call__(self) -> str:
        self.count += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await asyncio.sleep(0)  # an upstream call always waits for the network at least once
        if self.errors:
            raise self.errors.pop(0)
        return f"answer {self.count}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fifty_identical_requests_make_one_call() -> None:
    coalescer, calls = Coalescer(), Calls()
    waiters = [asyncio.create_task(coalescer.complete("k", calls, object())) for _ in range(50)]
    await settle()
    calls.release.set()
    results = await asyncio.gather(*waiters)
    assert calls.count == 1 and coalescer.coalesced == 49
    assert [joined for _, joined in results].count(False) == 1
    assert {answer for answer, _ in results} == {"answer 1"}
    assert coalescer.flights == {}


async def test_a_leader_others_wait_for_is_kept_running_and_one_cancelled_anyway_hands_over() -> None:
    coalescer, calls = Coalescer(), Calls()
    owner = object()  # the task of the leader's connection
    leader = asyncio.create_task(coalescer.complete("k", calls, owner))
    await settle()
    assert not keep_running(owner)  # nobody else waits: its app hanging up cancels it, and the call
    follower = asyncio.create_task(coalescer.complete("k", calls, object()))
    await settle()
    assert keep_running(owner)  # the server lets it run when its app hangs up (listener.GuardedHandler)
    calls.release.set()
    assert await leader == ("answer 1", False)
    assert await follower == ("answer 1", True)
    assert not keep_running(owner) and LEADERS == {} and coalescer.flights == {}

    stopping = Calls()  # a leader cancelled all the same (the process is stopping): a follower calls again
    leader = asyncio.create_task(coalescer.complete("s", stopping, object()))
    await settle()
    follower = asyncio.create_task(coalescer.complete("s", stopping, object()))
    await settle()
    leader.cancel()
    await settle()
    stopping.release.set()
    assert await follower == ("answer 2", False)
    assert stopping.cancelled == 1 and coalescer.retried == 1
    with pytest.raises(asyncio.CancelledError):
        await leader

    lonely = Calls()
    only = asyncio.create_task(coalescer.complete("other", lonely, object()))
    await settle()
    only.cancel()
    await settle()
    assert lonely.cancelled == 1 and coalescer.flights == {} and LEADERS == {}


async def test_a_final_failure_reaches_every_waiter_as_its_own_error() -> None:
    coalescer, calls = Coalescer(), Calls(UpstreamBadRequest("bad"))
    waiters = [asyncio.create_task(coalescer.complete("k", calls, object())) for _ in range(5)]
    await settle()
    calls.release.set()
    errors = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls.count == 1
    assert all(isinstance(e, UpstreamBadRequest) and e.message == "bad" for e in errors)
    assert len({id(e) for e in errors}) == 5


async def test_after_a_retryable_failure_one_follower_retries_and_the_others_join_it() -> None:
    coalescer, calls = Coalescer(), Calls(UpstreamServerError("flaky"))
    waiters = [asyncio.create_task(coalescer.complete("k", calls, object())) for _ in range(10)]
    await settle()
    calls.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls.count == 2 and coalescer.retried == 1
    assert isinstance(results[0], UpstreamServerError)  # the leader gets its own call's error
    assert [r[0] for r in results[1:]] == ["answer 2"] * 9  # type: ignore[index]


class Sink:
    """An app's stream sink that keeps what it was sent."""

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.chunks: list[bytes] = []
        self.end: str | None = None

    @property
    def started(self) -> bool:
        return self.outcome is not None

    async def start(self, outcome: Outcome) -> None:
        self.outcome = outcome

    async def send(self, chunks: list[StreamChunk]) -> None:
        self.chunks.extend(c.raw for c in chunks)
        await asyncio.sleep(0)

    async def finish(self) -> None:
        self.end = "finish"

    async def fail(self, error: SidecarError) -> None:
        self.end = f"fail: {error.message}"


def piece(i: int, size: int = 10) -> StreamChunk:
    data = {"i": i, "pad": "x" * size}
    return StreamChunk(orjson.dumps(data), data)


class Streamer:
    """A fake streamed call: sends ``n`` chunks, pausing at ``gates`` until they are released."""

    def __init__(self, n: int, pause_after: int, size: int = 10, fail: SidecarError | None = None,
                 fail_before: bool = False) -> None:
        self.n, self.pause_after, self.size, self.fail, self.fail_before = n, pause_after, size, fail, fail_before
        self.count = 0
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def __call__(self, sink: Broadcast) -> Outcome:
        self.count += 1
        outcome = Outcome("g", deployment="d1", attempts=1)
        if self.fail_before:
            await self.resume.wait()
            assert self.fail is not None
            raise self.fail
        await sink.start(outcome)
        for i in range(self.n):
            await sink.send([piece(i, self.size)])
            if i + 1 == self.pause_after:
                self.paused.set()
                await self.resume.wait()
        if self.fail is not None:
            await sink.fail(self.fail)
        else:
            await sink.finish()
        return outcome


async def test_a_late_subscriber_gets_the_chunks_already_sent_then_the_rest() -> None:
    coalescer, streamer = Coalescer(), Streamer(6, pause_after=3)
    first, late = Sink(), Sink()
    leader = asyncio.create_task(coalescer.stream("k", streamer, first))
    await streamer.paused.wait()
    await settle()
    assert len(first.chunks) == 3
    joiner = asyncio.create_task(coalescer.stream("k", streamer, late))
    await settle()
    assert len(late.chunks) == 3  # caught up before anything new came
    streamer.resume.set()
    (outcome, led), (nothing, joined) = await asyncio.gather(leader, joiner)
    assert streamer.count == 1 and (led, joined) == (False, True) and nothing is None
    assert outcome is not None and outcome.deployment == "d1"
    assert first.chunks == late.chunks and len(late.chunks) == 6
    assert first.end == late.end == "finish"
    assert first.outcome is not None and late.outcome is not None
    assert (first.outcome.cache, first.outcome.attempts) == ("miss", 1)
    assert (late.outcome.cache, late.outcome.attempts, late.outcome.deployment) == ("coalesced", 0, "d1")


class GoneSink(Sink):
    """An app that hung up: every write fails as aiohttp's does on a closed connection."""

    def __init__(self) -> None:
        super().__init__()
        self.gone = False

    async def send(self, chunks: list[StreamChunk]) -> None:
        if self.gone:
            raise ConnectionResetError("Cannot write to closing transport")
        await super().send(chunks)


class SlowSink(Sink):
    """An app that stops reading: a write is handed over, then waits until ``reading`` is set (as aiohttp's
    does: the bytes go to the transport, then the write waits for the app to drain it)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.reading.set()

    async def send(self, chunks: list[StreamChunk]) -> None:
        await super().send(chunks)
        await self.reading.wait()

    async def finish(self) -> None:
        self.ends = getattr(self, "ends", 0) + 1
        await super().finish()
        await self.reading.wait()


async def leader_and_follower(coalescer: Coalescer, streamer: Streamer, first: Sink, second: Sink,
                              ) -> tuple[asyncio.Task[Any], asyncio.Task[Any]]:
    """A stream started by ``first`` and paused, which ``second`` has joined and caught up with."""
    leader = asyncio.create_task(coalescer.stream("k", streamer, first))
    await streamer.paused.wait()
    follower = asyncio.create_task(coalescer.stream("k", streamer, second))
    await settle()
    return leader, follower


async def test_a_stream_continues_for_followers_when_the_leaders_app_hangs_up() -> None:
    coalescer, streamer = Coalescer(), Streamer(4, pause_after=2)
    first, second = GoneSink(), Sink()
    leader = asyncio.create_task(coalescer.stream("k", streamer, first))
    await streamer.paused.wait()
    assert not keep_running(leader)  # alone: its app hanging up cancels the call, as without coalescing
    follower = asyncio.create_task(coalescer.stream("k", streamer, second))
    await settle()
    assert keep_running(leader)  # the server does not cancel it now (listener.GuardedHandler)
    first.gone = True
    streamer.resume.set()
    assert await follower == (None, True)
    assert len(second.chunks) == 4 and second.end == "finish"
    with pytest.raises(asyncio.CancelledError):
        await leader  # its own request ends as one whose app went away (after the call it made)
    assert len(first.chunks) == 2 and streamer.count == 1 and LEADERS == {} and coalescer.flights == {}


async def test_a_leader_cancelled_anyway_ends_its_followers_streams_with_an_error() -> None:
    coalescer, streamer = Coalescer(), Streamer(4, pause_after=2)
    leader, follower = await leader_and_follower(coalescer, streamer, Sink(), second := Sink())
    leader.cancel()
    await follower
    assert len(second.chunks) == 2 and second.end is not None and second.end.startswith("fail")  # never clean


async def test_the_call_stops_when_the_leaders_app_is_gone_and_the_last_follower_leaves() -> None:
    coalescer, cancelled = Coalescer(), asyncio.Event()
    sent, more = asyncio.Event(), asyncio.Event()

    async def endless(sink: Broadcast) -> Outcome:
        await sink.start(Outcome("g"))
        await sink.send([piece(0)])
        sent.set()
        await more.wait()
        await sink.send([piece(1)])  # the leader's app is gone by now
        try:
            await asyncio.Event().wait()  # an upstream that never ends
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    first, second = GoneSink(), Sink()
    leader = asyncio.create_task(coalescer.stream("k", endless, first))
    await sent.wait()
    follower = asyncio.create_task(coalescer.stream("k", endless, second))
    await settle()
    first.gone = True
    more.set()
    await settle()
    assert len(second.chunks) == 2 and not leader.done()  # the follower still reads: the call goes on
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    with pytest.raises(asyncio.CancelledError):
        await leader  # nobody reads any more: the call is cancelled
    assert cancelled.is_set() and LEADERS == {} and coalescer.flights == {}


async def test_a_slow_leader_does_not_hold_its_followers_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.routing.coalesce.LAG_TIMEOUT", 0.05)
    coalescer, streamer = Coalescer(), Streamer(6, pause_after=2)
    first, second = SlowSink(), Sink()
    leader, follower = await leader_and_follower(coalescer, streamer, first, second)
    first.reading.clear()  # the leader's app stops reading
    streamer.resume.set()
    await asyncio.wait_for(follower, 2)
    assert len(second.chunks) == 6 and second.end == "finish"
    first.reading.set()
    outcome, joined = await asyncio.wait_for(leader, 2)
    assert outcome is not None and not joined
    assert len(first.chunks) == 6 and first.end == "finish" and first.chunks == second.chunks


async def test_an_in_band_failure_ends_every_subscriber_stream_with_the_error() -> None:
    coalescer, streamer = Coalescer(), Streamer(3, pause_after=1, fail=UpstreamServerError("cut"))
    sinks = [Sink() for _ in range(3)]
    tasks = [asyncio.create_task(coalescer.stream("k", streamer, s)) for s in sinks]
    await streamer.paused.wait()
    streamer.resume.set()
    await asyncio.gather(*tasks)
    assert [s.end for s in sinks] == ["fail: cut"] * 3 and streamer.count == 1


async def test_a_failure_before_the_commit_is_raised_to_every_subscriber() -> None:
    coalescer = Coalescer()
    streamer = Streamer(0, 0, fail=UpstreamBadRequest("nope"), fail_before=True)
    sinks = [Sink() for _ in range(3)]
    tasks = [asyncio.create_task(coalescer.stream("k", streamer, s)) for s in sinks]
    await settle()
    streamer.resume.set()
    results: list[Any] = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamBadRequest) for r in results) and streamer.count == 1
    assert not any(s.started for s in sinks)


async def test_a_stream_past_the_buffer_takes_no_joiners_and_keeps_only_what_is_unread() -> None:
    coalescer, streamer = Coalescer(max_bytes=200), Streamer(20, pause_after=10, size=40)
    first = Sink()
    leader = asyncio.create_task(coalescer.stream("k", streamer, first))
    await streamer.paused.wait()
    await settle()
    broadcast = coalescer.flights["k"]  # nobody joined: the broadcast is the flight
    assert isinstance(broadcast, Broadcast) and not broadcast.whole and broadcast.size <= 200
    other = Streamer(2, pause_after=0)
    second = Sink()
    await coalescer.stream("k", other, second)  # the big stream takes no joiners: a call of its own
    assert other.count == 1 and len(second.chunks) == 2
    streamer.resume.set()
    await leader
    assert len(first.chunks) == 20 and first.end == "finish"


async def test_a_call_that_fails_after_its_subscribers_are_done_leaves_no_unretrieved_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each waiter's future is settled by the call's task; one nobody awaits any more is not logged."""
    coalescer, streamer = Coalescer(), Streamer(2, pause_after=1)

    async def fails_after_the_end(sink: Broadcast) -> Outcome:
        await streamer(sink)
        await asyncio.sleep(0.01)  # both subscribers have their whole stream by now
        raise UpstreamServerError("after the end")

    sinks = [Sink(), Sink()]
    leader = asyncio.create_task(coalescer.stream("k", fails_after_the_end, sinks[0]))
    await streamer.paused.wait()
    joiner = asyncio.create_task(coalescer.stream("k", fails_after_the_end, sinks[1]))
    await settle()
    streamer.resume.set()
    assert await asyncio.gather(leader, joiner) == [(None, False), (None, True)]
    assert [s.end for s in sinks] == ["finish", "finish"] and coalescer.flights == {}
    gc.collect()
    await settle()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_leader_too_slow_at_its_streams_end_is_not_sent_the_end_twice(monkeypatch: pytest.MonkeyPatch,
                                                                             ) -> None:
    monkeypatch.setattr("sidecar.routing.coalesce.LAG_TIMEOUT", 0.05)
    coalescer, streamer = Coalescer(), Streamer(3, pause_after=3)
    first, second = SlowSink(), Sink()
    leader, follower = await leader_and_follower(coalescer, streamer, first, second)
    first.reading.clear()  # stops reading just as the end comes
    streamer.resume.set()
    await asyncio.wait_for(follower, 2)
    await asyncio.sleep(0.1)  # past the time a write to the leader may take while the follower read
    first.reading.set()
    await asyncio.wait_for(leader, 2)
    assert first.end == second.end == "finish" and first.ends == 1 and first.chunks == second.chunks


async def test_a_follower_too_far_behind_is_dropped_with_an_error_and_the_others_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.routing.coalesce.LAG_TIMEOUT", 0.05)
    coalescer, streamer = Coalescer(max_bytes=300), Streamer(20, pause_after=2, size=40)
    first, second = Sink(), SlowSink()
    leader, follower = await leader_and_follower(coalescer, streamer, first, second)
    second.reading.clear()  # the follower's app stops reading
    streamer.resume.set()
    outcome, joined = await asyncio.wait_for(leader, 2)  # the upstream waited for it at most LAG_TIMEOUT
    assert outcome is not None and not joined and len(first.chunks) == 20 and first.end == "finish"
    second.reading.set()
    await asyncio.wait_for(follower, 2)
    assert second.end == "fail: the app read the stream too slowly for a shared answer" and len(second.chunks) < 20
    assert LEADERS == {} and coalescer.flights == {}
