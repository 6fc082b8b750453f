"""Bedrock Converse translation: OpenAI request → Converse body, Converse answer and stream events → OpenAI,
and what cannot be translated refused with a 400 naming the field."""

from __future__ import annotations

import orjson
import pytest

from sidecar.core.errors import InvalidRequest
from sidecar.formats import bedrock
from sidecar.formats.bedrock_stream import ConverseToOpenAI

CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": {"type": "object"}, "strict": True}}]


def converse(**body: object) -> dict[str, object]:
    return bedrock.to_converse({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}, CLAUDE)


def test_request_translation() -> None:
    body = {"model": "m", "max_tokens": 512, "temperature": 1.7, "top_p": 0.9, "stop": ["END", ""], "top_k": 40,
            "tools": WEATHER, "tool_choice": "auto", "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"},
                                             {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_Qx1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_Qx1", "content": "3°C"},
                {"role": "user", "content": "Thanks"}]}
    out = bedrock.to_converse(body, CLAUDE)
    assert out["system"] == [{"text": "Be terse."}, {"text": "No emoji."}]
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Oslo?"},
                                     {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "call_Qx1", "name": "get_weather",
                                                       "input": {"city": "Oslo"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_Qx1", "content": [{"text": "3°C"}]}},
                                     {"text": "Thanks"}]}]
    assert out["inferenceConfig"] == {"maxTokens": 512, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]}
    assert out["toolConfig"] == {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
        "type": "object"}}, "description": "Weather", "strict": True}}]}
    assert out["additionalModelRequestFields"] == {"top_k": 40}
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}  # never mutated


def test_tool_choice_response_format_and_reasoning() -> None:
    assert converse(tools=WEATHER, tool_choice="required")["toolConfig"]["toolChoice"] == {"any": {}}  # type: ignore[index]
    named = converse(tools=WEATHER, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}  # type: ignore[index]
    assert "toolConfig" not in converse(tools=WEATHER, tool_choice="none")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = converse(response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}})
    structure = out["outputConfig"]["textFormat"]["structure"]["jsonSchema"]  # type: ignore[index]
    assert orjson.loads(structure["schema"]) == schema and structure["name"] == "thing"
    thinking = converse(reasoning_effort="high", max_tokens=3000)
    assert thinking["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2999}}
    with pytest.raises(InvalidRequest) as caught:  # as OpenAI's reasoning models, thinking takes no temperature
        converse(reasoning_effort="high", temperature=0.2)
    assert caught.value.param == "temperature"
    assert "additionalModelRequestFields" not in converse(reasoning_effort="minimal")
    parallel = converse(tools=WEATHER, parallel_tool_calls=False)
    assert parallel["additionalModelRequestFields"]["tool_choice"]["disable_parallel_tool_use"] is True  # type: ignore[index]


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"), ({"logit_bias": {"1": 2}}, "logit_bias"), ({"seed": 3}, "seed"), ({"foo": 1}, "foo"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/tiff;base64,AA=="}}]}]}, "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}], "tools": WEATHER, "tool_choice": "none"},
     "tool_choice"),
])
def test_untranslatable_is_a_400_naming_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        bedrock.to_converse({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}, CLAUDE)
    assert caught.value.param == param


def test_reasoning_effort_and_parallel_calls_need_a_claude_model() -> None:
    for extra in ({"reasoning_effort": "low"}, {"tools": WEATHER, "parallel_tool_calls": False}):
        with pytest.raises(InvalidRequest):
            bedrock.to_converse({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **extra},
                                "amazon.nova-lite-v1:0")


def test_documents_and_odd_tool_ids() -> None:
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "Q3 report!.pdf"}}
    out = converse(messages=[{"role": "user", "content": [pdf, {"type": "text", "text": "Summarise"}]}])
    document = out["messages"][0]["content"][0]["document"]  # type: ignore[index]
    assert document == {"format": "pdf", "name": "Q3 report pdf", "source": {"bytes": "JVBERi0="}}
    with pytest.raises(InvalidRequest):  # Bedrock needs text next to a document
        converse(messages=[{"role": "user", "content": [pdf]}])
    assert bedrock.tool_id("toolu_01/é") == "toolu_01__" and bedrock.tool_id("call_ok") == "call_ok"


def test_answer_translation_with_cache_usage() -> None:
    data = {"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "sig"}}},
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 45,
                                            "cacheReadInputTokens": 20, "cacheWriteInputTokens": 10},
        "metrics": {"latencyMs": 3}}
    completion = bedrock.to_openai_completion(data, "chatcmpl-1", "claude", 7)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    assert choice["message"]["reasoning_content"] == "Hmm."
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert completion["usage"] == {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45,
                                   "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 10}}
    for reason, finish in (("max_tokens", "length"), ("guardrail_intervened", "content_filter"),
                           ("malformed_model_output", "stop"), ("model_context_window_exceeded", "length")):
        assert bedrock.finish_reason(reason) == finish
    with pytest.raises(ValueError, match="output"):
        bedrock.to_openai_completion({"stopReason": "end_turn"}, "x", "m", 0)


def test_stream_events_become_openai_chunks() -> None:
    translator = ConverseToOpenAI(id_="chatcmpl-1", model="claude", created=1, include_usage=True)
    events = [("messageStart", {"role": "assistant"}),
              ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "abc"}),
              ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
              ("contentBlockStop", {"contentBlockIndex": 0}),
              ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a"'}}}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ":1}"}}}),
              ("contentBlockStop", {"contentBlockIndex": 1}),
              ("messageStop", {"stopReason": "tool_use"}),
              ("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}})]
    chunks = [c for kind, data in events for c in translator.event(kind, data)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas[1:]) == "Hello"
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    assert calls[0] == {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"a":1}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assert translator.done and translator.usage is not None and translator.usage.prompt_tokens == 3
    assert translator.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "late"}}) == []
