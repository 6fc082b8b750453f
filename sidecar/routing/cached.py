"""The response cache's part in streams and shared calls: a streamed answer stored as a whole one, and a cache
hit replayed as a stream.

A stream is stored only when it finished cleanly, was kept whole (at most ``coalesce.MAX_BYTES``) and folds
into one answer (``formats.stream_answer``); the stored value is the ``chat.completion`` the request would
have got without ``stream``, with the usage — so one entry serves plain and streaming requests alike. The
memory tier keeps a short stream as its chunks' payloads and folds it when the entry is first read; what
goes to Redis or the semantic cache is folded when stored.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson

from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, StreamChunk
from sidecar.formats.stream_answer import answer_bytes, fold_payloads
from sidecar.formats.stream_answer import replay as replay_chunks
from sidecar.routing.coalesce import COALESCED, MAX_BYTES, MISS, stream_bytes
from sidecar.routing.outcome import Outcome, StreamSink
from sidecar.state.cache import Stored

HIT = "hit"
__all__ = ["COALESCED", "HIT", "MISS", "Recorder", "folded", "loads", "replay",
           "stored_stream"]


def loads(raw: bytes) -> dict[str, Any]:
    data = orjson.loads(raw)
    return data if isinstance(data, dict) else {}


async def replay(raw: bytes, chat: ChatRequest, sink: StreamSink, verdict: str = HIT) -> Outcome | None:
    """Send a stored answer to ``sink`` as a stream; None (a miss) when the entry is not a chat answer."""
    try:
        chunks = replay_chunks(loads(raw), chat.include_usage)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        return None
    outcome = Outcome(chat.model, cache=verdict)
    await sink.start(outcome)
    await sink.send(chunks)
    await sink.finish()
    return outcome


LAZY_MAX_BYTES = 64 * 1024  # a finished stream up to this size is kept as its chunks and folded when first read


def stored_stream(chunks: list[StreamChunk] | None, outcome: Outcome) -> Stored | None:
    """What to store for a finished stream — its answer, or (a stream of at most ``LAZY_MAX_BYTES``) its
    payloads and usage, folded by the first lookup that reads them (``state.cache.Stored``) — or None when it
    was not kept whole. Most entries are never read: a miss then costs a join of the chunks' bytes, not their
    fold (~55k instructions for 11 chunks)."""
    if chunks is None:
        return None
    raw = b",".join([c.raw for c in chunks if c.raw])
    if len(raw) <= LAZY_MAX_BYTES:
        return fold_payloads, raw, outcome.usage
    return answer_bytes([c.data for c in chunks], outcome.usage)


def folded(stored: Stored | None) -> bytes | None:
    """A stored stream's answer bytes (folding it now when it was kept as payloads)."""
    return stored[0](stored[1], stored[2]) if stored.__class__ is tuple else stored  # type: ignore[index, return-value]


class Recorder:
    """The app's stream sink with the chunks it was sent kept (up to ``max_bytes``) for the caches: the
    stream path when coalescing is off, or when only the semantic cache applies."""

    __slots__ = ("chunks", "max_bytes", "sink", "size", "verdict", "whole")

    def __init__(self, sink: StreamSink, max_bytes: int = MAX_BYTES, verdict: str | None = MISS) -> None:
        self.sink = sink
        self.verdict = verdict  # x-sidecar-cache (None: only the semantic cache keeps the answer)
        self.chunks: list[StreamChunk] = []
        self.size = 0
        self.max_bytes = max_bytes
        self.whole = True

    @property
    def started(self) -> bool:
        return self.sink.started

    # Not coroutines: each step returns the app's sink's own (one coroutine fewer per step).

    def start(self, outcome: Outcome) -> Awaitable[None]:
        outcome.cache = self.verdict
        return self.sink.start(outcome)

    def send(self, chunks: list[StreamChunk]) -> Awaitable[None]:
        if self.whole:
            self.chunks.extend(chunks)
            self.size += stream_bytes(chunks)
            if self.size > self.max_bytes:
                self.whole, self.chunks = False, []
        return self.sink.send(chunks)

    def finish(self) -> Awaitable[None]:
        return self.sink.finish()

    def fail(self, error: SidecarError) -> Awaitable[None]:
        return self.sink.fail(error)
