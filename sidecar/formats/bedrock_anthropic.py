"""Anthropic Messages apps in front of Bedrock, with no OpenAI round trip (reference §A7, Anthropic ↔ Converse).

Claude on Bedrock is Claude: thinking blocks with their signatures, documents, ``cache_control`` breakpoints
(Converse ``cachePoint``), ``stop_sequence`` and cache usage all survive, which the OpenAI-shaped canonical
request cannot carry. ``messages_to_converse`` builds the Converse body from the app's own body;
``converse_to_message`` and ``ConverseToAnthropic`` turn Converse answers and stream events into Messages
JSON and SSE events, for ``ChatResponse.native`` / ``StreamChunk.native``. Anthropic-API-only features
(server tools, MCP servers, containers, …) are a 400 naming them.

Claude Code's requests (``converse_request``): Claude on Bedrock takes ``thinking``, ``context_management`` and
the app's beta flags (``anthropic_beta``, as the deployment's policy lets them through) in
``additionalModelRequestFields``, and ``output_config.effort`` as ``outputConfig.effort``; for any other model
on Bedrock they are dropped and named. A ``system`` message among ``messages`` (Converse has no such role) joins
the system prompt; ``max_tokens`` is capped at the deployment's ``max_output_tokens``; a tool result's blocks
other than text and images become text (a ``tool_reference`` by name, any other object as its JSON).
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.formats.anthropic_stream import event as sse_event
from sidecar.formats.bedrock import IMAGE_FORMATS, is_anthropic_model, tool_id

REFUSED = ("container", "mcp_servers", "inference_geo", "speed", "service_tier")
STOP_REASONS = {"guardrail_intervened": "refusal", "content_filtered": "refusal",
                "malformed_model_output": "end_turn", "malformed_tool_use": "end_turn"}
CACHE_POINT = {"cachePoint": {"type": "default"}}


def messages_to_converse(source: dict[str, Any], model_id: str) -> dict[str, Any]:
    """An Anthropic Messages body (as the ingress validated it) → a Converse request."""
    return converse_request(source, model_id)[0]


def converse_request(source: dict[str, Any], model_id: str, *, beta: str | None = None,
                     max_output_tokens: int | None = None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """An Anthropic Messages body → (a Converse request, the app's fields dropped for this model)."""
    for name in REFUSED:
        if source.get(name) is not None:
            raise InvalidRequest(f"'{name}' cannot be translated for Bedrock upstreams", param=name)
    claude = is_anthropic_model(model_id)
    dropped: list[str] = []
    turns = [(i, m) for i, m in enumerate(source["messages"]) if m.get("role") != "system"]
    out: dict[str, Any] = {"messages": [_message(m, f"messages.{i}") for i, m in turns]}
    system = _system(source.get("system"))
    for message in source["messages"]:  # Converse has no system turns: they join the system prompt
        if message.get("role") == "system":
            system += _system(message.get("content"))
    if system:
        out["system"] = system
    out["inferenceConfig"] = _inference(source, max_output_tokens)
    extra: dict[str, Any] = {}
    if source.get("top_k") is not None:
        extra["top_k"] = source["top_k"]
    for name in ("thinking", "context_management"):  # Claude's own; nothing else on Bedrock reads them
        if source.get(name) is not None:
            if claude:
                extra[name] = source[name]
            else:
                dropped.append(name)
    if claude and beta:
        extra["anthropic_beta"] = beta.split(",")
    _tools(source, out, extra)
    if extra:
        out["additionalModelRequestFields"] = extra
    if source.get("stop_sequences") and claude:
        out["additionalModelResponseFieldPaths"] = ["/stop_sequence"]  # which one matched
    _output_config(source.get("output_config"), out, claude, dropped)
    return out, tuple(dropped)


def _inference(source: dict[str, Any], max_output_tokens: int | None) -> dict[str, Any]:
    max_tokens = source["max_tokens"]
    if max_output_tokens is not None and max_tokens > max_output_tokens:
        max_tokens = max_output_tokens
    inference: dict[str, Any] = {"maxTokens": max_tokens}
    for name, key in (("temperature", "temperature"), ("top_p", "topP"), ("stop_sequences", "stopSequences")):
        if source.get(name) is not None:
            inference[key] = source[name]
    return inference


def _cached(block: dict[str, Any], converted: dict[str, Any]) -> list[dict[str, Any]]:
    """A block, followed by a cache point when the app marked it with ``cache_control``."""
    return [converted, CACHE_POINT] if block.get("cache_control") else [converted]


def _system(system: object) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"text": system}] if system else []
    out: list[dict[str, Any]] = []
    for block in system if isinstance(system, list) else ():
        if block.get("text"):
            out += _cached(block, {"text": str(block["text"])})
    return out


def _message(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": [{"text": content}]}
    blocks: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        blocks += _cached(block, _block(block, f"{where}.content.{j}"))
    return {"role": message["role"], "content": blocks}


def _block(block: dict[str, Any], at: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"text": str(block.get("text", ""))}
    if kind == "image":
        return {"image": _image(block.get("source"), at)}
    if kind == "document":
        return {"document": _document(block, at)}
    if kind == "tool_use":
        return {"toolUse": {"toolUseId": tool_id(str(block.get("id"))), "name": str(block.get("name")),
                            "input": block.get("input") if isinstance(block.get("input"), dict) else {}}}
    if kind == "tool_result":
        result: dict[str, Any] = {"toolUseId": tool_id(str(block.get("tool_use_id"))),
                                  "content": _result_content(block.get("content"), at)}
        if block.get("is_error"):
            result["status"] = "error"
        return {"toolResult": result}
    if kind == "thinking":
        text = {"text": str(block.get("thinking", ""))}
        if block.get("signature"):
            text["signature"] = str(block["signature"])
        return {"reasoningContent": {"reasoningText": text}}
    if kind == "redacted_thinking":
        return {"reasoningContent": {"redactedContent": str(block.get("data", ""))}}
    raise InvalidRequest(f"{at}: '{kind}' blocks cannot be translated for Bedrock upstreams", param=at)


def _image(source: object, at: str) -> dict[str, Any]:
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise InvalidRequest(f"{at}.source: Bedrock takes base64 images only", param=f"{at}.source")
    fmt = IMAGE_FORMATS.get(str(source.get("media_type")).lower())
    if fmt is None:
        raise InvalidRequest(f"{at}.source.media_type: Bedrock takes png, jpeg, gif or webp",
                             param=f"{at}.source.media_type")
    return {"format": fmt, "source": {"bytes": str(source.get("data", ""))}}


def _document(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    name = " ".join(str(block.get("title") or "document").split())[:200]
    if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
        document: dict[str, Any] = {"format": "pdf", "name": name, "source": {"bytes": str(source.get("data", ""))}}
    elif source.get("type") == "text":
        document = {"format": "txt", "name": name, "source": {"text": str(source.get("data", ""))}}
    else:
        raise InvalidRequest(f"{at}.source: Bedrock takes base64 PDF or plain-text documents", param=f"{at}.source")
    if isinstance(block.get("citations"), dict):
        document["citations"] = {"enabled": bool(block["citations"].get("enabled"))}
    if block.get("context"):
        document["context"] = str(block["context"])
    return document


def _result_content(content: object, at: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content or " "}]
    out: list[dict[str, Any]] = []
    for k, block in enumerate(content if isinstance(content, list) else ()):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            out.append({"text": str(block.get("text", ""))})  # type: ignore[union-attr]
        elif kind == "image":
            out.append({"image": _image(block.get("source"), f"{at}.content.{k}")})  # type: ignore[union-attr]
        elif kind == "tool_reference" and isinstance(block.get("tool_name"), str):  # type: ignore[union-attr]
            out.append({"text": block["tool_name"]})  # type: ignore[index]
        else:  # any other object, as its JSON: never lost
            out.append({"text": block if isinstance(block, str) else orjson.dumps(block).decode()})
    return out or [{"text": " "}]


def _tools(source: dict[str, Any], out: dict[str, Any], extra: dict[str, Any]) -> None:
    choice = source.get("tool_choice") if isinstance(source.get("tool_choice"), dict) else {}
    if not source.get("tools") or choice.get("type") == "none":
        return
    specs: list[dict[str, Any]] = []
    for i, tool in enumerate(source["tools"]):
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(f"tools.{i}: server tools cannot be translated for Bedrock upstreams",
                                 param=f"tools.{i}")
        spec: dict[str, Any] = {"name": tool["name"], "inputSchema": {"json": tool.get("input_schema") or
                                                                      {"type": "object"}}}
        if tool.get("description"):
            spec["description"] = tool["description"]
        specs += _cached(tool, {"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    kind = choice.get("type")
    if kind == "any":
        config["toolChoice"] = {"any": {}}
    elif kind == "tool":
        config["toolChoice"] = {"tool": {"name": str(choice.get("name"))}}
    out["toolConfig"] = config
    if choice.get("disable_parallel_tool_use"):
        extra["tool_choice"] = {"type": kind or "auto", "disable_parallel_tool_use": True}


def _output_config(config: object, out: dict[str, Any], claude: bool, dropped: list[str]) -> None:
    if not isinstance(config, dict):
        return
    converted: dict[str, Any] = {}
    fmt = config.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        converted["textFormat"] = {"type": "json_schema", "structure": {"jsonSchema": {
            "schema": orjson.dumps(fmt.get("schema") or {}).decode(), "name": "response"}}}
    if config.get("effort") is not None:
        if claude:
            converted["effort"] = config["effort"]
        else:
            dropped.append("output_config.effort")
    if converted:
        out["outputConfig"] = converted


# ---- answers ----------------------------------------------------------------------------------------


def stop_reason(reason: object) -> str:
    return STOP_REASONS.get(str(reason), str(reason or "end_turn"))


def usage(data: object) -> dict[str, int]:
    data = data if isinstance(data, dict) else {}

    def count(name: str) -> int:
        value = data.get(name)  # type: ignore[union-attr]
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return {"input_tokens": count("inputTokens"), "output_tokens": count("outputTokens"),
            "cache_creation_input_tokens": count("cacheWriteInputTokens"),
            "cache_read_input_tokens": count("cacheReadInputTokens")}


def _stop_sequence(fields: object) -> str | None:
    value = fields.get("stop_sequence") if isinstance(fields, dict) else None
    return value if isinstance(value, str) else None


def converse_to_message(data: dict[str, Any], id_: str, model: str) -> dict[str, Any]:
    """A Converse answer → an Anthropic Messages answer (its thinking signatures kept for the next turn)."""
    blocks = []
    for block in ((data.get("output") or {}).get("message") or {}).get("content") or ():
        if "text" in block:
            blocks.append({"type": "text", "text": str(block["text"])})
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            blocks.append({"type": "tool_use", "id": str(use.get("toolUseId")), "name": str(use.get("name")),
                           "input": use.get("input") if isinstance(use.get("input"), dict) else {}})
        elif isinstance(block.get("reasoningContent"), dict):
            reasoning = block["reasoningContent"]
            if isinstance(reasoning.get("reasoningText"), dict):
                text = reasoning["reasoningText"]
                blocks.append({"type": "thinking", "thinking": str(text.get("text", "")),
                               "signature": str(text.get("signature", ""))})
            elif reasoning.get("redactedContent"):
                blocks.append({"type": "redacted_thinking", "data": str(reasoning["redactedContent"])})
    return {"id": id_, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop_reason(data.get("stopReason")),
            "stop_sequence": _stop_sequence(data.get("additionalModelResponseFields")),
            "usage": usage(data.get("usage"))}


class ConverseToAnthropic:
    """ConverseStream events → the exact Messages event sequence (``message_start`` … ``message_stop``).

    Converse sends no ``contentBlockStart`` for text or reasoning blocks: the first delta of a new block index
    opens it. ``message_delta`` (with the final usage) waits for ``metadata``, or ``finish`` if it never comes.
    """

    __slots__ = ("blocks", "ended", "id", "model", "stop", "stop_sequence")

    def __init__(self, *, id_: str, model: str) -> None:
        self.id = id_
        self.model = model
        self.blocks: dict[int, int] = {}  # contentBlockIndex → Anthropic block index (both in order)
        self.stop: str | None = None
        self.stop_sequence: str | None = None
        self.ended = False

    def event(self, kind: str, data: dict[str, Any]) -> bytes:
        if self.ended:
            return b""
        if kind == "messageStart":
            message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                       "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
            return sse_event("message_start", {"message": message})
        if kind == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if not isinstance(use, dict):
                return b""
            block = {"type": "tool_use", "id": str(use.get("toolUseId")), "name": str(use.get("name")), "input": {}}
            return self._open(data, block)
        if kind == "contentBlockDelta":
            return self._delta(data)
        if kind == "contentBlockStop":
            index = self.blocks.get(data.get("contentBlockIndex"))  # type: ignore[arg-type]
            return sse_event("content_block_stop", {"index": index}) if index is not None else b""
        if kind == "messageStop":
            self.stop = stop_reason(data.get("stopReason"))
            self.stop_sequence = _stop_sequence(data.get("additionalModelResponseFields"))
            return b""
        if kind == "metadata":
            return self._end(usage(data.get("usage")))
        return b""

    def finish(self) -> bytes:
        """The closing events when the upstream stopped without ``metadata``."""
        return b"" if self.ended or self.stop is None else self._end(usage(None))

    def _open(self, data: dict[str, Any], block: dict[str, Any]) -> bytes:
        index = self.blocks[data.get("contentBlockIndex")] = len(self.blocks)  # type: ignore[index]
        return sse_event("content_block_start", {"index": index, "content_block": block})

    def _delta(self, data: dict[str, Any]) -> bytes:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        position = data.get("contentBlockIndex")
        opened = b""
        if "text" in delta:
            if position not in self.blocks:
                opened = self._open(data, {"type": "text", "text": ""})
            change: dict[str, Any] = {"type": "text_delta", "text": str(delta["text"])}
        elif isinstance(delta.get("toolUse"), dict):
            change = {"type": "input_json_delta", "partial_json": str(delta["toolUse"].get("input") or "")}
        elif isinstance(delta.get("reasoningContent"), dict):
            reasoning = delta["reasoningContent"]
            if reasoning.get("redactedContent"):  # arrives whole: a block of its own
                return self._open(data, {"type": "redacted_thinking", "data": str(reasoning["redactedContent"])})
            if position not in self.blocks:
                opened = self._open(data, {"type": "thinking", "thinking": "", "signature": ""})
            if "signature" in reasoning:
                change = {"type": "signature_delta", "signature": str(reasoning["signature"])}
            else:
                change = {"type": "thinking_delta", "thinking": str(reasoning.get("text", ""))}
        else:
            return b""
        index = self.blocks.get(position)  # type: ignore[arg-type]
        if index is None:
            return opened
        return opened + sse_event("content_block_delta", {"index": index, "delta": change})

    def _end(self, counts: dict[str, int]) -> bytes:
        self.ended = True
        delta = {"stop_reason": self.stop or "end_turn", "stop_sequence": self.stop_sequence}
        return sse_event("message_delta", {"delta": delta, "usage": counts}) + sse_event("message_stop", {})
