"""OpenAI's own Responses answers read back as Chat (reference §B4, "Chat request served by a Responses-only
upstream"), for the router's accounting, progress and continuation while the bytes pass through to the app.

``response_to_completion`` turns a Response object into a chat completion; ``ResponsesToChat`` turns a Responses
event stream into ``chat.completion.chunk`` dicts, keeping each event's bytes for the ingress to forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.core.types import Usage, token_count
from sidecar.formats import common
from sidecar.formats.sse import MAX_EVENT, Event, SSEDecoder

INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def chat_usage(usage: object) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details") if isinstance(usage.get("input_tokens_details"), dict) else {}
    reasoning = usage.get("output_tokens_details") if isinstance(usage.get("output_tokens_details"), dict) else {}
    prompt, completion = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(token_count(details.get("cached_tokens")), prompt)},
            "completion_tokens_details": {"reasoning_tokens": token_count(reasoning.get("reasoning_tokens"))}}


def finish_reason(response: dict[str, Any]) -> str:
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details") if isinstance(response.get("incomplete_details"), dict) else {}
        return INCOMPLETE.get(str(details.get("reason")), "length")
    output = response.get("output") or ()
    return "tool_calls" if any(isinstance(i, dict) and i.get("type") == "function_call" for i in output) else "stop"


def response_to_completion(data: dict[str, Any]) -> dict[str, Any]:
    """A Response object → a chat completion. ``ValueError`` when it is not one."""
    output = data.get("output")
    if data.get("object") != "response" or not isinstance(output, list):
        raise ValueError("the answer is not a Response object")
    texts, refusals, calls = [], [], []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal", "")))
        elif item.get("type") == "function_call":
            calls.append({"id": str(item.get("call_id")), "type": "function",
                          "function": {"name": str(item.get("name")), "arguments": str(item.get("arguments"))}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                               "refusal": "".join(refusals) or None}
    if calls:
        message["tool_calls"] = calls
    completion = common.completion(str(data.get("id")), str(data.get("model") or ""),
                                   int(data.get("created_at") or 0), message, finish_reason(data), None)
    usage = chat_usage(data.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


@dataclass(slots=True)
class Translated:
    """One upstream event (its bytes re-encoded as they came) and the Chat chunks it became."""

    event: Event
    data: dict[str, Any] | None
    chunks: list[dict[str, Any]] = field(default_factory=list)


class ResponsesToChat:
    """A Responses event stream → Chat chunks: text, function calls (numbered in order), finish and usage.

    ``error`` and ``response.failed`` raise ``StreamErrorEvent``; a terminal event sets ``done``.
    """

    def __init__(self, *, include_usage: bool, max_event: int = MAX_EVENT) -> None:
        self.decoder = SSEDecoder(max_event)
        self.include_usage = include_usage
        self.id = "resp"
        self.model = ""
        self.created = 0
        self.usage: Usage | None = None
        self.done = False
        self.skipped = 0
        self.calls: dict[int, int] = {}  # output_index → tool-call index

    def feed(self, data: bytes) -> list[Translated]:
        return common.translate_each(self.decoder.feed(data), self._translate)

    def finish(self) -> list[Translated]:
        return common.translate_each(self.decoder.flush(), self._translate)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return common.chunk(self.id, self.model, self.created, delta, finish)

    def _translate(self, event: Event) -> Translated:
        try:
            data = orjson.loads(event.data) if event.data and event.data != b"[DONE]" else None
        except orjson.JSONDecodeError:
            data = None
        out = Translated(event, data if isinstance(data, dict) else None)
        if out.data is None:
            self.skipped += event.data not in (b"", b"[DONE]")
            return out
        kind = out.data.get("type")
        if kind == "error" or kind == "response.failed":
            error = out.data.get("error") or (out.data.get("response") or {}).get("error") or out.data
            raise common.StreamErrorEvent({"error": error})
        out.chunks = self._chunks(str(kind), out.data)
        return out

    def _chunks(self, kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "response.created" and isinstance(data.get("response"), dict):
            response = data["response"]
            self.id, self.model = str(response.get("id") or self.id), str(response.get("model") or "")
            self.created = int(response.get("created_at") or 0)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "response.output_text.delta":
            return [self._chunk({"content": str(data.get("delta") or "")})]
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return [self._chunk({"reasoning_content": str(data.get("delta") or "")})]
        item = data.get("item") if isinstance(data.get("item"), dict) else {}
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            k = self.calls[int(data.get("output_index") or 0)] = len(self.calls)
            return [self._chunk({"tool_calls": [{"index": k, "id": item.get("call_id"), "type": "function",
                                                 "function": {"name": item.get("name"), "arguments": ""}}]})]
        if kind == "response.function_call_arguments.delta":
            k = self.calls.get(int(data.get("output_index") or 0))
            if k is None or not data.get("delta"):
                return []
            return [self._chunk({"tool_calls": [{"index": k, "function": {"arguments": str(data["delta"])}}]})]
        if kind in TERMINAL and isinstance(data.get("response"), dict):
            return self._end(data["response"])
        return []

    def _end(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        out = [self._chunk({}, finish_reason(response))]
        usage = chat_usage(response.get("usage"))
        if usage is not None:
            self.usage = Usage(usage["prompt_tokens"], usage["completion_tokens"],
                               usage["prompt_tokens_details"]["cached_tokens"])
            if self.include_usage:
                out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "choices": [], "usage": usage})
        return out
