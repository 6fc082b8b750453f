"""Anthropic translation edge cases: what cannot be translated is a 400 naming the field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.core.errors import InvalidRequest
from sidecar.formats import anthropic, anthropic_ingress, common
from sidecar.formats.anthropic_stream import AnthropicToOpenAI, OpenAIToAnthropic, error_event

USER = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **fields}


@pytest.mark.parametrize(("field", "value"), [
    ("n", 2), ("logit_bias", {"1": 2}), ("logprobs", True), ("seed", 7), ("presence_penalty", 0.5),
    ("reasoning_effort", "extreme"), ("x_unknown", 1),
])
def test_untranslatable_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic.to_messages_body(body(**{field: value}), "claude")
    assert caught.value.param == field


def test_reasoning_effort_is_extended_thinking() -> None:
    out = anthropic.to_messages_body(body(reasoning_effort="medium", max_tokens=4000), "claude")
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2048} and out["max_tokens"] == 4000
    small = anthropic.to_messages_body(body(reasoning_effort="high", max_tokens=1500), "claude")
    assert small["thinking"]["budget_tokens"] == 1499  # the budget counts against max_tokens
    assert "thinking" not in anthropic.to_messages_body(body(reasoning_effort="low", max_tokens=512), "claude")
    assert "thinking" not in anthropic.to_messages_body(body(reasoning_effort="minimal"), "claude")
    with pytest.raises(InvalidRequest) as caught:
        anthropic.to_messages_body(body(reasoning_effort="low", temperature=0.3), "claude")
    assert caught.value.param == "temperature"


def test_harmless_defaults_pass() -> None:
    out = anthropic.to_messages_body(body(n=1, logprobs=False, stream=True, stream_options={"include_usage": True}),
                                     "claude")
    assert out["stream"] is True and "n" not in out


def test_max_tokens_defaults() -> None:
    assert anthropic.to_messages_body(body(), "c")["max_tokens"] == common.DEFAULT_MAX_TOKENS
    assert anthropic.to_messages_body(body(), "c", default_max_tokens=8192)["max_tokens"] == 8192
    assert anthropic.to_messages_body(body(max_completion_tokens=5), "c", default_max_tokens=9)["max_tokens"] == 5


def test_json_mode_and_version_without_sampling() -> None:
    out = anthropic.to_messages_body(body(response_format={"type": "json_object"}, temperature=1.5), "c")
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert out["temperature"] == 1.0  # Anthropic's range is 0..1
    assert "temperature" not in anthropic.to_messages_body(body(), "c", version="2026-10-21")
    with pytest.raises(InvalidRequest) as info:  # never a silent loss: the app learns which field
        anthropic.to_messages_body(body(temperature=0.2), "c", version="2026-10-21")
    assert info.value.param == "temperature"


def test_audio_part_and_bad_arguments_are_named() -> None:
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]
    with pytest.raises(InvalidRequest) as caught:
        anthropic.to_messages_body({"model": "m", "messages": audio}, "c")
    assert caught.value.param == "messages[0].content[0]"
    calls = [*USER, {"role": "assistant", "content": None,
                     "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{x"}}]}]
    with pytest.raises(InvalidRequest) as caught:
        anthropic.to_messages_body({"model": "m", "messages": calls}, "c")
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_prefill_refused_when_unsupported() -> None:
    messages = [*USER, {"role": "assistant", "content": "Sure"}]
    with pytest.raises(InvalidRequest):
        anthropic.to_messages_body({"model": "m", "messages": messages}, "c", allow_prefill=False)


def test_stream_error_event_raises() -> None:
    translator = AnthropicToOpenAI(created=0, include_usage=False)
    with pytest.raises(common.StreamErrorEvent) as caught:
        translator.feed(error_event("overloaded_error", "Overloaded"))
    assert caught.value.payload["error"]["type"] == "overloaded_error"


def test_stream_skips_malformed_and_unknown_events() -> None:
    translator = AnthropicToOpenAI(created=0, include_usage=False)
    out = translator.feed(b"event: content_block_delta\ndata: {not json\n\nevent: future_thing\ndata: {}\n\n")
    assert translator.skipped == 1 and all(not t.chunks for t in out)


# ---- ingress ----------------------------------------------------------------------------------------


def ingress(**fields: Any) -> bytes:
    return orjson.dumps({"model": "claude", "max_tokens": 10, "messages": USER, **fields})


@pytest.mark.parametrize(("raw", "param"), [
    (orjson.dumps({"model": "c", "messages": USER}), "max_tokens"),
    (orjson.dumps({"max_tokens": 5, "messages": USER}), "model"),
    (ingress(messages=[]), "messages"),
    (ingress(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (ingress(messages=[{"role": "system", "content": 5}]), "messages.0.content"),
    (ingress(frequency_penalty=1), "frequency_penalty"),
    (ingress(tool_choice={"type": "sometimes"}), "tool_choice"),
    (ingress(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages.0.content.0.type"),
])
def test_ingress_validation_names_the_field(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_ingress.parse_request(raw)
    assert caught.value.param == param


def test_ingress_keeps_source_and_lists_native_only_features() -> None:
    request = anthropic_ingress.parse_request(ingress(container="c1", thinking={"type": "enabled",
                                                                                "budget_tokens": 2048}))
    assert request.source is not None and request.source["thinking"]["budget_tokens"] == 2048
    assert request.native_only == ("container",)
    assert "thinking" not in request.body and request.extras is not None and request.extras.effort == "medium"


def test_ingress_error_body_shape() -> None:
    assert orjson.loads(anthropic_ingress.error_body(529, "busy")) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


def test_openai_to_anthropic_stream_without_chunks_is_still_a_message() -> None:
    translator = OpenAIToAnthropic("m")
    names = [line for line in translator.end().decode().splitlines() if line.startswith("event:")]
    assert names == ["event: message_start", "event: ping", "event: message_delta", "event: message_stop"]
