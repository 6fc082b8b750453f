"""Property-based checks: round trips keep text and tool calls; stream translation ignores byte splits."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sidecar.formats import anthropic, anthropic_ingress, gemini
from sidecar.formats.anthropic_stream import AnthropicToOpenAI, OpenAIToAnthropic
from tests.unit.formats.golden import CREATED, raw

texts = st.text(min_size=1, max_size=40)
names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
# Integers within 64 bits: orjson reads a larger one as a float (RFC 8259 §6: numbers beyond what IEEE doubles and
# 64-bit integers hold are not interoperable), so a tool argument of 2**70 comes back from a translation as 1.18e21.
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
arguments = st.dictionaries(names, st.one_of(int64, st.text(max_size=10), st.booleans()), max_size=3)
calls = st.lists(st.tuples(names, arguments), max_size=3)


def completion(text: str | None, tool_calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                  "function": {"name": n, "arguments": json.dumps(a)}}
                                 for i, (n, a) in enumerate(tool_calls)]
    finish = "tool_calls" if tool_calls else "stop"
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}


def essence(data: dict[str, Any]) -> tuple[Any, ...]:
    choice = data["choices"][0]
    message = choice["message"]
    tools = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or ()]
    return message.get("content") or "", tools, choice["finish_reason"], data["usage"]["completion_tokens"]


@given(texts, calls)
def test_openai_anthropic_openai_completion_round_trip(text: str, tool_calls: list[Any]) -> None:
    original = completion(text, tool_calls)
    back = anthropic.to_openai_completion(anthropic_ingress.to_message(original), CREATED)
    assert essence(back) == essence(original)


@given(st.lists(st.one_of(texts.map(lambda t: ("text", t)), st.tuples(names, arguments)), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=9))
def test_openai_chunks_anthropic_events_openai_chunks(items: list[Any], pieces: int) -> None:
    """OpenAI stream → Anthropic events (ingress sink) → OpenAI stream (egress reader) keeps the answer."""
    chunks: list[dict[str, Any]] = []
    text, tools = "", []
    for i, item in enumerate(items):
        if item[0] == "text" and not tools:  # Anthropic blocks: text first, then tool_use
            text += item[1]
            chunks.append({"choices": [{"index": 0, "delta": {"content": item[1]}}]})
        elif item[0] != "text":
            encoded = json.dumps(item[1])
            tools.append((item[0], item[1]))
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": len(tools) - 1, "id": f"call_{i}", "function": {"name": item[0], "arguments": ""}}]}}]})
            size = max(1, len(encoded) // pieces)
            for start in range(0, len(encoded), size):
                chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": len(tools) - 1, "function": {"arguments": encoded[start:start + size]}}]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tools else "stop"}]})
    encoder = OpenAIToAnthropic("m")
    events = b"".join(encoder.feed(c) for c in chunks) + encoder.end()
    reader = AnthropicToOpenAI(created=0, include_usage=False)
    out = [c for t in reader.feed(events) for c in t.chunks]
    assert reader.done
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in out) == text
    arguments_by_call: dict[int, str] = {}
    names_by_call: dict[int, str] = {}
    for c in out:
        for call in c["choices"][0]["delta"].get("tool_calls") or ():
            arguments_by_call[call["index"]] = arguments_by_call.get(call["index"], "") + \
                call["function"]["arguments"]
            if call.get("id"):
                names_by_call[call["index"]] = call["function"]["name"]
    assert [(names_by_call[k], json.loads(v)) for k, v in sorted(arguments_by_call.items())] == tools
    assert out[-1]["choices"][0]["finish_reason"] == ("tool_calls" if tools else "stop")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(st.lists(st.integers(min_value=0), max_size=30))
def test_anthropic_stream_ignores_byte_boundaries(cuts: list[int]) -> None:
    data = raw("anthropic_stream.sse")

    def run(pieces: list[bytes]) -> list[dict[str, Any]]:
        translator = AnthropicToOpenAI(created=CREATED, include_usage=True)
        translated = [t for piece in pieces for t in translator.feed(piece)] + translator.finish()
        return [c for t in translated for c in t.chunks]

    assert run(split(data, cuts)) == run([data])


@given(st.lists(st.integers(min_value=0), max_size=30))
def test_gemini_stream_ignores_byte_boundaries(cuts: list[int]) -> None:
    data = raw("gemini_stream.sse")

    def run(pieces: list[bytes]) -> list[dict[str, Any]]:
        translator = gemini.GeminiToOpenAI(model="g", created=CREATED, include_usage=True)
        return [c for piece in pieces for c in translator.feed(piece)] + translator.finish()

    assert run(split(data, cuts)) == run([data])
