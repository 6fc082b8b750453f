"""Responses API ingress, pure parts: request → Chat (reference §B4), Chat answer → Response object, Chat chunks
→ the exact event sequence (§B3), and OpenAI's own Responses stream read back as Chat."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import WireFormat
from sidecar.formats import common, responses
from sidecar.formats.responses_stream import ChatToResponses
from sidecar.formats.responses_upstream import ResponsesToChat, response_to_completion


def parse(**body: Any) -> Any:
    return responses.parse_request(orjson.dumps({"model": "m", "input": "Hi", **body}))


def test_request_mapping() -> None:
    chat = parse(instructions="Be terse.", max_output_tokens=99, temperature=0.3, top_logprobs=2, stream=True,
                 reasoning={"effort": "low", "summary": "auto"}, parallel_tool_calls=False, user="u1",
                 text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True},
                       "verbosity": "low"},
                 tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
                 tool_choice={"type": "function", "name": "f"},
                 input=[{"role": "user", "content": [{"type": "input_text", "text": "Look"},
                                                     {"type": "input_image", "image_url": "https://x/i.png",
                                                      "detail": "low"}]},
                        {"type": "reasoning", "id": "rs_1", "summary": []},
                        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                         "content": [{"type": "output_text", "text": "Calling", "annotations": []}]},
                        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                        {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": "{\"a\":1}"},
                        {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                        {"type": "function_call_output", "call_id": "call_2",
                         "output": [{"type": "input_text", "text": "two"}]}])
    assert chat.wire is WireFormat.RESPONSES and chat.stream and chat.include_usage and chat.native_only == ()
    body = chat.body
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "Look"},
                                     {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "low"}}]},
        {"role": "assistant", "content": "Calling", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"}]
    assert body["max_tokens"] == 99 and body["temperature"] == 0.3 and body["logprobs"] is True
    assert body["reasoning_effort"] == "low" and body["verbosity"] == "low" and body["user"] == "u1"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": True}}
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                               "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["stream_options"] == {"include_usage": True} and body["parallel_tool_calls"] is False


def test_what_only_openai_can_serve_is_native_only() -> None:
    chat = parse(previous_response_id="resp_1", store=True, conversation="conv_1", truncation="auto",
                 tools=[{"type": "web_search"}], input=[{"type": "item_reference", "id": "msg_1"},
                                                        {"role": "user", "content": [
                                                            {"type": "input_file", "file_id": "file-1"}]}])
    assert set(chat.native_only) == {"previous_response_id", "store", "conversation", "truncation", "tools[0]",
                                     "input[0]", "input[1].content[0]"}
    assert parse(store=False, truncation="disabled", background=False).native_only == ()
    error = common.refuse_native_only(parse(previous_response_id="resp_1"), "Anthropic")
    assert error.code == "previous_response_not_found" and error.param == "previous_response_id"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": None}, "model"), ({"input": 3}, "input"), ({"bogus": 1}, "bogus"),
    ({"input": [{"type": "function_call_output"}]}, "input[0].call_id"),
    ({"input": [{"type": "mystery"}]}, "input[0].type"), ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "assistant", "content": [{"type": "refusal", "refusal": None}]}]},
     "input[0].content[0].refusal"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": [1]}]}]},
     "input[0].output[0].text"),
])
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(**body)
    assert caught.value.param == param


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "claude",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                      "prompt_tokens_details": {"cached_tokens": 6}}}


def test_response_object_parses_with_the_sdk() -> None:
    message = {"role": "assistant", "content": "Let me check.", "reasoning_content": "Hmm.",
               "tool_calls": [{"id": "call_1", "type": "function",
                               "function": {"name": "f", "arguments": "{}"}}]}
    source = {"model": "m", "input": "x", "metadata": {"a": "b"}}
    data = responses.to_response(completion(message, "tool_calls"), source)
    parsed = Response.model_validate(data)
    assert [i.type for i in parsed.output] == ["reasoning", "message", "function_call"]
    assert parsed.output_text == "Let me check." and parsed.status == "completed" and parsed.metadata == {"a": "b"}
    assert parsed.usage is not None and parsed.usage.input_tokens_details.cached_tokens == 6
    cut = responses.to_response(completion({"role": "assistant", "content": "Trunc"}, "length"), {"model": "m"})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> dict[
        str, Any]:
    data: dict[str, Any] = {"id": "c", "model": "claude", "created": 5,
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        data["usage"] = usage
    return data


def events_of(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if block]


def test_stream_sequence_text_then_tool_call() -> None:
    """The canonical order of §B3, checked event by event."""
    renderer = ChatToResponses({"model": "m", "input": "x"})
    raw = b"".join(renderer.feed(c) for c in [
        chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Hm"}), chunk({"content": "Let "}),
        chunk({"content": "me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f",
                                                                                          "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"), chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})])
    raw += renderer.end()
    events = events_of(raw)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e.get("output_index") for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2]
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Let me check." and final.usage is not None and final.usage.total_tokens == 5
    call = final.output[2]
    assert call.type == "function_call" and call.arguments == "{\"a\":1}" and call.call_id == "call_1"
    assert events[-1]["response"]["id"] == events[0]["response"]["id"]


def test_stream_incomplete_and_failed() -> None:
    renderer = ChatToResponses({"model": "m"})
    raw = renderer.feed(chunk({"content": "Cut"})) + renderer.feed(chunk({}, "length")) + renderer.end()
    final = events_of(raw)[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    renderer = ChatToResponses({"model": "m"})
    raw = renderer.feed(chunk({"content": "Half"})) + renderer.fail(502, "api_error", None, "the upstream broke")
    error, failed = events_of(raw)[-2:]
    assert error["type"] == "error" and error["error"]["message"] == error["message"] == "the upstream broke"
    assert failed["type"] == "response.failed" and failed["response"]["error"]["code"] == "server_error"
    assert renderer.end() == b""


def test_a_passthrough_stream_is_followed_and_can_be_continued() -> None:
    upstream = ChatToResponses({"model": "m"})  # stands for OpenAI's own events
    native = upstream.feed(chunk({"content": "The quick "}))
    follower = ChatToResponses({"model": "m"})
    for event in events_of(native):
        follower.observe(event)
    continued = follower.feed(chunk({"content": "brown fox"})) + follower.feed(chunk({}, "stop")) + follower.end()
    events = events_of(native + continued)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "The quick brown fox" and len(final.output) == 1
    assert final.id == events[0]["response"]["id"]


def test_openai_responses_read_back_as_chat() -> None:
    renderer = ChatToResponses({"model": "m"})
    raw = b"".join(renderer.feed(c) for c in [
        chunk({"content": "Hi"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2,
                                                    "total_tokens": 5})]) + renderer.end()
    reader = ResponsesToChat(include_usage=True)
    translated = reader.feed(raw[:37]) + reader.feed(raw[37:])
    chunks = [c for t in translated for c in t.chunks]
    assert reader.done and reader.usage is not None and reader.usage.total_tokens == 5
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hi"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    completed = events_of(raw)[-1]["response"]
    assert response_to_completion(completed)["choices"][0]["message"]["tool_calls"][0]["id"] == "call_9"
    with pytest.raises(common.StreamErrorEvent):
        ResponsesToChat(include_usage=False).feed(b'event: error\ndata: {"type":"error","error":{"code":"x"}}\n\n')
