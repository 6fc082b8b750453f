"""A streamed answer folded into the whole one it spells, and a stored answer replayed as a stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.formats.stream_answer import Incomplete, assemble, replay

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_text_chunks_fold_into_one_message_with_usage() -> None:
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), {}, chunk({"content": "lo"}),
              chunk({}, "stop"), {**HEAD, "choices": [], "usage": USAGE}]
    completion = assemble(chunks)
    assert completion == {"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                       "logprobs": None, "finish_reason": "stop"}], "usage": USAGE}


def test_tool_call_deltas_merge_by_index() -> None:
    chunks = [chunk({"role": "assistant", "tool_calls": [
                  {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
              chunk({}, "tool_calls")]
    message = assemble(chunks)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]


@pytest.mark.parametrize("chunks", [
    [chunk({"content": "cut"})],  # no finish reason: the stream broke
    [chunk({"content": "a"}), {**HEAD, "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]}],
])
def test_streams_that_are_not_one_finished_answer_are_refused(chunks: list[dict[str, Any]]) -> None:
    with pytest.raises(Incomplete):
        assemble(chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_replay_round_trips_and_adds_the_usage_chunk_when_asked(include_usage: bool) -> None:
    completion = assemble([chunk({"content": "Hi there"}), chunk({}, "length"), {**HEAD, "choices": [],
                                                                                   "usage": USAGE}])
    chunks = replay(completion, include_usage)
    assert all(orjson.loads(c.raw) == c.data for c in chunks)
    assert all(c.data["object"] == "chat.completion.chunk" and c.data["id"] == "chatcmpl-1" for c in chunks)
    again = assemble([c.data for c in chunks])
    assert again["choices"] == completion["choices"]
    assert ("usage" in again) is include_usage
    if include_usage:
        assert chunks[-1].data["choices"] == [] and chunks[-1].data["usage"] == USAGE
