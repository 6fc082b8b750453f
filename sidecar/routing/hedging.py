"""Hedging: a second attempt started in parallel when the first is slow to answer.

If the first candidate has not answered (or, for a stream, sent its first token) after the group's hedge
delay, the next admitted candidate starts too; the first good answer wins and the other attempt is
cancelled — which closes its upstream connection. A stream that reaches the app first claims it
(``RaceState.committed``): the other attempt is cancelled at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from sidecar.config import Hedging
from sidecar.policy.plan import Skip
from sidecar.routing.outcome import FAILED, RaceState, Target

Run = Callable[[Target, deque[Target]], Awaitable[object]]  # attempts on a target, given the candidates left


async def race(run: Run, first: Target, candidates: deque[Target], admit: Callable[[Target], bool], delay: float,
               state: RaceState | None, trail: list[object]) -> object:
    """``first``'s attempts, joined by the next admitted candidate's after ``delay``: the first good answer,
    or ``FAILED`` when both failed. Candidates passed over for the second are taken off ``candidates``."""
    tasks = {asyncio.create_task(run(first, candidates)): first}
    committed = asyncio.create_task(state.committed.wait()) if state is not None else None
    extra = [committed] if committed is not None else []
    try:
        done, _ = await asyncio.wait([*tasks, *extra], timeout=delay)
        if not done:
            while candidates and not admit(candidates[0]):
                candidates.popleft()
            if candidates:
                second = candidates.popleft()
                trail.append(Skip(second.deployment.id, "hedge_started"))
                tasks[asyncio.create_task(run(second, candidates))] = second
        return await _first_good(tasks, committed, state)
    finally:
        for task in [*tasks, *extra]:
            task.cancel()
        await asyncio.gather(*tasks, *extra, return_exceptions=True)


async def _first_good(tasks: dict[asyncio.Task[object], Target], committed: asyncio.Task[bool] | None,
                      state: RaceState | None) -> object:
    waiting: set[asyncio.Future[object]] = {*tasks, *([committed] if committed else [])}
    while waiting - {committed}:
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is committed:  # a stream claimed the app: cancel the attempts that did not
                assert state is not None
                for other, target in tasks.items():
                    if target is not state.owner:
                        other.cancel()
                continue
            if task.cancelled():
                continue
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            if task.result() is not FAILED:
                return task.result()
    return FAILED


def hedge_delay(hedge: Hedging, target: Target) -> float:
    """The configured delay, or the deployment's observed p95 time to first token (a fixed delay until
    enough samples exist)."""
    if hedge.after is not None:
        return hedge.after
    return target.stats.p95_ttft or hedge.fallback_after
