"""Anthropic Messages ingress: an Anthropic app's request → canonical request; OpenAI answers → Messages.

The app's body is kept as ``ChatRequest.source`` so an Anthropic upstream receives it unchanged. Features
with no OpenAI counterpart (documents, server tools, containers, …) are listed in ``ChatRequest.native_only``:
an Anthropic upstream serves them, any other upstream refuses with a 400 naming the field. What Claude Code
sends on every request — ``thinking``, ``output_config.effort``, ``context_management``, ``cache_control`` — and
the app's ``anthropic-beta``/``anthropic-version`` headers go to ``ChatRequest.extras`` (``anthropic_extras``):
each deployment takes what it can. As lenient as Anthropic itself: a ``system`` message among ``messages``
(Claude Code sends one) becomes an OpenAI system message in place.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import ChatRequest, Endpoint, WireFormat
from sidecar.formats import common
from sidecar.formats.anthropic_extras import extras_of
from sidecar.formats.anthropic_stream import FINISH_TO_STOP, reasoning_of
from sidecar.formats.openai import loads_object, usage_from

NATIVE_ONLY = ("container", "mcp_servers", "inference_geo", "speed", "service_tier")
KNOWN = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
                   "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "output_config",
                   "context_management", "cache_control", *NATIVE_ONLY})
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


def parse_request(raw: bytes, beta: str | None = None, version: str | None = None) -> ChatRequest:
    """Bytes from an Anthropic app (and its ``anthropic-beta``/``anthropic-version`` headers) → canonical
    request, or ``InvalidRequest`` naming the field."""
    source = loads_object(raw)
    for name in source:
        if name not in KNOWN:
            raise InvalidRequest(f"{name}: Extra inputs are not permitted", param=name)
    model = source.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required", param="model")
    max_tokens = source.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens: a positive integer is required", param="max_tokens")
    stream = source.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean", param="stream")
    native: list[str] = [name for name in NATIVE_ONLY if source.get(name) is not None]
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                            "messages": _system(source.get("system")) + _messages(source.get("messages"), native)}
    for name in ("temperature", "top_p", "top_k"):
        value = source.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"{name}: must be a number", param=name)
            body[name] = value
    stops = source.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("stop_sequences: must be an array of strings", param="stop_sequences")
        body["stop"] = stops
    _tools(source, body, native)
    _output_format(source.get("output_config"), body)
    metadata = source.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # message_delta reports output tokens
    return ChatRequest(model, body, Endpoint.CHAT, stream, include_usage=stream, wire=WireFormat.ANTHROPIC,
                       source=source, native_only=tuple(native), extras=extras_of(source, beta, version))


def _output_format(config: object, body: dict[str, Any]) -> None:
    """``output_config.format`` (structured output) → ``response_format``; its ``effort`` is in the extras."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise InvalidRequest("output_config: must be an object", param="output_config")
    format_ = config.get("format")
    if isinstance(format_, dict) and format_.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": format_.get("schema") or {}}}


def _system(system: object, where: str = "system") -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return [{"role": "system", "content": "".join(_text(b, f"{where}.{i}") for i, b in enumerate(system))}]
    raise InvalidRequest(f"{where}: must be a string or an array of text blocks", param=where)


def _messages(messages: object, native: list[str]) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: a non-empty array is required", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system"):
            raise InvalidRequest(f"{where}.role: must be 'user', 'assistant' or 'system'", param=f"{where}.role")
        content = message.get("content")
        if message["role"] == "system":  # in place, as an OpenAI system message (Anthropic takes it as it is)
            out += _system(content if content is not None else "", f"{where}.content")
            continue
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"{where}.content: must be a string or an array of blocks",
                                 param=f"{where}.content")
        if message["role"] == "user":
            out += _user(content, where, native)
        else:
            out.append(_assistant(content, where, native))
    return out


def _user(blocks: list[Any], where: str, native: list[str]) -> list[dict[str, Any]]:
    """Tool results become OpenAI ``tool`` messages, placed before the turn's other content; images a tool
    returned (OpenAI tool messages are text) follow in the user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), at)}})
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequest(f"{at}.tool_use_id: Field required", param=f"{at}.tool_use_id")
            text = _tool_result_text(block.get("content"), at, images)
            if block.get("is_error"):
                text = f"[tool error] {text}"  # OpenAI tool messages have no error flag
            tools.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("document", "search_result", "container_upload"):
            native.append(at)
        else:
            raise InvalidRequest(f"{at}.type: unknown content block type '{kind}'", param=f"{at}.type")
    parts = images + parts
    if parts and all(p["type"] == "text" for p in parts):
        return [*tools, {"role": "user", "content": "".join(p["text"] for p in parts)}]
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _image_url(source: object, at: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequest(f"{at}.source: a base64 or url image source is required", param=f"{at}.source")


def _tool_result_text(content: object, at: str, images: list[dict[str, Any]]) -> str:
    """A tool result's content as the tool message's text: text blocks as they are, images moved to
    ``images`` (with a line saying so), a tool reference by its name, any other object as its JSON."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):  # never lost silently: Anthropic itself refuses anything else
        raise InvalidRequest(f"{at}.content: must be a string or an array of content blocks",
                             param=f"{at}.content")
    texts = []
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, f"{at}.content.{k}"))  # type: ignore[arg-type]
        elif kind == "image":
            images.append({"type": "image_url",
                           "image_url": {"url": _image_url(block.get("source"), f"{at}.content.{k}")}})  # type: ignore[union-attr]
            texts.append(f"[image {len(images)} of this turn]")
        elif kind == "tool_reference" and isinstance(block.get("tool_name"), str):  # type: ignore[union-attr]
            texts.append(block["tool_name"])  # type: ignore[index]
        else:
            texts.append(block if isinstance(block, str) else orjson.dumps(block).decode())
    return "\n".join(texts) if len(texts) > 1 else "".join(texts)


def _text(block: dict[str, Any], at: str) -> str:
    """A text block's text, which must be a string (not stringified: that would change what was said)."""
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{at}.text: must be a string", param=f"{at}.text")
    return text


def _assistant(blocks: list[Any], where: str, native: list[str]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise InvalidRequest(f"{at}: tool_use needs 'id' and 'name'", param=at)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signatures cannot be replayed elsewhere (reference §11); Anthropic gets the source
        elif kind in ("server_tool_use", "web_search_tool_result", "document"):
            native.append(at)
        else:
            raise InvalidRequest(f"{at}.type: unknown content block type '{kind}'", param=f"{at}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(source: dict[str, Any], body: dict[str, Any], native: list[str]) -> None:
    tools = source.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("tools: must be an array", param="tools")
        out = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise InvalidRequest(f"tools.{i}.name: Field required", param=f"tools.{i}.name")
            if tool.get("type") not in (None, "custom"):
                native.append(f"tools.{i}")  # a server tool (web search, code execution, …)
                continue
            function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            out.append({"type": "function", "function": function})
        if out:
            body["tools"] = out
    choice = source.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif mapped is not None:
        body["tool_choice"] = mapped
    else:
        raise InvalidRequest("tool_choice: type must be auto, any, tool or none", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


# ---- answers back to the app ------------------------------------------------------------------------


def to_message(data: dict[str, Any], thinking: bool = False) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` → an Anthropic Messages answer; with ``thinking`` (the app asked to see
    it), the upstream's reasoning text comes first as a ``thinking`` block."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    if thinking and reasoning_of(message):
        content.append({"type": "thinking", "thinking": reasoning_of(message), "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = common.tool_arguments(function.get("arguments"), "tool_calls.function.arguments")
        except InvalidRequest:
            arguments = {"arguments": function.get("arguments")}  # keep what the model wrote, unparsed
        content.append({"type": "tool_use", "id": str(call.get("id")), "name": str(function.get("name")),
                        "input": arguments})
    usage = usage_from(data.get("usage"))
    id_ = str(data.get("id") or "msg")
    return {
        "id": id_ if id_.startswith("msg") else f"msg_{id_}", "type": "message", "role": "assistant",
        "model": str(data.get("model") or ""), "content": content,
        "stop_reason": FINISH_TO_STOP.get(str(choice.get("finish_reason")), "end_turn"), "stop_sequence": None,
        "usage": {"input_tokens": usage.prompt_tokens - usage.cached_tokens if usage else 0,
                  "output_tokens": usage.completion_tokens if usage else 0,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": usage.cached_tokens if usage else 0},
    }


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error")


def error_body(status: int, message: str) -> bytes:
    """Anthropic's error shape: ``{"type":"error","error":{"type","message"}}``."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})
