"""ConverseStream events → OpenAI chunks (and, for Anthropic apps, → Messages events: ``bedrock_anthropic``).

The binary ``vnd.amazon.eventstream`` framing is ``formats.eventstream``'s job; what arrives here is
each event's name and its decoded JSON payload (reference §A4). Per-block state is keyed on
``contentBlockIndex``; tool calls are numbered by tool blocks, not block indexes. The finish chunk is sent at
``messageStop``; usage (final) at ``metadata``, which sets ``done``.
"""

from __future__ import annotations

from typing import Any

from sidecar.core.types import Usage
from sidecar.formats import common
from sidecar.formats.bedrock import finish_reason, usage_dict, usage_of


class ConverseToOpenAI:
    """One ConverseStream's events → ``chat.completion.chunk`` dicts."""

    __slots__ = ("created", "done", "id", "include_usage", "model", "skipped", "stopped", "tools", "usage")

    def __init__(self, *, id_: str, model: str, created: int, include_usage: bool) -> None:
        self.id = id_
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.done = False
        self.stopped = False  # messageStop arrived (metadata may still follow)
        self.skipped = 0
        self.tools: dict[int, int] = {}  # contentBlockIndex → OpenAI tool-call index

    def event(self, kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if self.done:
            return []
        handler = _HANDLERS.get(kind)
        return handler(self, data) if handler is not None else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return common.chunk(self.id, self.model, self.created, delta, finish)

    def _message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        start = data.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict):
            return []
        k = self.tools[_int(data.get("contentBlockIndex"))] = len(self.tools)
        call = {"index": k, "id": use.get("toolUseId"), "type": "function",
                "function": {"name": use.get("name"), "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        if "text" in delta:
            return [self._chunk({"content": str(delta["text"])})]
        use = delta.get("toolUse")
        if isinstance(use, dict):
            k = self.tools.get(_int(data.get("contentBlockIndex")))
            fragment = str(use.get("input") or "")
            if k is None or not fragment:
                return []
            return [self._chunk({"tool_calls": [{"index": k, "function": {"arguments": fragment}}]})]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and reasoning.get("text"):
            return [self._chunk({"reasoning_content": str(reasoning["text"])})]
        return []  # signatures, redacted reasoning and citations have no OpenAI counterpart

    def _message_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.stopped = True
        return [self._chunk({}, finish_reason(data.get("stopReason")))]

    def _metadata(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        self.usage = usage_of(data.get("usage")) or self.usage
        usage = usage_dict(data.get("usage"))
        if not self.include_usage or usage is None:
            return []
        return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [], "usage": usage}]


_HANDLERS = {
    "messageStart": ConverseToOpenAI._message_start,
    "contentBlockStart": ConverseToOpenAI._block_start,
    "contentBlockDelta": ConverseToOpenAI._block_delta,
    "messageStop": ConverseToOpenAI._message_stop,
    "metadata": ConverseToOpenAI._metadata,
}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
