"""Continuing a cut stream: prefill forwards the continuation; splice forwards only what is new."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.types import StreamChunk
from sidecar.formats.continuation import Diverged, Splicer, StreamProgress, prefill_body


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None, id_: str = "b") -> StreamChunk:
    delta: dict[str, object] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    data = {"id": id_, "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return StreamChunk(orjson.dumps(data), data)


def stream_of(text: str, pieces: list[int]) -> list[StreamChunk]:
    out, last = [chunk(role=True)], 0
    for cut in sorted({p for p in pieces if 0 < p < len(text)}):
        out.append(chunk(text[last:cut]))
        last = cut
    return [*out, chunk(text[last:]), chunk(finish="stop")]


def text_of(chunks: list[StreamChunk]) -> str:
    return "".join(c.data["choices"][0]["delta"].get("content") or "" for c in chunks if c.data.get("choices"))


@given(st.text(min_size=1, max_size=60), st.integers(min_value=0, max_value=60),
       st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_splice_forwards_exactly_the_missing_part(full: str, cut: int, pieces: list[int]) -> None:
    sent = full[: min(cut, len(full))]
    out = Splicer(sent, prefilled=False, stream_id="a").feed(stream_of(full, pieces))
    assert sent + text_of(out) == full
    assert all(c.data["id"] == "a" for c in out)
    assert out[-1].data["choices"][0]["finish_reason"] == "stop"
    assert not any("role" in c.data["choices"][0]["delta"] for c in out)


def test_splice_diverging_answer_raises() -> None:
    with pytest.raises(Diverged):
        Splicer("Hello wor", prefilled=False, stream_id="a").feed(stream_of("Hello there, world", [3, 8]))


def test_splice_shorter_answer_raises() -> None:
    with pytest.raises(Diverged):
        Splicer("Hello world", prefilled=False, stream_id="a").feed(stream_of("Hello", [2]))


def test_prefill_forwards_the_continuation_without_role_chunk() -> None:
    out = Splicer("Hello ", prefilled=True, stream_id="a").feed(stream_of("world.", [2]))
    assert text_of(out) == "world." and all(c.data["id"] == "a" for c in out)


def test_progress_tracks_text_and_what_cannot_be_resumed() -> None:
    progress = StreamProgress()
    progress.observe(stream_of("Hi there", [2])[:-1])
    assert (progress.text, progress.id, progress.continuable, progress.finished) == ("Hi there", "b", True, False)
    data = {"id": "b", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}, "finish_reason": None}]}
    progress.observe([StreamChunk(orjson.dumps(data), data)])
    assert not progress.continuable


def test_prefill_body_appends_an_assistant_message() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    assert prefill_body(body, "par")["messages"][-1] == {"role": "assistant", "content": "par"}
    assert len(body["messages"]) == 1  # the canonical request is never mutated


def _cpu_per_chunk(n: int) -> float:
    """CPU seconds per chunk to record an ``n``-chunk answer and splice it again (best of three)."""
    chunks = [chunk("twenty characters!! ") for _ in range(n)]
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        progress = StreamProgress()
        for c in chunks:
            progress.observe([c])
        splicer = Splicer(progress.text, prefilled=False, stream_id="a")
        for c in chunks:
            splicer.feed([c])
        best = min(best, time.process_time() - started)
    return best / n


def test_recording_and_splicing_are_linear_in_the_answer() -> None:
    """Appending to one string copied the whole answer on every chunk: 64k chunks cost several times more
    per chunk than 4k. Linear, the cost per chunk stays the same (a generous factor for noise)."""
    assert _cpu_per_chunk(64_000) < 3 * _cpu_per_chunk(4_000)
