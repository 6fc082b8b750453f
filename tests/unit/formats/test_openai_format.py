"""OpenAI request validation names the bad field; upstream bodies and chunks are read defensively."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import Endpoint
from sidecar.formats import openai as wire

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def parse(body: object, endpoint: Endpoint = Endpoint.CHAT):  # type: ignore[no-untyped-def]
    return wire.parse_request(orjson.dumps(body), endpoint)


def test_valid_chat_keeps_unknown_fields() -> None:
    request = parse({**CHAT, "stream": True, "stream_options": {"include_usage": True}, "x_vendor": [1]})
    assert request.model == "m" and request.stream and request.include_usage
    assert request.body["x_vendor"] == [1]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": CHAT["messages"]}, "model"),
    ({"model": "", "messages": CHAT["messages"]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({**CHAT, "temperature": True}, "temperature"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "stop": [1]}, "stop"),
    ({**CHAT, "tools": [{"type": "function", "function": {}}]}, "tools[0].function"),
    ({**CHAT, "stream_options": True}, "stream_options"),
    ({**CHAT, "response_format": "json"}, "response_format"),
])
def test_invalid_chat_names_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(body)
    assert info.value.param == param and info.value.status == 400


def test_assistant_with_tool_calls_may_have_null_content() -> None:
    parse({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                 "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]})


def test_embeddings_and_completions() -> None:
    assert parse({"model": "e", "input": ["a", "b"]}, Endpoint.EMBEDDINGS).endpoint is Endpoint.EMBEDDINGS
    with pytest.raises(InvalidRequest, match="input"):
        parse({"model": "e", "input": []}, Endpoint.EMBEDDINGS)
    with pytest.raises(InvalidRequest, match="streamed"):
        parse({"model": "e", "input": "a", "stream": True}, Endpoint.EMBEDDINGS)
    with pytest.raises(InvalidRequest, match="prompt"):
        parse({"model": "c"}, Endpoint.COMPLETIONS)


@given(st.binary(max_size=64))
def test_garbage_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(InvalidRequest):
        wire.parse_request(raw, Endpoint.CHAT)


def test_upstream_body_must_be_an_answer() -> None:
    good = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                  "prompt_tokens_details": {"cached_tokens": 1}}})
    response = wire.parse_response(good, Endpoint.CHAT)
    assert response.raw == good and response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.cached_tokens) == (3, 2, 1)
    for bad in (b"", b"{", b"[]", b'{"choices": null}'):
        with pytest.raises(ValueError):
            wire.parse_response(bad, Endpoint.CHAT)


def test_error_message_of_openai_and_flat_bodies() -> None:
    assert wire.error_message_of({"error": {"message": "nested"}}) == "nested"
    assert wire.error_message_of({"object": "error", "message": "flat"}) == "flat"
    assert wire.error_message_of({"error": "Unauthorized"}) == "Unauthorized"
    assert wire.error_message_of(None) == ""
