"""Claude Code's request shape: what the Anthropic ingress keeps aside, and how an OpenAI-format deployment
takes it (effort, dropped server features, max_tokens), the system message in place, tool results as text,
reasoning text as thinking blocks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.core.types import AnthropicExtras
from sidecar.formats import anthropic_ingress
from sidecar.formats.anthropic_extras import extras_of, for_openai
from sidecar.formats.anthropic_stream import OpenAIToAnthropic

USER = [{"role": "user", "content": "hi"}]


def parse(beta: str | None = None, version: str | None = None, **fields: Any):
    body = {"model": "m", "max_tokens": 64000, "messages": USER, **fields}
    return anthropic_ingress.parse_request(orjson.dumps(body), beta, version)


@pytest.mark.parametrize(("fields", "effort", "effort_from", "shown"), [
    ({}, None, (), False),
    ({"thinking": {"type": "disabled"}}, None, (), False),
    ({"thinking": {"type": "adaptive"}}, "high", ("thinking",), True),
    ({"thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "medium"}}, "medium",
     ("thinking", "output_config.effort"), False),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low", ("thinking",), True),
    ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "medium", ("thinking",), True),
    ({"thinking": {"type": "enabled", "budget_tokens": 32000}}, "high", ("thinking",), True),
    ({"output_config": {"effort": "max"}}, "max", ("output_config.effort",), False),
    ({"output_config": {"effort": "bogus"}}, None, (), False),
], ids=["none", "disabled", "adaptive", "omitted", "budget-low", "budget-medium", "budget-high", "effort-only",
        "bad-effort"])
def test_effort_from_thinking_and_output_config(fields, effort, effort_from, shown) -> None:
    extras = extras_of({"messages": USER, **fields}, None, None)
    assert (extras.effort, extras.effort_from, extras.thinking) == (effort, effort_from, shown)


def test_server_features_are_found_wherever_they_are() -> None:
    assert extras_of({"messages": USER}, None, None).left_out == ()
    nested = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]}]
    assert extras_of({"messages": nested}, None, None).left_out == ("cache_control",)
    tools = {"messages": USER, "tools": [{"name": "a", "cache_control": {"type": "ephemeral"}}],
             "context_management": {"edits": []}}
    assert extras_of(tools, "b1", "v").left_out == ("context_management", "cache_control")


def test_for_openai_by_capability() -> None:
    extras = AnthropicExtras(effort="medium", effort_from=("thinking",), left_out=("cache_control",))
    body: dict[str, Any] = {"max_tokens": 64000}
    assert for_openai(body, extras, supports_reasoning=True, max_output_tokens=None) == ("cache_control",)
    assert body == {"max_tokens": 64000, "reasoning_effort": "medium"}
    body = {"max_tokens": 64000}
    assert for_openai(body, extras, supports_reasoning=None, max_output_tokens=4096) == ("cache_control", "thinking")
    assert body == {"max_tokens": 4096}
    body = {"max_tokens": 100}
    assert for_openai(body, AnthropicExtras(), supports_reasoning=False, max_output_tokens=4096) == ()
    assert body == {"max_tokens": 100}


def test_headers_and_server_features_stay_out_of_the_body() -> None:
    request = parse("b1,b2", "2026-10-21", thinking={"type": "adaptive"}, output_config={"effort": "low"},
                    context_management={"edits": []}, cache_control={"type": "ephemeral"})
    assert request.extras is not None
    assert (request.extras.beta, request.extras.version) == ("b1,b2", "2026-10-21")
    assert request.native_only == ()
    for name in ("thinking", "output_config", "context_management", "cache_control", "reasoning_effort"):
        assert name not in request.body
    assert request.source is not None and request.source["context_management"] == {"edits": []}


def test_structured_output_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = parse(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert request.body["response_format"] == {"type": "json_schema",
                                               "json_schema": {"name": "output", "schema": schema}}


def test_a_system_message_among_messages_stays_in_place() -> None:
    messages = [{"role": "user", "content": "a"},
                {"role": "system", "content": [{"type": "text", "text": "env"}, {"type": "text", "text": " info"}]},
                {"role": "assistant", "content": "b"}, {"role": "system", "content": "late"}]
    request = parse(system="top", messages=messages)
    assert request.body["messages"] == [{"role": "system", "content": "top"}, {"role": "user", "content": "a"},
                                        {"role": "system", "content": "env info"},
                                        {"role": "assistant", "content": "b"}, {"role": "system", "content": "late"}]
    assert request.source is not None and request.source["messages"] == messages  # Anthropic gets it as it is


def test_tool_results_of_blocks_and_objects() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    content = [{"type": "text", "text": "line 1"}, image, {"type": "tool_reference", "tool_name": "Later"},
               {"any": "object"}]
    messages = [{"role": "user", "content": "read it"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                                   "input": {"file_path": "/a", "offset": 0}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": content},
                                             {"type": "text", "text": "and?"}]}]
    out = parse(messages=messages).body["messages"]
    assert out[1]["tool_calls"] == [{"id": "toolu_1", "type": "function",
                                     "function": {"name": "Read", "arguments": '{"file_path":"/a","offset":0}'}}]
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1",
                      "content": 'line 1\n[image 1 of this turn]\nLater\n{"any":"object"}'}
    assert out[3] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "and?"}]}


def test_reasoning_content_becomes_thinking_blocks_only_when_asked() -> None:
    data = {"id": "c1", "model": "m", "choices": [{"message": {"role": "assistant", "content": "answer",
                                                              "reasoning_content": "because"},
                                                  "finish_reason": "stop"}]}
    assert [b["type"] for b in anthropic_ingress.to_message(data)["content"]] == ["text"]
    shown = anthropic_ingress.to_message(data, thinking=True)["content"]
    assert shown == [{"type": "thinking", "thinking": "because", "signature": ""}, {"type": "text", "text": "answer"}]


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_streamed_reasoning_is_a_thinking_block_before_the_text(field: str) -> None:
    encoder = OpenAIToAnthropic("m", thinking=True)
    raw = b"".join(encoder.feed({"id": "c", "choices": [{"index": 0, "delta": delta}]}) for delta in (
        {"role": "assistant", "content": ""}, {field: "hmm "}, {field: "yes"}, {"content": "hi"}))
    raw += encoder.end()
    events = _events(raw)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""}]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": "hmm "}, {"type": "thinking_delta", "thinking": "yes"},
                      {"type": "text_delta", "text": "hi"}]
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1]
    plain = _events(OpenAIToAnthropic("m").feed({"choices": [{"index": 0, "delta": {field: "x"}}]}))
    assert all(e["type"] in ("message_start", "ping") for e in plain)
