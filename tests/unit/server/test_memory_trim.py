"""The heap trimmer: trims after the resident set grew, again once a trimmed burst is over, never when idle."""

from __future__ import annotations

import pytest

from sidecar.server import memory

MIB = 1024 * 1024


class Done(Exception):
    """The readings ran out: the test's end."""


def readings(*sizes: int):  # type: ignore[no-untyped-def]
    values = iter(sizes)

    def resident() -> int:
        try:
            return next(values)
        except StopIteration:
            raise Done from None

    return resident


async def test_trims_after_growth_and_again_after_the_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    resident = readings(40 * MIB, 40 * MIB, 300 * MIB, 420 * MIB, 420 * MIB, 160 * MIB, 160 * MIB, 160 * MIB,
                        160 * MIB, 160 * MIB, 50 * MIB, 50 * MIB, 50 * MIB, 50 * MIB)
    trims: list[int] = []
    monkeypatch.setattr(memory, "resident", resident)
    monkeypatch.setattr(memory, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(memory, "HAS_STATM", True)
    monkeypatch.setattr(memory, "EVERY", 0.001)
    monkeypatch.setattr(memory, "AGAIN", 0.0)
    with pytest.raises(Done):
        await memory.trim_after_large_answers()
    # grew to 300 MiB: trim (reads 420 after); 160 (below 420, but AGAIN passed): trim; at 50 MiB: near the floor
    assert len(trims) >= 2 and all(t == 0 for t in trims)


async def test_idle_process_is_never_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    resident = readings(*[40 * MIB] * 6)
    trims: list[int] = []
    monkeypatch.setattr(memory, "resident", resident)
    monkeypatch.setattr(memory, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(memory, "HAS_STATM", True)
    monkeypatch.setattr(memory, "EVERY", 0.001)
    with pytest.raises(Done):
        await memory.trim_after_large_answers()
    assert trims == []
