"""A read that carries good events and then an in-band error: every reader keeps the chunks before the error
on the error (``UpstreamError.partial``), so the app gets them and a continuation starts after them."""

from __future__ import annotations

import orjson
import pytest

from sidecar.core.errors import UpstreamError
from sidecar.core.types import ChatRequest
from sidecar.formats.gemini import GeminiToOpenAI
from sidecar.providers.anthropic import AnthropicStreamReader
from sidecar.providers.gemini import GeminiStreamReader
from sidecar.providers.openai_compatible import OpenAIStreamReader, in_band_error
from sidecar.providers.openai_responses import ResponsesStreamReader


def _sse(*events: dict, named: bool = False) -> bytes:
    out = b""
    for event in events:
        if named:
            out += b"event: " + event["type"].encode() + b"\n"
        out += b"data: " + orjson.dumps(event) + b"\n\n"
    return out


def _openai_chunk(text: str) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def _text(chunks: list) -> str:  # type: ignore[type-arg]
    return "".join(c.data["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.data.get("choices"))


def _fails_with(reader: object, data: bytes) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        reader.feed(data)  # type: ignore[attr-defined]
    return info.value


def test_openai_error_event_keeps_the_chunks_before_it() -> None:
    data = _sse(_openai_chunk("one "), _openai_chunk("two "), {"error": {"message": "boom", "code": 503}})
    error = _fails_with(OpenAIStreamReader(drop_usage_chunk=True), data)
    assert _text(list(error.partial)) == "one two "


def test_sglang_abort_chunk_keeps_the_chunks_before_it() -> None:
    aborted = _openai_chunk("")
    aborted["choices"][0]["finish_reason"] = "abort"
    error = _fails_with(OpenAIStreamReader(drop_usage_chunk=True), _sse(_openai_chunk("kept"), aborted))
    assert _text(list(error.partial)) == "kept"


def test_an_error_first_has_nothing_partial() -> None:
    error = _fails_with(OpenAIStreamReader(drop_usage_chunk=True), _sse({"error": {"message": "boom"}}))
    assert not error.partial


def test_anthropic_error_event_keeps_the_chunks_before_it() -> None:
    data = _sse({"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 3}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "one "}},
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "two"}},
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, named=True)
    error = _fails_with(AnthropicStreamReader(include_usage=False, native=False, model="m"), data)
    assert _text(list(error.partial)) == "one two"


def test_gemini_error_keeps_the_chunks_before_it() -> None:
    def part(text: str) -> dict:
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}]}
    data = _sse(part("one "), part("two"), {"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}})
    reader = GeminiStreamReader(GeminiToOpenAI(model="m", created=1, include_usage=False))
    error = _fails_with(reader, data)
    assert _text(list(error.partial)) == "one two"


def test_responses_error_event_keeps_the_chunks_before_it() -> None:
    data = _sse({"type": "response.created", "response": {"id": "resp_1", "model": "m"}},
                {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "one "},
                {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "two"},
                {"type": "error", "code": "server_error", "message": "boom"}, named=True)
    error = _fails_with(ResponsesStreamReader(include_usage=False, classify=in_band_error), data)
    assert _text(list(error.partial)) == "one two"


def test_bedrock_exception_message_keeps_the_chunks_before_it() -> None:
    from sidecar.testing.fake_aws import exception
    from sidecar.testing.fake_bedrock import frames
    from tests.unit.providers.test_bedrock import adapter

    request = ChatRequest("claude", {"model": "claude", "messages": []}, stream=True)
    good = frames([{"pieces": ["one ", "two"]}], "end_turn", {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3})
    data = b"".join(good[:3]) + exception("throttlingException", "Too many requests")
    error = _fails_with(adapter().stream_reader(request), data)
    assert _text(list(error.partial)) == "one two"
