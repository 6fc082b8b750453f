"""Gemini translation edge cases."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.errors import InvalidRequest
from sidecar.formats import common, gemini

USER = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **fields}


@pytest.mark.parametrize(("field", "value"), [
    ("logit_bias", {"1": 1}), ("parallel_tool_calls", False), ("n", 3), ("user", "u"), ("x_unknown", 1),
])
def test_untranslatable_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        gemini.to_generate_body(body(**{field: value}))
    assert caught.value.param == field


def test_json_modes_and_named_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    out = gemini.to_generate_body(body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}, tools=tools,
        tool_choice={"type": "function", "function": {"name": "f"}}, seed=3))
    assert out["generationConfig"] == {"responseMimeType": "application/json",
                                       "responseJsonSchema": {"type": "object"}, "seed": 3}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}


def test_tool_result_without_a_call_is_named() -> None:
    messages = [*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]
    with pytest.raises(InvalidRequest) as caught:
        gemini.to_generate_body({"model": "m", "messages": messages})
    assert caught.value.param == "messages[1].tool_call_id"


def test_synthesised_ids_round_trip_without_being_sent() -> None:
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_gemini_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_gemini_0", "content": "ok"}]
    out = gemini.to_generate_body({"model": "m", "messages": messages})
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}}]
    assert out["contents"][2]["parts"] == [{"functionResponse": {"name": "f", "response": {"output": "ok"}}}]


def test_prompt_blocked_is_content_filter() -> None:
    data = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    out = gemini.to_openai_completion(data, "g", 0)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    translator = gemini.GeminiToOpenAI(model="g", created=0, include_usage=False)
    chunks = translator.feed(b'data: {"promptFeedback": {"blockReason": "SAFETY"}}\n\n')
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter" and translator.done


@pytest.mark.parametrize(("reason", "finish"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                                                 ("OTHER", "stop"), ("STOP", "stop")])
def test_finish_reasons(reason: str, finish: str) -> None:
    data = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    assert gemini.to_openai_completion(data, "g", 0)["choices"][0]["finish_reason"] == finish


def test_stream_error_chunk_raises() -> None:
    translator = gemini.GeminiToOpenAI(model="g", created=0, include_usage=False)
    with pytest.raises(common.StreamErrorEvent):
        translator.feed(b'data: {"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}\n\n')


def test_reasoning_effort_is_a_thinking_budget() -> None:
    def config(effort: str) -> Any:
        body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": effort}
        return gemini.to_generate_body(body)["generationConfig"]["thinkingConfig"]

    assert config("low") == {"thinkingBudget": 1024} and config("none") == {"thinkingBudget": 0}
    with pytest.raises(InvalidRequest):
        config("extreme")
