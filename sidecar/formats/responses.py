"""OpenAI Responses API ingress: a ``POST /v1/responses`` body → canonical (Chat-shaped) request; a chat
completion → the Response object (reference: bedrock-and-responses §B1, §B2, §B4).

The app's body is kept as ``ChatRequest.source``: an OpenAI deployment receives it untouched (it keeps state,
runs built-in tools, returns reasoning items). What only OpenAI can serve — ``previous_response_id``,
``conversation``, ``store: true``, built-in tools, item references, file ids, … — is listed in
``ChatRequest.native_only``; any other upstream refuses it with a 400 naming the field. The stream renderer is
``responses_stream``; OpenAI's own Responses answers are read back by ``responses_upstream``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import ChatRequest, Endpoint, WireFormat
from sidecar.formats.openai import loads_object, usage_from

KNOWN = frozenset({
    "access_programs", "background", "background_options", "context_management", "conversation", "image",
    "include", "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation",
    "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream",
    "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
})
#: Fields copied to the Chat body as they are.
SAME_NAME = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "service_tier",
             "prompt_cache_key", "prompt_cache_retention")
#: Fields only OpenAI's own Responses API can honour, with the value that needs nothing (None: any value needs it).
STATEFUL: dict[str, object] = {"previous_response_id": None, "conversation": None, "prompt": None,
                               "background": False, "store": False, "truncation": "disabled",
                               "context_management": None, "background_options": None, "access_programs": None,
                               "moderation": None, "image": None}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def parse_request(raw: bytes) -> ChatRequest:
    """Bytes from a Responses app → canonical request, or ``InvalidRequest`` naming the field."""
    source = loads_object(raw)
    for name in source:
        if name not in KNOWN:
            raise InvalidRequest(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    model = source.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    stream = source.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    native = [name for name, harmless in STATEFUL.items() if source.get(name) not in (None, harmless)]
    body: dict[str, Any] = {"model": model, "messages": _messages(source, native)}
    for name in SAME_NAME:
        if source.get(name) is not None:
            body[name] = source[name]
    _numbers(source, body)
    _tools(source, body, native)
    _text(source.get("text"), body)
    reasoning = source.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        body["reasoning_effort"] = reasoning["effort"]
    if stream:
        body["stream"], body["stream_options"] = True, {"include_usage": True}  # response.completed has usage
    return ChatRequest(model, body, Endpoint.CHAT, stream, include_usage=stream, wire=WireFormat.RESPONSES,
                       source=source, native_only=tuple(native))


def _numbers(source: dict[str, Any], body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = source.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidRequest(f"'{name}' must be a number", param=name)
    limit = source.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("'max_output_tokens' must be a positive integer", param="max_output_tokens")
        body["max_tokens"] = limit
    if source.get("top_logprobs") is not None:
        body["logprobs"], body["top_logprobs"] = True, source["top_logprobs"]


def _messages(source: dict[str, Any], native: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    instructions = source.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string", param="instructions")
    items = source.get("input")
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'input' must be a string or a non-empty array of items", param="input")
    for i, item in enumerate(items):
        _item(item, f"input[{i}]", out, native)
    if not any(m["role"] != "system" for m in out):
        raise InvalidRequest("'input' has no message to answer", param="input")
    return out


def _item(item: object, where: str, out: list[dict[str, Any]], native: list[str]) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        out.append(_message(item, where, native))
    elif kind == "function_call":
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"'{where}' needs 'call_id' and 'name'", param=where)
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": str(item.get("arguments") or "{}")}}
        if out and out[-1]["role"] == "assistant":  # calls right after a message belong to that turn
            out[-1].setdefault("tool_calls", []).append(call)
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest(f"'{where}.call_id' is required", param=f"{where}.call_id")
        out.append({"role": "tool", "tool_call_id": item["call_id"],
                    "content": _output_text(item.get("output"), f"{where}.output")})
    elif kind == "reasoning":
        return  # reasoning of an earlier turn cannot be replayed to another model (reference §B4)
    elif isinstance(kind, str) and (kind == "item_reference" or kind.endswith(("_call", "_call_output"))
                                    or kind.startswith("mcp_") or kind in ("compaction", "program")):
        native.append(where)  # state or built-in tools: OpenAI's own
    else:
        raise InvalidRequest(f"'{where}.type': unknown input item type '{kind}'", param=f"{where}.type")


def _message(item: dict[str, Any], where: str, native: list[str]) -> dict[str, Any]:
    role, content = item.get("role"), item.get("content")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(f"'{where}.role' must be user, assistant, system or developer", param=f"{where}.role")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array", param=f"{where}.content")
    parts = [_part(p, f"{where}.content[{j}]", native) for j, p in enumerate(content)]
    parts = [p for p in parts if p is not None]
    if role == "assistant":
        refusal = "".join(p.get("refusal", "") for p in parts)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(p.get("text", "") for p in parts)}
        if refusal:
            message["refusal"] = refusal
        return message
    if role != "user" or all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _part(part: object, at: str, native: list[str]) -> dict[str, Any] | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _string(part, "text", at)}  # type: ignore[arg-type]
    if kind == "refusal":
        return {"type": "refusal", "refusal": _string(part, "refusal", at)}  # type: ignore[arg-type]
    if kind == "input_image":
        url = part.get("image_url")  # type: ignore[union-attr]
        if not isinstance(url, str) or not url:
            native.append(at)  # a file id: only OpenAI can look it up
            return None
        return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}}  # type: ignore[union-attr]
    if kind == "input_file":
        data = part.get("file_data")  # type: ignore[union-attr]
        if not isinstance(data, str):
            native.append(at)  # a file id or URL
            return None
        if not data.startswith("data:"):
            data = f"data:application/pdf;base64,{data}"
        return {"type": "file", "file": {"file_data": data, "filename": part.get("filename") or "file"}}  # type: ignore[union-attr]
    raise InvalidRequest(f"'{at}.type': unknown content part type '{kind}'", param=f"{at}.type")


def _string(part: dict[str, Any], field: str, at: str) -> str:
    """A part's text, which must be a string (not stringified: that would change what was said)."""
    value = part.get(field)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{at}.{field}' must be a string", param=f"{at}.{field}")
    return value


def _output_text(output: object, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for k, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                raise InvalidRequest(f"'{where}[{k}]': only text can go back as a tool result to this upstream",
                                     param=f"{where}[{k}]")
            texts.append(_string(part, "text", f"{where}[{k}]"))
        return "".join(texts)
    raise InvalidRequest(f"'{where}' must be a string or an array of parts", param=where)


def _tools(source: dict[str, Any], body: dict[str, Any], native: list[str]) -> None:
    tools = source.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    functions = []
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            native.append(f"tools[{i}]")  # web search, file search, MCP, custom tools, …: OpenAI runs them
            continue
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"'tools[{i}].name' is required", param=f"tools[{i}].name")
        function = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        functions.append({"type": "function", "function": function})
    if functions:
        body["tools"] = functions
    choice = source.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        if choice is not None:
            body["tool_choice"] = choice
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):  # type: ignore[union-attr]
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}  # type: ignore[index]
    elif kind == "allowed_tools" and all(t.get("type") == "function" for t in choice.get("tools") or ()):  # type: ignore[union-attr]
        body["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {
            "mode": choice.get("mode", "auto"),  # type: ignore[union-attr]
            "tools": [{"type": "function", "function": {"name": t.get("name")}} for t in choice["tools"]]}}  # type: ignore[index]
    elif isinstance(kind, str):
        native.append("tool_choice")
    else:
        raise InvalidRequest("'tool_choice' must be auto, none, required or an object with a type",
                             param="tool_choice")


def _text(text: object, body: dict[str, Any]) -> None:
    if not isinstance(text, dict):
        return
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}  # type: ignore[index]
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind not in (None, "text"):
        raise InvalidRequest(f"'text.format.type' '{kind}' is not a known format", param="text.format.type")
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]


# ---- the Response object ----------------------------------------------------------------------------


def skeleton(source: dict[str, Any], id_: str, created_at: int, model: str) -> dict[str, Any]:
    """The Response object without its outcome (status, output, usage): what the request set, echoed."""
    reasoning = source.get("reasoning") if isinstance(source.get("reasoning"), dict) else {}
    return {
        "id": id_, "object": "response", "created_at": created_at, "status": "in_progress", "background": False,
        "error": None, "incomplete_details": None, "instructions": source.get("instructions"),
        "max_output_tokens": source.get("max_output_tokens"), "max_tool_calls": source.get("max_tool_calls"),
        "model": model, "output": [], "parallel_tool_calls": source.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": source.get("service_tier") or "default", "store": False,
        "temperature": source.get("temperature", 1.0), "text": source.get("text") or {"format": {"type": "text"}},
        "tool_choice": source.get("tool_choice", "auto"), "tools": source.get("tools") or [],
        "top_p": source.get("top_p", 1.0), "truncation": "disabled", "usage": None, "user": source.get("user"),
        "metadata": source.get("metadata") or {},
    }


def usage_of(usage: object) -> dict[str, Any] | None:
    """Chat usage → Responses usage (both details objects are required by the SDK)."""
    if not isinstance(usage, dict):
        return None
    counted = usage_from(usage)
    assert counted is not None
    prompt_details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) \
        else {}
    output_details = usage.get("completion_tokens_details") \
        if isinstance(usage.get("completion_tokens_details"), dict) else {}
    return {"input_tokens": counted.prompt_tokens,
            "input_tokens_details": {"cached_tokens": counted.cached_tokens,
                                     "cache_write_tokens": int(prompt_details.get("cache_write_tokens") or 0)},
            "output_tokens": counted.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": int(output_details.get("reasoning_tokens") or 0)},
            "total_tokens": counted.total_tokens}


def finish(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """Status and ``incomplete_details`` from the Chat finish reason: a cut answer is ``incomplete``."""
    reason = INCOMPLETE.get(str(finish_reason))
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    return response


def message_item(id_: str, text: str, refusal: str | None = None, status: str = "completed") -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": id_, "role": "assistant", "status": status, "content": content}


def call_item(id_: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": id_, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def reasoning_item(id_: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": id_, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def to_response(data: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """A chat completion → the Response object the app asked for."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(reasoning_item(new_id("rs_"), str(message["reasoning_content"])))
    if message.get("content") or message.get("refusal") or not message.get("tool_calls"):
        output.append(message_item(new_id("msg_"), str(message.get("content") or ""), message.get("refusal")))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(call_item(new_id("fc_"), str(call.get("id")), str(function.get("name")),
                                str(function.get("arguments") or "")))
    response = skeleton(source, new_id("resp_"), int(data.get("created") or 0) or int(time.time()),
                        str(data.get("model") or source.get("model")))
    response.update(output=output, usage=usage_of(data.get("usage")))
    return finish(response, choice.get("finish_reason"))


def failed(response: dict[str, Any], status: int, message: str) -> dict[str, Any]:
    """A Response that ended in an upstream failure (``response.failed``)."""
    code = "rate_limit_exceeded" if status == 429 else "invalid_prompt" if status == 400 else "server_error"
    response.update(status="failed", error={"code": code, "message": message})
    return response


def error_event_data(sequence: int, type_: str, code: str | None, message: str) -> dict[str, Any]:
    """The ``error`` event in both shapes clients read: flat (the SDK's type) and nested (what OpenAI sends)."""
    return {"type": "error", "sequence_number": sequence, "code": code or type_, "message": message, "param": None,
            "error": {"type": type_, "code": code or type_, "message": message, "param": None}}
