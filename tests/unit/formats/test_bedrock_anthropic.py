"""Anthropic Messages ↔ Converse without the OpenAI detour: thinking signatures, cache points, documents and tool
results survive; the stream comes back as the exact Messages event sequence."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.core.errors import InvalidRequest
from sidecar.formats.bedrock_anthropic import ConverseToAnthropic, converse_to_message, messages_to_converse

CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"


def test_request_keeps_what_only_claude_has() -> None:
    source = {
        "model": "claude", "max_tokens": 4096, "stop_sequences": ["END"], "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "title": "Q3 report", "source": {"type": "base64", "media_type":
                                                                     "application/pdf", "data": "JVBE"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklG"}},
                {"type": "text", "text": "Summarise"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Hm.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "b64=="},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                          "content": [{"type": "text", "text": "boom"}]}]}]}
    out = messages_to_converse(source, CLAUDE)
    assert out["system"] == [{"text": "Be terse."}, {"cachePoint": {"type": "default"}}]
    assert out["inferenceConfig"] == {"maxTokens": 4096, "stopSequences": ["END"]}
    assert out["additionalModelRequestFields"] == {
        "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}
    assert out["additionalModelResponseFieldPaths"] == ["/stop_sequence"]
    assert out["toolConfig"]["tools"] == [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}},
                                          {"cachePoint": {"type": "default"}}]
    user, assistant, result = out["messages"]
    assert user["content"][0] == {"document": {"format": "pdf", "name": "Q3 report", "source": {"bytes": "JVBE"}}}
    assert user["content"][1] == {"image": {"format": "webp", "source": {"bytes": "UklG"}}}
    assert assistant["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Hm.", "signature": "sig-1"}}},
        {"reasoningContent": {"redactedContent": "b64=="}},
        {"toolUse": {"toolUseId": "toolu_1", "name": "f", "input": {"a": 1}}}]
    assert result["content"] == [{"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "boom"}],
                                                 "status": "error"}}]
    assert orjson.loads(out["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"]) == {"type": "object"}


@pytest.mark.parametrize(("extra", "param"), [
    ({"mcp_servers": [{"type": "url"}]}, "mcp_servers"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}]},
     "messages.0.content.0.source"),
])
def test_anthropic_api_only_features_are_refused(extra: dict[str, Any], param: str) -> None:
    source = {"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], **extra}
    with pytest.raises(InvalidRequest) as caught:
        messages_to_converse(source, CLAUDE)
    assert caught.value.param == param


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            out.append((name.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))))
    return out


def test_stream_becomes_the_messages_event_sequence() -> None:
    renderer = ConverseToAnthropic(id_="msg_1", model="claude")
    raw = b"".join(renderer.event(kind, data) for kind, data in [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hm"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "s"}}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hi"}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "cacheReadInputTokens": 2}})])
    seen = events(raw)
    assert [name for name, _ in seen] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert [d["index"] for n, d in seen if n == "content_block_start"] == [0, 1, 2]
    assert seen[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"input_tokens": 3, "output_tokens": 4, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 2}}
    assert renderer.finish() == b""  # already ended
    cut = ConverseToAnthropic(id_="m", model="c")
    cut.event("messageStop", {"stopReason": "guardrail_intervened"})
    assert events(cut.finish())[0][1]["delta"]["stop_reason"] == "refusal"  # no metadata came: closed anyway


def test_answer_becomes_a_messages_answer() -> None:
    data = {"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Hm.", "signature": "sig"}}}, {"text": "Done"}]}},
        "stopReason": "stop_sequence", "additionalModelResponseFields": {"stop_sequence": "END"},
        "usage": {"inputTokens": 1, "outputTokens": 2, "cacheWriteInputTokens": 5}}
    message = converse_to_message(data, "msg_1", "claude")
    assert message["content"] == [{"type": "thinking", "thinking": "Hm.", "signature": "sig"},
                                  {"type": "text", "text": "Done"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    assert message["usage"]["cache_creation_input_tokens"] == 5
