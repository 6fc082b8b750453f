"""Anthropic streams both ways: named Messages events → OpenAI chunks, and OpenAI chunks → Messages events.

Both are incremental and sans-I/O. ``AnthropicToOpenAI`` takes bytes however they were split and keeps
each event's bytes next to its chunks, so a same-dialect app can be served the upstream's events verbatim.
``OpenAIToAnthropic`` renders the exact Messages event sequence (reference §5.4, §10.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.core.types import Usage
from sidecar.formats import common
from sidecar.formats.anthropic import STOP_REASONS, usage_of
from sidecar.formats.openai import usage_from
from sidecar.formats.sse import MAX_EVENT, Event, SSEDecoder, encode_event


@dataclass(slots=True)
class Translated:
    """One upstream event and the OpenAI chunks it became (often none: pings, block stops)."""

    event: Event
    chunks: list[dict[str, Any]] = field(default_factory=list)
    parsed: bool = False  # a JSON object the translator read: only such an event rides along to a native app


class AnthropicToOpenAI:
    """Messages SSE bytes → OpenAI ``chat.completion.chunk`` dicts.

    Tool calls are numbered by ``tool_use`` blocks, not Anthropic block indexes. The finish chunk is sent at
    ``message_delta``; the usage chunk (when ``include_usage``) at ``message_stop``, which sets ``done``.
    An ``error`` event raises ``StreamErrorEvent``; an event that is not JSON is counted in ``skipped``.
    """

    def __init__(self, *, created: int, include_usage: bool, model: str = "", max_event: int = MAX_EVENT) -> None:
        self.decoder = SSEDecoder(max_event)
        self.created = created
        self.include_usage = include_usage
        self.id = "msg"
        self.model = model
        self.usage: Usage | None = None
        self.done = False
        self.skipped = 0
        self._tool_index: dict[int, int] = {}

    def feed(self, data: bytes) -> list[Translated]:
        return common.translate_each(self.decoder.feed(data), self._translate)

    def finish(self) -> list[Translated]:
        return common.translate_each(self.decoder.flush(), self._translate)

    def _translate(self, event: Event) -> Translated:
        out = Translated(event)
        if self.done or not event.data:
            return out
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            self.skipped += 1
            return out
        if not isinstance(data, dict):
            self.skipped += 1
            return out
        out.parsed = True
        kind = event.event or data.get("type")
        if kind == "error":
            raise common.StreamErrorEvent(data)
        handler = _HANDLERS.get(str(kind))
        if handler is not None:
            out.chunks = handler(self, data)
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return common.chunk(self.id, self.model, self.created, delta, finish)

    def _message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        self.id = str(message.get("id") or self.id)
        self.model = str(message.get("model") or self.model)
        self.usage = usage_of(message.get("usage"), self.usage)
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "tool_use":
            k = self._tool_index[_int(data.get("index"))] = len(self._tool_index)
            call = {"index": k, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": str(delta.get("text", ""))})]
        if kind == "input_json_delta":
            k = self._tool_index.get(_int(data.get("index")))
            fragment = str(delta.get("partial_json") or "")
            if k is None or not fragment:
                return []
            return [self._chunk({"tool_calls": [{"index": k, "function": {"arguments": fragment}}]})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": str(delta.get("thinking", ""))})]
        return []  # signature and citation deltas have no OpenAI counterpart

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.usage = usage_of(data.get("usage"), self.usage)
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        reason = delta.get("stop_reason")
        if reason is None:
            return []
        return [self._chunk({}, STOP_REASONS.get(str(reason), "stop"))]

    def _message_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        if self.include_usage and self.usage is not None:
            return [common.usage_chunk(self.id, self.model, self.created, self.usage)]
        return []


_HANDLERS = {
    "message_start": AnthropicToOpenAI._message_start,
    "content_block_start": AnthropicToOpenAI._block_start,
    "content_block_delta": AnthropicToOpenAI._block_delta,
    "message_delta": AnthropicToOpenAI._message_delta,
    "message_stop": AnthropicToOpenAI._message_stop,
}


def _int(value: object) -> int:
    return value if isinstance(value, int) else -1


# ---- OpenAI chunks → Anthropic events ---------------------------------------------------------------

FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "content_filter": "refusal", "function_call": "tool_use"}


def event(name: str, data: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": name, **data}), name)


class OpenAIToAnthropic:
    """OpenAI chunk dicts → Messages SSE bytes, in the exact order the Anthropic SDK expects.

    ``message_delta`` waits for ``end()`` because an OpenAI stream reports usage after its finish chunk.
    With ``thinking`` (the app asked to see it), reasoning text (``reasoning_content`` from SGLang, vLLM,
    DeepSeek; ``reasoning`` from newer vLLM and OpenRouter) becomes ``thinking`` blocks; otherwise it is left out.
    """

    def __init__(self, model: str, thinking: bool = False) -> None:
        self.model = model
        self.thinking = thinking
        self.started = False
        self.block: int | None = None  # index of the open content block
        self.block_kind = ""
        self.next_block = 0
        self.tools: dict[int, int] = {}  # OpenAI tool-call index → Anthropic block index
        self.stop_reason = "end_turn"
        self.usage = Usage()

    def feed(self, data: dict[str, Any]) -> bytes:
        out = [] if self.started else [self._start(data)]
        if isinstance(data.get("usage"), dict):
            self.usage = usage_from(data["usage"]) or self.usage
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if self.thinking:
                reasoning = reasoning_of(delta)
                if reasoning:
                    out.append(self._reasoning(reasoning))
            if delta.get("content"):
                out.append(self._text(str(delta["content"])))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._tool(call))
            if choice.get("finish_reason"):
                self.stop_reason = FINISH_TO_STOP.get(str(choice["finish_reason"]), "end_turn")
        return b"".join(out)

    def end(self) -> bytes:
        out = [] if self.started else [self._start({})]
        out.append(self._close())
        out.append(event("message_delta", {
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": {"input_tokens": self.usage.prompt_tokens - self.usage.cached_tokens,
                      "output_tokens": self.usage.completion_tokens,
                      "cache_read_input_tokens": self.usage.cached_tokens}}))
        out.append(event("message_stop", {}))
        return b"".join(out)

    def _start(self, data: dict[str, Any]) -> bytes:
        self.started = True
        id_ = str(data.get("id") or "msg")
        message = {"id": id_ if id_.startswith("msg") else f"msg_{id_}", "type": "message", "role": "assistant",
                   "model": str(data.get("model") or self.model), "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return event("message_start", {"message": message}) + event("ping", {})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        closed = self._close()
        self.block, self.block_kind = self.next_block, kind
        self.next_block += 1
        return closed + event("content_block_start", {"index": self.block, "content_block": block})

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        index, self.block = self.block, None
        return event("content_block_stop", {"index": index})

    def _text(self, text: str) -> bytes:
        opened = self._open("text", {"type": "text", "text": ""}) if self.block_kind != "text" or \
            self.block is None else b""
        return opened + event("content_block_delta", {"index": self.block,
                                                      "delta": {"type": "text_delta", "text": text}})

    def _reasoning(self, text: str) -> bytes:
        opened = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}) \
            if self.block_kind != "thinking" or self.block is None else b""
        return opened + event("content_block_delta", {"index": self.block,
                                                      "delta": {"type": "thinking_delta", "thinking": text}})

    def _tool(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        opened = b""
        if index not in self.tools:
            opened = self._open("tool_use", {"type": "tool_use", "id": str(call.get("id") or f"toolu_{index}"),
                                             "name": str(function.get("name") or ""), "input": {}})
            self.tools[index] = self.block  # type: ignore[assignment]
        arguments = function.get("arguments")
        if not arguments or self.tools[index] != self.block:
            return opened  # fragments of an already closed block cannot be sent any more
        return opened + event("content_block_delta", {
            "index": self.block, "delta": {"type": "input_json_delta", "partial_json": str(arguments)}})


def reasoning_of(message: dict[str, Any]) -> str:
    """An OpenAI-format message's or delta's reasoning text (``reasoning_content``, or vLLM's ``reasoning``)."""
    text = message.get("reasoning_content") or message.get("reasoning")
    return text if isinstance(text, str) else ""


def error_event(type_: str, message: str) -> bytes:
    return event("error", {"error": {"type": type_, "message": message}})
