"""OpenAI wire format: request validation, response and stream-chunk reading, error bodies.

Validation checks what the sidecar relies on and what an upstream would reject with a less helpful
message; every other field passes through as the app sent it. Each problem is a 400 naming the field.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import ChatRequest, ChatResponse, Endpoint, StreamChunk, Usage, token_count

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")
MAX_DEPTH = 128  # objects and arrays nested in a request body
ORJSON_MAX_DEPTH = 254  # what orjson.dumps encodes


def parse_request(raw: bytes, endpoint: Endpoint) -> ChatRequest:
    """Bytes from the app → validated canonical request, or ``InvalidRequest`` naming the field."""
    body = loads_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    _VALIDATORS[endpoint](body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    if endpoint is Endpoint.EMBEDDINGS and stream:
        raise InvalidRequest("embeddings cannot be streamed", param="stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        include_usage = options.get("include_usage") is True
    return ChatRequest(model, body, endpoint, stream, include_usage)


def loads_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if len(raw) > 2 * MAX_DEPTH and raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:  # else it cannot be that deep
        _check_depth(body)
    return body


def _check_depth(body: dict[str, Any]) -> None:
    """Refuse a body nested deeper than ``MAX_DEPTH``, naming the first field that is.

    orjson reads 1,024 levels but writes only 254, and every upstream call re-encodes the body (translations
    add a few levels): a deeper body would fail there. The test is orjson's own encoder, with the body
    wrapped so that it fails exactly beyond ``MAX_DEPTH``; only then does a walk find the field.
    """
    wrapped: object = body
    for _ in range(ORJSON_MAX_DEPTH - MAX_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
        return
    except TypeError:  # orjson.JSONEncodeError, or a plain TypeError past its recursion limit
        pass
    stack: list[tuple[object, str, int]] = [(body, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            where = where if len(where) <= 80 else where[:80] + "…"
            raise InvalidRequest(f"'{where}' is nested more than {MAX_DEPTH} levels deep", param=where)
        if isinstance(value, dict):
            stack += [(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()
                      if isinstance(v, dict | list)]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value) if isinstance(v, dict | list)]
    raise InvalidRequest("the request body cannot be encoded again")  # e.g. an integer beyond 64 bits


def _validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        _validate_message(message, f"messages[{i}]")
    _validate_sampling(body)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not _is_list_of(stop, str):
        raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array", param="tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise InvalidRequest("each tool must be an object with a 'type'", param=f"tools[{i}]")
            function = tool.get("function")
            if tool["type"] == "function" and not (
                isinstance(function, dict) and isinstance(function.get("name"), str)
            ):
                raise InvalidRequest("a function tool needs 'function.name'", param=f"tools[{i}].function")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise InvalidRequest("'tool_choice' must be a string or an object", param="tool_choice")
    if body.get("response_format") is not None and not isinstance(body["response_format"], dict):
        raise InvalidRequest("'response_format' must be an object", param="response_format")


def _validate_message(message: object, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a dict or list here is unhashable
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest("each content part must be an object with a 'type'",
                                     param=f"{where}.content[{j}]")
            if part["type"] == "text" and not isinstance(part.get("text"), str):  # read as text everywhere after
                raise InvalidRequest("a text part's 'text' must be a string", param=f"{where}.content[{j}].text")
    elif content is None:
        if role != "assistant":
            raise InvalidRequest(f"'{where}.content' is required", param=f"{where}.content")
    elif not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of parts", param=f"{where}.content")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(f"'{where}.tool_call_id' is required for tool messages",
                             param=f"{where}.tool_call_id")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise InvalidRequest(f"'{where}.tool_calls' must be an array", param=f"{where}.tool_calls")


def _validate_sampling(body: dict[str, Any]) -> None:
    for name in NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidRequest(f"'{name}' must be a number", param=name)
    for name in POSITIVE_INT_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidRequest("'seed' must be an integer", param="seed")


def _validate_completions(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
        raise InvalidRequest("'prompt' is required: a string or a non-empty array", param="prompt")
    _validate_sampling(body)


def _validate_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    valid = (isinstance(value, str) and value) or (
        isinstance(value, list) and value and all(isinstance(v, str | int | list) for v in value)
    )
    if not valid:
        raise InvalidRequest("'input' is required: a non-empty string or array", param="input")


_VALIDATORS: dict[Endpoint, Callable[[dict[str, Any]], None]] = {
    Endpoint.CHAT: _validate_chat,
    Endpoint.COMPLETIONS: _validate_completions,
    Endpoint.EMBEDDINGS: _validate_embeddings,
}


def _is_list_of(value: object, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


# ---- upstream answers --------------------------------------------------------------------------------


def usage_from(data: object) -> Usage | None:
    """OpenAI ``usage`` object → Usage (None when absent or not an object)."""
    if not isinstance(data, dict):
        return None
    details = data.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    prompt = token_count(data.get("prompt_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=token_count(data.get("completion_tokens")),
                 cached_tokens=min(token_count(cached), prompt))


def parse_response(raw: bytes, endpoint: Endpoint) -> ChatResponse:
    """An upstream's 200 body → ChatResponse. ``ValueError`` when it is not a well-formed answer."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"upstream body is not JSON: {exc}") from None
    key = "data" if endpoint is Endpoint.EMBEDDINGS else "choices"
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"upstream body has no '{key}' array")
    return ChatResponse(data, raw, usage_from(data.get("usage")))


def parse_chunk(raw: bytes) -> StreamChunk:
    """One ``data:`` payload of an upstream stream. ``ValueError`` when it is not a JSON object."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"stream event is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("stream event is not a JSON object")
    usage = data.get("usage")
    return StreamChunk(raw, data, usage_from(usage) if usage else None)


NO_CALLS: list[Any] = []


def chunk_aborted(data: dict[str, Any]) -> bool:
    """Whether a stream chunk ends in an ``abort`` finish (SGLang's), in the same pass that checks the parts every
    reader and encoder walks: ``ValueError`` unless ``choices`` is a list of objects, each ``delta`` an object
    whose ``tool_calls`` is a list, and ``usage`` an object (each may be absent)."""
    aborted = False
    choices = data.get("choices")
    if choices is not None:
        if type(choices) is not list:
            raise ValueError("stream event's choices is not a list")
        for choice in choices:
            if type(choice) is not dict:
                raise ValueError("stream event's choice is not an object")
            delta = choice.get("delta")
            if delta is not None and (type(delta) is not dict or type(delta.get("tool_calls") or NO_CALLS) is not list):
                raise ValueError("stream event's delta is not an object with a list of tool calls")
            if choice.get("finish_reason") == "abort":
                aborted = True
    usage = data.get("usage")
    if usage is not None and type(usage) is not dict:
        raise ValueError("stream event's usage is not an object")
    return aborted


def response_bytes(response: ChatResponse) -> bytes:
    """A whole answer as OpenAI JSON: the upstream's own bytes when they already are, else encoded."""
    return response.raw if response.raw is not None else orjson.dumps(response.data)


def error_message_of(data: object) -> str:
    """The human message inside an OpenAI-style (or flat) error body, if any."""
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return data["message"]
    return ""


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def completion_from_text(text: str, model: str, completion_id: str) -> dict[str, Any]:
    """A minimal chat.completion carrying ``text`` (for answers the sidecar makes itself)."""
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def chunks_from_completion(data: dict[str, Any]) -> list[StreamChunk]:
    """A whole chat.completion replayed as stream chunks: role, content, finish."""
    base = {"id": data.get("id", "chatcmpl-sidecar"), "object": "chat.completion.chunk",
            "created": data.get("created", int(time.time())), "model": data.get("model", "")}
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    deltas = [({"role": "assistant", "content": ""}, None)]
    if message.get("content"):
        deltas.append(({"content": message["content"]}, None))
    if message.get("tool_calls"):
        calls = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
        deltas.append(({"tool_calls": calls}, None))
    deltas.append(({}, choice.get("finish_reason") or "stop"))
    out = []
    for delta, finish in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        out.append(StreamChunk(orjson.dumps(chunk), chunk))
    return out
