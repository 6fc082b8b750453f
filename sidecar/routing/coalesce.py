"""In-flight coalescing: identical cacheable requests that arrive while one is in flight share its single
upstream call.

A *flight* is one upstream call, keyed by the request's cache key (plus what changes the bytes the app gets:
wire format, streaming, usage chunk). The first request starts it; requests that arrive while it runs *join*
it. When the request that started it goes away, the call goes on for the others; it stops only when nobody
waits for it any more.

- Whole answers: the request that starts the flight makes the call itself, inline (a task of its own would
  cost every cache miss a task and two more rounds of the event loop). Its *owner* — the task of its app's
  connection — is noted in ``LEADERS`` once somebody joins: when that app hangs up, the server asks
  ``keep_running`` before it cancels the handler, and lets a leader that others wait for finish (its own
  answer then goes nowhere).
  Every waiter gets the same answer, or its own copy of the same error. When the error is
  one a retry can help (``worth_retrying``), waiters do not all retry: the first one to wake starts
  the next flight and the others join it (at most ``MAX_ROUNDS`` flights per request).
- Streams: the request that starts the flight also makes its call inline, into the flight's ``Broadcast``,
  which passes each step straight to that request's own sink (its *leader*) and keeps the chunks sent so far,
  so a subscriber that joins late first receives those, then the rest, through its own sink — a well-formed
  stream of its own in its own dialect. The leader's app reads at its own pace, as it would alone; while
  others read too, a write to it may take at most ``LAG_TIMEOUT`` — then it is read from the buffer like any
  other subscriber's, after the call. When the leader's app hangs up while others read, the call goes on for
  them (``keep_running``), and ends when the last of them has gone too. The buffer is bounded
  (``max_bytes``): once a stream outgrows it, the flight takes no new joiners and drops what every subscriber
  already has; the upstream waits for a subscriber more than ``max_bytes`` behind for at most
  ``LAG_TIMEOUT`` seconds, after which that subscriber's stream ends with an error rather than hold the
  others back.

Most calls nobody joins, and they pay for nothing they do not use: until its first joiner makes the ``Flight``
(the waiters' futures, the entry in ``LEADERS``), a call's entry in ``flights`` is only its leader's owner (a
whole answer) or its ``Broadcast`` (a stream).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Awaitable, Callable, Generator, Hashable
from typing import Any, Generic, TypeVar

from sidecar.core.errors import NoHealthyUpstream, SidecarError, UpstreamServerError
from sidecar.core.types import StreamChunk
from sidecar.routing.outcome import Outcome, StreamSink

T = TypeVar("T")
MAX_ROUNDS = 3  # flights one request may wait for (the first, plus retries after retryable failures)
MAX_BYTES = 4 * 1024 * 1024  # a stream's buffer for late joiners and slow subscribers
LAG_TIMEOUT = 10.0  # how long the upstream waits for a subscriber that is MAX_BYTES behind
MISS, COALESCED = "miss", "coalesced"  # x-sidecar-cache on a stream: the one that called, and those that joined


class Done:
    """An awaitable that is already over: a sink step with nothing to wait for (no coroutine to make)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


DONE = Done()


def stream_bytes(chunks: list[StreamChunk]) -> int:
    """The bytes ``chunks`` hold: their payloads, and their native events when they carry them. (A loop: ``map``
    with ``attrgetter`` or ``len`` costs more per chunk than the bytecode it replaces.)"""
    size = 0
    for chunk in chunks:
        size += len(chunk.raw)
        if chunk.native is not None:
            size += len(chunk.native)
    return size


def keep_running(owner: object) -> bool:
    """Does the request of ``owner`` (its connection's task) make a call — a whole answer or a stream — that
    others wait for? Then it must not be cancelled when its own app hangs up."""
    flight = LEADERS.get(owner)
    return flight is not None and flight.waiters > 0


def worth_retrying(error: SidecarError) -> bool:
    """May a waiter's own try succeed where the shared call failed? A transient upstream failure (what the
    router retries, or its "no upstream could answer" after them) — not the request's own fault, not a
    rate limit (the retry would meet it too), not a deadline."""
    return error.retryable or type(error) is NoHealthyUpstream


def _copy(error: SidecarError) -> SidecarError:
    """Each waiter raises its own exception object: the server and pipeline write to it (outcome, traceback)."""
    try:
        return copy.copy(error)
    except Exception:  # an exception class whose copy fails: the original will do
        return error


class Flight(Generic[T]):
    """One shared upstream call, made inline by the request that started it, and the requests waiting for it:
    each waiter waits on a future of its own, which the call settles as it ends."""

    __slots__ = ("broadcast", "owner", "waiters", "waiting")

    def __init__(self, broadcast: Broadcast | None = None, owner: Any = None) -> None:
        self.owner = owner  # the task making a stream's call inline (cancelled when nobody reads any more)
        self.broadcast = broadcast
        self.waiters = 0  # requests still waiting for the call (joiners)
        self.waiting: list[asyncio.Future[T]] = []  # their futures (one each)

    def wait(self) -> asyncio.Future[T]:
        """A future of the call's result for one more waiter."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self.waiters += 1
        return waiter

    def land(self, result: T | None, error: BaseException | None) -> None:
        """The call is over: wake the stream's subscribers, settle every waiter's future."""
        if self.broadcast is not None:
            self.broadcast.close()
        for waiter in self.waiting:
            if not waiter.done():
                if error is None:
                    waiter.set_result(result)  # type: ignore[arg-type]
                else:
                    waiter.set_exception(error)


LEADERS: dict[object, Flight[Any]] = {}  # flights by the task of the connection making the call
LEADER = 0  # the position of a stream's leader left behind (subscribers are ``id(sink)``, never 0)


class Broadcast:
    """A stream sink for the router that many subscribers read: chunks kept for late joiners, bounded."""

    __slots__ = (
        "_moved",
        "_waiting",
        "behind",
        "chunks",
        "dropped",
        "error",
        "finished",
        "flight",
        "leader",
        "max_bytes",
        "outcome",
        "owner",
        "positions",
        "size",
        "started",
        "trimmed",
        "whole",
    )

    def __init__(self, max_bytes: int = MAX_BYTES, leader: StreamSink | None = None, owner: Any = None) -> None:
        self.leader = leader  # the sink of the request making the call: sent each step as the router makes it
        self.owner = owner  # the task of the leader's connection
        self.flight: Flight[Any] | None = None  # made by the first to join
        self.behind: int | None = None  # the chunks the leader had when it was too slow (it follows, after)
        self.chunks: list[StreamChunk] = []
        self.trimmed = 0  # chunks dropped from the front (every subscriber had them): ``chunks[0]`` is number trimmed
        self.size = 0  # bytes of the chunks held
        self.max_bytes = max_bytes
        self.outcome: Outcome | None = None
        self.started = False  # the router committed the stream (``outcome`` is set)
        self.whole = True  # all chunks are still held (the stream can still take joiners and be stored)
        self.finished = False
        self.error: SidecarError | None = None  # in-band failure after the commit
        self.positions: dict[int, int] = {}  # subscriber id -> chunks it has been sent (absolute)
        self.dropped: set[int] | None = None  # subscribers too far behind, ended with an error (made when one is)
        # Futures rather than asyncio.Events: a new Event per chunk (and per batch a subscriber is sent) was most
        # of what a stream pays for coalescing. Each waiting subscriber has a future of its own (a shared one
        # would be cancelled with the first waiter cancelled); the router waits on ``_moved`` only when trimming.
        self._waiting: list[asyncio.Future[None]] = []  # subscribers waiting for the next change
        self._moved: asyncio.Future[None] | None = None  # the router waiting for a subscriber to move on

    def _notify(self) -> None:
        waiting = self._waiting
        if waiting:
            self._waiting = []
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    def _gone(self, subscriber: int) -> None:
        """A subscriber stopped reading (its id may be another's next)."""
        del self.positions[subscriber]
        if self.dropped is not None:
            self.dropped.discard(subscriber)
        self._moved_on()

    def _moved_on(self) -> None:
        moved = self._moved
        if moved is not None:
            self._moved = None
            if not moved.done():
                moved.set_result(None)

    # ---- the router's side ----------------------------------------------------------------------------

    # Each step goes to the leader's sink directly while nobody else reads (an app that went away then ends
    # the call with its error, as without coalescing), through ``_to_leader`` while others do; ``_notify``
    # only when a subscriber waits. (The hot path of every cached stream: no call it can do without.) The
    # steps are not coroutines: each does its bookkeeping and returns the leader's own step for the router to
    # await — one coroutine fewer per step.

    def start(self, outcome: Outcome) -> Awaitable[None]:
        self.outcome = outcome
        self.started = True
        if self._waiting:
            self._notify()
        leader = self.leader
        if leader is None:
            return DONE
        outcome.cache = MISS  # the call's own outcome, as without coalescing (a copy costs ~10k instructions)
        return self._to_leader(leader.start, outcome) if self.positions else leader.start(outcome)

    def send(self, chunks: list[StreamChunk]) -> Awaitable[None]:
        self.chunks.extend(chunks)
        self.size = size = self.size + stream_bytes(chunks)
        if self._waiting:
            self._notify()
        leader = self.leader
        step = None if leader is None else (
            self._to_leader(leader.send, chunks) if self.positions else leader.send(chunks))
        if size > self.max_bytes:
            return self._then_trim(step)
        return DONE if step is None else step

    def finish(self) -> Awaitable[None]:
        self.finished = True
        if self._waiting:
            self._notify()
        leader = self.leader
        if leader is None:
            return DONE
        return self._to_leader(leader.finish) if self.positions else leader.finish()

    def fail(self, error: SidecarError) -> Awaitable[None]:
        self.error = error
        self.finished = True
        if self._waiting:
            self._notify()
        leader = self.leader
        if leader is None:
            return DONE
        return self._to_leader(leader.fail, error) if self.positions else leader.fail(error)

    async def _then_trim(self, step: Awaitable[None] | None) -> None:
        if step is not None:
            await step
        await self._trim()

    async def _to_leader(self, step: Callable[..., Awaitable[None]], *args: Any) -> None:
        """One step to the leader's app while others read: it may take at most ``LAG_TIMEOUT``, then the leader
        is left behind (it reads the rest from the buffer after the call). An app that went away is let go;
        when nobody else reads any more, its error ends the call."""
        held = self.trimmed + len(self.chunks)
        try:
            await asyncio.wait_for(step(*args), LAG_TIMEOUT)
        except TimeoutError:
            # Each sink writes a step in one write, which aiohttp hands to the transport before it waits for
            # the app to drain it: the leader has everything up to here.
            if self.finished:
                return  # its stream's end was handed over too: nothing is left to send it
            self.leader, self.behind = None, held
            self.positions[LEADER] = held
        except ConnectionError:
            self.leader = None
            if not self.positions:
                raise

    def close(self) -> None:
        """The call is over: wake the subscribers even when the router never
        ended the stream — it failed before the commit, or was cancelled after it (a truncated stream must
        not end cleanly)."""
        if not self.finished:
            if self.started:
                self.error = UpstreamServerError("the shared upstream stream ended before the answer finished")
            self.finished = True
        self._notify()

    async def _trim(self) -> None:
        """Drop what every subscriber has; wait (bounded) for subscribers too far behind, then drop them."""
        waited = False
        while True:
            dropped = self.dropped or ()
            live = [p for s, p in self.positions.items() if s not in dropped]
            low = min(live, default=self.trimmed + len(self.chunks))
            if low > self.trimmed:
                gone = self.chunks[:low - self.trimmed]
                del self.chunks[:low - self.trimmed]
                self.trimmed = low
                self.whole = False
                self.size -= stream_bytes(gone)
            if self.size <= self.max_bytes:
                return
            if waited:
                if self.dropped is None:
                    self.dropped = set()
                for subscriber, position in self.positions.items():
                    if position == low:
                        self.dropped.add(subscriber)
                self._notify()
                continue
            moved = self._moved
            if moved is None or moved.done():
                moved = self._moved = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(moved, LAG_TIMEOUT)
            except TimeoutError:
                waited = True

    # ---- a subscriber's side ----------------------------------------------------------------------------

    async def follow(self, sink: StreamSink, joined: bool, subscriber: int | None = None) -> None:
        """Feed ``sink`` from the first chunk to the end (its headers name the deployment; a joiner's count no
        attempts of its own). Returns without starting ``sink`` when the call failed before the commit (the
        leader's call raises the error); ends the stream in-band when it failed after. ``subscriber``: a position
        already held (the leader left behind, ``LEADER``)."""
        if subscriber is None:
            subscriber = id(sink)
            self.positions[subscriber] = self.trimmed
        try:
            while True:
                if subscriber in (self.dropped or ()):
                    if sink.started:
                        await sink.fail(UpstreamServerError("the app read the stream too slowly for a shared answer"))
                    return
                position = self.positions[subscriber]
                if self.outcome is not None:
                    if not sink.started:
                        if joined:  # a copy: the headers of its own, with no attempts
                            await sink.start(dataclasses.replace(self.outcome, cache=COALESCED, attempts=0))
                        else:  # the call's own outcome, as without coalescing (a copy costs ~10k instructions)
                            self.outcome.cache = MISS
                            await sink.start(self.outcome)
                    held = self.trimmed + len(self.chunks)
                    if position < held:
                        batch = self.chunks[position - self.trimmed:]
                        self.positions[subscriber] = held
                        await sink.send(batch)
                        self._moved_on()
                        continue
                    if self.finished:
                        if self.error is not None:
                            await sink.fail(self.error)
                        else:
                            await sink.finish()
                        return
                elif self.finished:
                    return  # failed before the commit: the leader's call raises the error
                change = asyncio.get_running_loop().create_future()
                self._waiting.append(change)
                await change
        finally:
            self._gone(subscriber)


class Coalescer:
    """The flights in progress, by key. ``coalesced`` counts requests that joined a flight."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        # A flight; or, for a call nobody joined yet, its leader's owner (a whole answer) or its Broadcast (a stream)
        self.flights: dict[Hashable, Flight[Any] | Broadcast | object] = {}
        self.max_bytes = max_bytes
        self.coalesced = 0
        self.retried = 0  # flights started by a waiter after a retryable failure

    def _leave(self, flight: Flight[Any], waiter: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.cancel()  # this request stopped waiting (it was cancelled, or a stream joiner is done)
        elif not waiter.cancelled():
            waiter.exception()  # seen: asyncio does not log it as never retrieved
        flight.waiters -= 1
        if flight.waiters:
            return
        broadcast, owner = flight.broadcast, flight.owner
        if owner is not None and broadcast is not None and broadcast.leader is None and broadcast.behind is None \
                and not owner.done():
            owner.cancel()  # a stream's leader whose app went away, and now nobody else reads either

    async def complete(self, key: Hashable, call: Callable[..., Awaitable[T]], owner: object,
                       *args: Any) -> tuple[T, bool]:
        """(the answer, whether this request joined another's call). Raises the call's error. ``owner``: the
        task of the request's connection (see ``keep_running``). The request that starts a flight makes the
        call here, inline: ``call(*args)`` (its arguments passed on, not a closure: a lambda would make every
        variable it reads a cell in its maker, and cost each request one more call)."""
        flights = self.flights
        round_ = 0
        while True:
            if key not in flights:
                if round_:
                    self.retried += 1
                # Until somebody joins, a whole answer's flight is only its leader's ``owner`` in ``flights``; the
                # first to join makes the Flight (``_join``). Most calls nobody joins: they make no Flight and
                # write nothing to LEADERS.
                flights[key] = owner
                try:
                    result = await call(*args)
                except Exception as error:
                    self._settle(key, owner, None, error)
                    raise
                except BaseException:  # cancelled (nobody else waited, or the process is stopping)
                    self._settle(key, owner, None,
                                 UpstreamServerError("the request making the shared upstream call went away"))
                    raise
                flight = flights.pop(key)  # ``_settle``, inline: every call nobody joined ends here
                if flight.__class__ is Flight:
                    LEADERS.pop(owner, None)
                    flight.land(result, None)
                return result, False
            flight = self._join(key)
            self.coalesced += 1
            waiter = flight.wait()
            round_ += 1
            try:
                return await waiter, True
            except SidecarError as error:
                if not worth_retrying(error) or round_ == MAX_ROUNDS:
                    raise _copy(error) from None
            finally:
                self._leave(flight, waiter)

    def _join(self, key: Hashable) -> Flight[Any]:
        """The whole-answer flight for ``key`` (in ``flights``), made now when this is its first joiner."""
        flight = self.flights[key]
        if flight.__class__ is not Flight:  # the leader's owner, until now
            owner, flight = flight, Flight()
            self.flights[key] = LEADERS[owner] = flight
        return flight

    def _settle(self, key: Hashable, owner: object, result: Any, error: BaseException | None) -> None:
        """A whole answer's call is over: its flight leaves ``flights`` (only the request that made the call
        removes it), and those who joined it get its result or error."""
        flight = self.flights.pop(key)
        if flight.__class__ is Flight:
            LEADERS.pop(owner, None)
            flight.land(result, error)

    async def stream(self, key: Hashable, call: Callable[..., Awaitable[T]], sink: StreamSink,
                     owner: asyncio.Task[Any] | None = None, *args: Any) -> tuple[T | None, bool]:
        """Subscribe ``sink`` to the flight for ``key`` — or start it, making the call here, inline, when there
        is none or it takes no more joiners: (the call's result — for the request that started it; None for
        joiners and when the call failed in-band — and whether this request joined another's call).
        ``owner``: the task of the request's connection (see ``keep_running``). The call is
        ``call(broadcast, *args)``."""
        flights = self.flights
        round_ = 0
        while True:
            flight = flights.get(key)
            if flight is None:
                break
            if flight.__class__ is Broadcast:  # nobody joined it yet: the Flight is made now (if it takes joiners)
                if not flight.whole:
                    break
                flight = self._first_join(key, flight)
            elif not flight.broadcast.whole:  # outgrew its buffer: a call of our own
                break
            round_ += 1
            if await self._subscribe(flight, sink, round_ == MAX_ROUNDS):
                return None, True
        # A call of our own, into a broadcast that passes it on to ``sink`` as it comes (here, not in a coroutine
        # of its own: one fewer for every stream). Until somebody joins, the broadcast is the flight.
        if round_:
            self.retried += 1
        broadcast = flights[key] = Broadcast(self.max_bytes, sink, owner or asyncio.current_task())
        try:
            result = await call(broadcast, *args)
        except Exception as error:
            if not await self._broke_off(key, broadcast, sink, error):
                raise
            return None, False
        except BaseException:  # cancelled: nobody reads any more (or the process is stopping)
            self._end(key, broadcast, UpstreamServerError("the request making the shared upstream call went away"))
            raise
        if broadcast.flight is None:  # nobody joined: nobody to wake, the leader had it all (``_land_stream``, inline)
            if flights.get(key) is broadcast:
                del flights[key]
        else:
            await self._landed(self._land_stream(key, broadcast), result, sink)  # type: ignore[arg-type]
        return result, False

    async def _subscribe(self, flight: Flight[Any], sink: StreamSink, last: bool) -> bool:
        """Feed ``sink`` from a stream flight. True: it had the stream (whole, or ended in-band); False: the call
        failed before the commit with an error a call of its own may not meet (not when ``last``: raises it)."""
        self.coalesced += 1
        waiter = flight.wait()
        try:
            await flight.broadcast.follow(sink, True)
            if not sink.started:
                await waiter  # failed before the commit: raises its error
            return True
        except SidecarError as error:
            if sink.started or not worth_retrying(error) or last:
                raise _copy(error) from None
            return False
        finally:
            self._leave(flight, waiter)

    def _first_join(self, key: Hashable, broadcast: Broadcast) -> Flight[Any]:
        """The Flight of a stream nobody had joined yet, made by its first joiner (its leader is in LEADERS from
        now on: it must not be cancelled when its own app hangs up)."""
        flight = broadcast.flight = self.flights[key] = Flight(broadcast, broadcast.owner)
        LEADERS[broadcast.owner] = flight
        return flight

    def _land_stream(self, key: Hashable, broadcast: Broadcast) -> Flight[Any] | None:
        """The stream's call is over: it leaves ``flights`` (unless a newer call holds its key). Returns its Flight,
        None when nobody joined."""
        flight = broadcast.flight
        entry = self.flights.get(key)
        if entry is not None and (entry is broadcast or entry is flight):
            del self.flights[key]
        if flight is not None:
            LEADERS.pop(broadcast.owner, None)
        return flight

    async def _broke_off(self, key: Hashable, broadcast: Broadcast, sink: StreamSink, error: Exception) -> bool:
        """The stream's call raised ``error``: the joiners' streams end with it (in-band after the commit). True
        when the leader's app has it in-band too (its stream was committed); False: the leader raises it."""
        ended = broadcast.finished
        self._end(key, broadcast, error)
        if not sink.started or not isinstance(error, SidecarError):
            return False
        if not ended and broadcast.leader is not None and broadcast.error is not None:
            await broadcast.leader.fail(broadcast.error)  # the call broke off after the commit
        return True

    def _end(self, key: Hashable, broadcast: Broadcast, error: BaseException) -> None:
        """The stream's call failed: its subscribers are woken (a truncated stream must not end cleanly) and
        its waiters get ``error``."""
        flight = self._land_stream(key, broadcast)
        if flight is None:
            broadcast.close()
        else:
            flight.land(None, error)

    @staticmethod
    async def _landed(flight: Flight[T], result: T, sink: StreamSink) -> None:
        """The stream's call ended well while others read: wake them; a leader left behind reads the rest."""
        flight.land(result, None)
        broadcast = flight.broadcast
        assert broadcast is not None
        if broadcast.behind is not None:  # too slow while others read: the rest from the buffer, now
            await broadcast.follow(sink, False, LEADER)
        elif broadcast.leader is None:  # its app hung up while others read: the call went on for them
            raise asyncio.CancelledError  # this request ends as one whose app went away does

    def render(self) -> str:
        return ("# HELP llm_sidecar_coalesced_requests_total Requests that shared another request's upstream call.\n"
                "# TYPE llm_sidecar_coalesced_requests_total counter\n"
                f"llm_sidecar_coalesced_requests_total {self.coalesced}\n"
                "# HELP llm_sidecar_coalesced_retries_total Shared calls started again after a retryable failure.\n"
                "# TYPE llm_sidecar_coalesced_retries_total counter\n"
                f"llm_sidecar_coalesced_retries_total {self.retried}\n"
                "# HELP llm_sidecar_inflight_shared_calls Upstream calls in flight that identical requests may join.\n"
                "# TYPE llm_sidecar_inflight_shared_calls gauge\n"
                f"llm_sidecar_inflight_shared_calls {len(self.flights)}\n")

