"""The response cache's part in streams and shared calls: a streamed answer stored as a whole one, a cache
hit replayed as a stream, and the key identical in-flight requests meet under.

A stream is stored only when it finished cleanly, was kept whole (at most ``coalesce.MAX_BYTES``) and folds
into one answer (``formats.stream_answer``); the stored value is the ``chat.completion`` the request would
have got without ``stream``, with the usage — so one entry serves plain and streaming requests alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, StreamChunk
from sidecar.formats.stream_answer import Incomplete, assemble
from sidecar.formats.stream_answer import replay as replay_chunks
from sidecar.routing.coalesce import COALESCED, MAX_BYTES, MISS
from sidecar.routing.outcome import Outcome, StreamSink

HIT = "hit"
__all__ = ["COALESCED", "HIT", "MISS", "Recorder", "flight_key", "loads", "replay", "stored_stream"]


def flight_key(key: str, chat: ChatRequest) -> str:
    """Requests share a call only when they also want the same bytes: dialect, streaming, usage chunk. (Joined
    with ``+``: ``wire`` is a str, and an f-string's ``{flag:d}`` and ``.value`` cost ~6k instructions.)"""
    return key + ":" + chat.wire + (":1" if chat.stream else ":0") + ("1" if chat.include_usage else "0")


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


def stored_stream(chunks: list[StreamChunk] | None, outcome: Outcome) -> bytes | None:
    """What to store for a finished stream, or None when it does not fold into one answer."""
    if chunks is None:
        return None
    try:
        completion = assemble([c.data for c in chunks])
    except Incomplete:
        return None
    usage = outcome.usage
    if "usage" not in completion and usage is not None:
        completion["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                               "total_tokens": usage.total_tokens}
    return orjson.dumps(completion)


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

    async def start(self, outcome: Outcome) -> None:
        outcome.cache = self.verdict
        await self.sink.start(outcome)

    async def send(self, chunks: list[StreamChunk]) -> None:
        if self.whole:
            self.chunks.extend(chunks)
            for chunk in chunks:
                self.size += len(chunk.raw)
            if self.size > self.max_bytes:
                self.whole, self.chunks = False, []
        await self.sink.send(chunks)

    async def finish(self) -> None:
        await self.sink.finish()

    async def fail(self, error: SidecarError) -> None:
        await self.sink.fail(error)
