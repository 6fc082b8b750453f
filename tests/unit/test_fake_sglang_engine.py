"""The SGLang emulator's scheduler: a waiter cancelled after its wakeup does not stall the replica."""

from __future__ import annotations

import asyncio

from sidecar.testing.fake_sglang import Engine, SGLangSettings


def test_a_waiter_cancelled_after_its_wakeup_does_not_stall_the_others() -> None:
    async def main() -> bool:
        engine = Engine(SGLangSettings(max_running=1), "r")
        assert await engine.admit()  # the one running slot
        first = asyncio.create_task(engine.admit())
        second = asyncio.create_task(engine.admit())
        await asyncio.sleep(0.01)  # both wait
        await engine.release()  # wakes a waiter ...
        first.cancel()  # ... which is cancelled before it runs (its client went away)
        await asyncio.gather(first, return_exceptions=True)
        try:
            return await asyncio.wait_for(second, 1.0)
        except TimeoutError:
            return False
    assert asyncio.run(main())
