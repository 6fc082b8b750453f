"""AWS Bedrock Converse egress: canonical (OpenAI-shaped) request → Converse body; Converse answer → OpenAI.

The stream translators live in ``bedrock_stream``; Anthropic Messages apps in front of Bedrock (near 1:1, no
OpenAI round trip) in ``bedrock_anthropic``. A field Converse has no counterpart for is a 400 naming it
(reference: bedrock-and-responses §A7), never dropped.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import Usage, token_count
from sidecar.formats import common

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}
UNTRANSLATABLE: dict[str, object] = {
    "n": 1, "logit_bias": None, "logprobs": False, "top_logprobs": None, "seed": None, "presence_penalty": None,
    "frequency_penalty": None, "audio": None, "modalities": None, "prediction": None, "web_search_options": None,
    "verbosity": None, "functions": None, "function_call": None,
}
TRANSLATED = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "tools",
                        "tool_choice", "parallel_tool_calls", "response_format", "user", "reasoning_effort"})
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
DOCUMENT_FORMATS = {"application/pdf": "pdf", "text/csv": "csv", "text/html": "html", "text/plain": "txt",
                    "text/markdown": "md", "application/msword": "doc",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
                    "application/vnd.ms-excel": "xls",
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx"}
TOOL_ID = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")
DOCUMENT_NAME = re.compile(r"[^A-Za-z0-9()\[\]\- ]+")


def is_anthropic_model(model_id: str) -> bool:
    """Claude on Bedrock (base ids, inference profiles, foundation-model ARNs) takes Anthropic's extra fields."""
    return "anthropic." in model_id


def to_converse(body: dict[str, Any], model_id: str, *, default_max_tokens: int | None = None) -> dict[str, Any]:
    """The canonical body → a Converse request for ``model_id``. Never mutates ``body``."""
    common.reject(body, UNTRANSLATABLE, "Bedrock")
    for name in body:
        if name not in TRANSLATED and name not in common.HINT_FIELDS and name not in UNTRANSLATABLE:
            raise InvalidRequest(f"'{name}' cannot be translated for Bedrock upstreams", param=name)
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = common.max_tokens_of(body) or default_max_tokens
    if max_tokens:
        inference["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        inference["temperature"] = min(float(body["temperature"]), 1.0)  # Converse takes 0..1
    if body.get("top_p") is not None:
        inference["topP"] = body["top_p"]
    stops = [s for s in common.stop_list(body.get("stop")) if s]
    if stops:
        inference["stopSequences"] = stops
    if inference:
        out["inferenceConfig"] = inference
    extra: dict[str, Any] = {}
    if body.get("top_k") is not None:
        extra["top_k"] = body["top_k"]
    _tools(body, out, extra, model_id, has_tool_history=any("toolUse" in b for m in messages for b in m["content"]))
    _reasoning(body, model_id, extra)
    if extra:
        out["additionalModelRequestFields"] = extra
    _response_format(body.get("response_format"), out)
    return out


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            text = common.text_of(message.get("content"), f"{where}.content")
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            result = {"toolUseId": tool_id(str(message["tool_call_id"])),
                      "content": [{"text": common.text_of(message.get("content"), f"{where}.content") or " "}]}
            blocks, role = [{"toolResult": result}], "user"
        else:
            raise InvalidRequest(f"role '{role}' cannot be translated for Bedrock upstreams", param=f"{where}.role")
        if not blocks:
            raise InvalidRequest(f"'{where}.content' is empty; Bedrock needs text or another block",
                                 param=f"{where}.content")
        common.append_turn(out, role, "content", blocks)
    return system, out


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind, at = part.get("type"), f"{where}[{j}]"
        if kind == "text":
            if str(part.get("text", "")).strip():
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(image_block(part.get("image_url"), f"{at}.image_url"))
        elif kind == "file":
            blocks.append(document_block(part.get("file"), f"{at}.file", len(blocks)))
        elif kind == "input_audio":
            audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
            blocks.append({"audio": {"format": str(audio.get("format") or "wav"),
                                     "source": {"bytes": str(audio.get("data") or "")}}})
        else:
            raise InvalidRequest(f"content part type '{kind}' cannot be translated for Bedrock upstreams", param=at)
    if any("document" in b for b in blocks) and not any("text" in b for b in blocks):
        raise InvalidRequest(f"'{where}': Bedrock needs a text part next to a file", param=where)
    return blocks


def image_block(image: object, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{where}.url' is required", param=f"{where}.url")
    if url.startswith("s3://"):
        fmt = IMAGE_FORMATS.get("image/" + url.rsplit(".", 1)[-1].lower(), "png")
        return {"image": {"format": fmt, "source": {"s3Location": {"uri": url}}}}
    inline = common.parse_data_url(url)
    if inline is None:
        raise InvalidRequest(f"'{where}.url': Bedrock takes images as data URLs or s3:// locations, not links",
                             param=f"{where}.url")
    fmt = IMAGE_FORMATS.get(inline[0].lower())
    if fmt is None:
        raise InvalidRequest(f"'{where}.url': Bedrock takes png, jpeg, gif or webp images, not {inline[0]}",
                             param=f"{where}.url")
    return {"image": {"format": fmt, "source": {"bytes": inline[1]}}}


def document_block(file: object, where: str, position: int) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    inline = common.parse_data_url(data) if isinstance(data, str) else None
    if inline is None:
        raise InvalidRequest(f"'{where}.file_data' must be a base64 data URL for Bedrock", param=f"{where}.file_data")
    fmt = DOCUMENT_FORMATS.get(inline[0].lower())
    if fmt is None:
        raise InvalidRequest(f"'{where}': Bedrock cannot read files of type {inline[0]}", param=where)
    name = DOCUMENT_NAME.sub(" ", str(file.get("filename") or f"document {position + 1}"))  # type: ignore[union-attr]
    return {"document": {"format": fmt, "name": " ".join(name.split())[:200] or "document",
                         "source": {"bytes": inline[1]}}}


def tool_id(value: str) -> str:
    """Bedrock's toolUseId alphabet; ids from elsewhere are rewritten the same way in calls and results."""
    return value if TOOL_ID.match(value) else (re.sub(r"[^a-zA-Z0-9_.:-]", "_", value)[:64] or "tool")


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = common.text_of(message.get("content"), f"{where}.content")
    if text:
        blocks.append({"text": text})
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("a tool call needs 'function.name'", param=f"{where}.tool_calls[{j}]")
        blocks.append({"toolUse": {"toolUseId": tool_id(str(call.get("id") or f"call_{j}")), "name": function["name"],
                                   "input": common.tool_arguments(function.get("arguments"),
                                                                  f"{where}.tool_calls[{j}].function.arguments")}})
    return blocks


def _tools(body: dict[str, Any], out: dict[str, Any], extra: dict[str, Any], model_id: str, *,
           has_tool_history: bool) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice == "none":
        if has_tool_history:  # Converse needs toolConfig then, and has no way to forbid calls
            raise InvalidRequest("tool_choice 'none' cannot be expressed to Bedrock once the conversation has tool "
                                 "calls", param="tool_choice")
        return  # no toolConfig: the model cannot call a tool
    if not tools:
        return
    specs = []
    for i, (name, description, parameters) in enumerate(common.functions(tools, "Bedrock")):
        spec: dict[str, Any] = {"name": name, "inputSchema": {"json": parameters or {"type": "object",
                                                                                     "properties": {}}}}
        if description:
            spec["description"] = description
        if tools[i]["function"].get("strict") is True:
            spec["strict"] = True
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise InvalidRequest("'tool_choice' must name a function", param="tool_choice")
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice not in (None, "auto"):
        raise InvalidRequest(f"'tool_choice' value '{choice}' cannot be translated", param="tool_choice")
    out["toolConfig"] = config
    if body.get("parallel_tool_calls") is False:
        if not is_anthropic_model(model_id):
            raise InvalidRequest("'parallel_tool_calls: false' can be sent to Bedrock only for Claude models",
                                 param="parallel_tool_calls")
        extra["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}


def _reasoning(body: dict[str, Any], model_id: str, extra: dict[str, Any]) -> None:
    """``reasoning_effort`` → Claude's extended thinking; other Bedrock models have no common switch."""
    if body.get("reasoning_effort") in (None, "none", "minimal"):
        return
    if not is_anthropic_model(model_id):
        raise InvalidRequest("reasoning_effort cannot be translated for this Bedrock model", param="reasoning_effort")
    budget = common.thinking_budget(body, "Bedrock")
    if budget is not None:
        extra["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _response_format(fmt: object, out: dict[str, Any]) -> None:
    """JSON mode → Converse structured output (the schema goes as a JSON string)."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] == "json_object":
        schema: object = {"type": "object"}
        name = "json_object"
    elif fmt["type"] == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema, name = spec.get("schema"), str(spec.get("name") or "response")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' is required",
                                 param="response_format.json_schema.schema")
    else:
        raise InvalidRequest(f"response_format '{fmt['type']}' cannot be translated", param="response_format")
    structure = {"jsonSchema": {"schema": orjson.dumps(schema).decode(), "name": name}}
    out["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": structure}}


# ---- answers ----------------------------------------------------------------------------------------


def usage_of(data: object) -> Usage | None:
    """Converse ``usage`` → Usage: ``inputTokens`` excludes cache reads and writes (as LiteLLM reads it)."""
    if not isinstance(data, dict):
        return None
    fresh, read, write = token_count(data.get("inputTokens")), token_count(data.get("cacheReadInputTokens")), \
        token_count(data.get("cacheWriteInputTokens"))
    return Usage(prompt_tokens=fresh + read + write, completion_tokens=token_count(data.get("outputTokens")),
                 cached_tokens=read)


def usage_dict(data: object) -> dict[str, Any] | None:
    """OpenAI ``usage`` from Converse's, cache writes included (``prompt_tokens_details.cache_write_tokens``)."""
    usage = usage_of(data)
    if usage is None:
        return None
    out = common.usage_dict(usage)
    write = token_count(data.get("cacheWriteInputTokens"))  # type: ignore[union-attr]
    if write:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens, "cache_write_tokens": write}
    return out


def finish_reason(stop_reason: object) -> str:
    """Unmapped reasons (``malformed_model_output``, …) read as ``stop``, as LiteLLM does."""
    return STOP_REASONS.get(str(stop_reason), "stop")


def to_openai_completion(data: dict[str, Any], id_: str, model: str, created: int) -> dict[str, Any]:
    """A Converse answer → an OpenAI ``chat.completion``. ``ValueError`` when it is not one."""
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise ValueError("the answer has no 'output.message.content' array")
    texts, thinking, calls = [], [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        if "text" in block:
            texts.append(str(block["text"]))
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append({"id": str(use.get("toolUseId")), "type": "function",
                          "function": {"name": str(use.get("name")),
                                       "arguments": orjson.dumps(use.get("input") or {}).decode()}})
        elif isinstance(block.get("reasoningContent"), dict):
            reasoning = block["reasoningContent"].get("reasoningText")
            if isinstance(reasoning, dict):
                thinking.append(str(reasoning.get("text", "")))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                             "refusal": None}
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    if calls:
        reply["tool_calls"] = calls
    completion = common.completion(id_, model, created, reply, finish_reason(data.get("stopReason")), None)
    usage = usage_dict(data.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion
