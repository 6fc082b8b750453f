"""Give the memory of large upstream answers back to the system once they are gone.

A large answer — a whole one of many MiB, or a stream sent as one huge chunk — is read in pieces, joined,
parsed and encoded: heap blocks of every size, which glibc keeps after they are freed (its free lists, and
the fragments between blocks still in use), so one burst of large answers would leave the process's resident
set high for good. Once a second this looks at the resident set; when it grew by ``GROWTH`` since the last
look that trimmed, a collection frees what reference cycles still hold (the young generation is collected
rarely after start-up, see ``cli._tune_gc``; a failed answer's traceback can hold its buffers) and
``malloc_trim(0)`` returns the free pages. Never on the request path; a few ms at most after a burst. Where
there is no ``/proc`` or no ``malloc_trim`` (not Linux, not glibc) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable

GROWTH = 16 * 1024 * 1024  # bytes of resident growth that make a trim worth it
EVERY = 1.0  # seconds between looks
AGAIN = 4.0  # seconds before a high resident set that did not grow is trimmed again
STATM = "/proc/self/statm"
HAS_STATM = os.path.exists(STATM)  # Linux
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def resident() -> int:
    """The process's resident set in bytes (``/proc/self/statm``)."""
    with open(STATM, "rb") as handle:
        return int(handle.read().split()[1]) * PAGE


async def trim_after_large_answers() -> None:
    """Runs until cancelled: while the resident set is ``GROWTH`` above the lowest seen, collect cycles and
    trim the heap — at once when it grew again since the last trim, else every ``AGAIN`` seconds (a burst
    trimmed while still under way is trimmed again once over; a process that is simply larger now pays one
    trim per ``AGAIN``)."""
    trim = _malloc_trim()
    if trim is None or not HAS_STATM:
        return
    loop = asyncio.get_running_loop()
    floor = after = resident()
    last = loop.time()
    while True:
        await asyncio.sleep(EVERY)
        now, rss = loop.time(), resident()
        floor = min(floor, rss)
        if rss > floor + GROWTH and (rss > after + GROWTH or now - last >= AGAIN):
            gc.collect()
            trim(0)
            after, last = resident(), now
