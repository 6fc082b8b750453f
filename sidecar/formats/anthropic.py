"""Anthropic Messages egress: canonical (OpenAI-shaped) request → Messages body; Messages answer → OpenAI.

The stream translators live in ``anthropic_stream``; the ingress direction (an Anthropic app in front of any
upstream) in ``anthropic_ingress``. Fields Anthropic has no counterpart for are a 400 naming them, never
dropped silently (provider reference §11).
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import MAX_TOKENS, Usage
from sidecar.formats import common

VERSION = "2023-06-01"
#: ``anthropic-version: 2026-10-21`` removed the sampling controls (reference §5.1).
SAMPLING_FREE_VERSIONS = frozenset({"2026-10-21"})

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                "refusal": "content_filter", "pause_turn": "stop"}
UNTRANSLATABLE: dict[str, object] = {
    "n": 1, "logit_bias": None, "logprobs": False, "top_logprobs": None, "seed": None,
    "presence_penalty": None, "frequency_penalty": None, "audio": None,
    "modalities": None, "prediction": None, "web_search_options": None, "verbosity": None,
    "functions": None, "function_call": None,
}
TRANSLATED = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "tools",
                        "tool_choice", "parallel_tool_calls", "response_format", "user", "reasoning_effort"})


def to_messages_body(body: dict[str, Any], model: str, *, default_max_tokens: int | None = None,
                     version: str = VERSION, allow_prefill: bool = True) -> dict[str, Any]:
    """The canonical body → an Anthropic Messages request for ``model``. Never mutates ``body``."""
    common.reject(body, UNTRANSLATABLE, "Anthropic")
    for name in body:
        if name not in TRANSLATED and name not in common.HINT_FIELDS and name not in UNTRANSLATABLE:
            raise InvalidRequest(f"'{name}' cannot be translated for Anthropic upstreams", param=name)
    system, messages = _messages(body["messages"])
    if messages and messages[-1]["role"] == "assistant" and not allow_prefill:
        raise InvalidRequest("this deployment does not support a trailing assistant message (prefill)",
                             param=f"messages[{len(body['messages']) - 1}]")
    out: dict[str, Any] = {"model": model, "messages": messages,
                           "max_tokens": common.max_tokens_of(body) or default_max_tokens
                           or common.DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is None:
            continue
        if version in SAMPLING_FREE_VERSIONS:
            raise InvalidRequest(f"'{name}' is not accepted by anthropic-version {version}", param=name)
        out[name] = min(float(body[name]), 1.0) if name == "temperature" else body[name]
    stops = common.stop_list(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    _tools(body, out)
    _response_format(body.get("response_format"), out)
    budget = common.thinking_budget(body, "Anthropic")
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return out


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(common.text_of(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": message["tool_call_id"],
                       "content": common.text_of(message.get("content"), f"{where}.content")}]
            role = "user"
        else:
            raise InvalidRequest(f"role '{role}' cannot be translated for Anthropic upstreams",
                                 param=f"{where}.role")
        common.append_turn(out, role, "content", blocks)
    return "\n\n".join(system), out


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(image_block(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            raise InvalidRequest(f"content part type '{kind}' cannot be translated for Anthropic upstreams",
                                 param=f"{where}[{j}]")
    return blocks


def image_block(image: object, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{where}.url' is required", param=f"{where}.url")
    inline = common.parse_data_url(url)
    if inline is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = common.text_of(message.get("content"), f"{where}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("a tool call needs 'function.name'", param=f"{where}.tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": str(call.get("id") or f"toolu_{j}"), "name": function["name"],
                       "input": common.tool_arguments(function.get("arguments"),
                                                      f"{where}.tool_calls[{j}].function.arguments")})
    return blocks


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        definitions = []
        for name, description, parameters in common.functions(tools, "Anthropic"):
            definition = {"name": name, "input_schema": parameters or {"type": "object", "properties": {}}}
            if description:
                definition["description"] = description
            definitions.append(definition)
        out["tools"] = definitions
    choice = body.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise InvalidRequest("'tool_choice' must name a function", param="tool_choice")
        mapped = {"type": "tool", "name": name}
    elif choice is not None:
        raise InvalidRequest(f"'tool_choice' value '{choice}' cannot be translated", param="tool_choice")
    if body.get("parallel_tool_calls") is False and tools:
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    if mapped is not None and (tools or mapped["type"] == "none"):
        out["tool_choice"] = mapped


def _response_format(fmt: object, out: dict[str, Any]) -> None:
    """JSON mode → structured output: ``json_object`` becomes an object schema (reference §10)."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] == "json_object":
        schema: object = {"type": "object"}
    elif fmt["type"] == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' is required",
                                 param="response_format.json_schema.schema")
    else:
        raise InvalidRequest(f"response_format '{fmt['type']}' cannot be translated", param="response_format")
    out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}


# ---- answers ----------------------------------------------------------------------------------------


def usage_of(data: object, previous: Usage | None = None) -> Usage | None:
    """Anthropic ``usage`` → Usage; prompt tokens include cache reads and writes (reference §9).

    ``previous`` supplies the input counts a stream's ``message_delta`` leaves out.
    """
    if not isinstance(data, dict):
        return previous
    base = previous or Usage()

    def count(name: str) -> int | None:
        value = data.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS else None

    fresh, write, read = count("input_tokens"), count("cache_creation_input_tokens"), count("cache_read_input_tokens")
    prompt = base.prompt_tokens
    if fresh is not None or write is not None or read is not None:
        prompt = (fresh or 0) + (write or 0) + (read if read is not None else base.cached_tokens)
    output = count("output_tokens")
    return Usage(prompt_tokens=prompt, completion_tokens=output if output is not None else base.completion_tokens,
                 cached_tokens=read if read is not None else base.cached_tokens)


def to_openai_completion(data: dict[str, Any], created: int) -> dict[str, Any]:
    """A Messages answer → an OpenAI ``chat.completion``. ``ValueError`` when it is not one."""
    content = data.get("content")
    if not isinstance(content, list):
        raise ValueError("the answer has no 'content' array")
    texts, thinking, calls = [], [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                               "refusal": None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    finish = STOP_REASONS.get(str(data.get("stop_reason")), "stop")
    return common.completion(str(data.get("id") or "msg"), str(data.get("model") or ""), created, message,
                             finish, usage_of(data.get("usage")))
