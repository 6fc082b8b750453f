"""A streamed chat answer as a whole one and back: what the response cache stores for a stream, and how a
cache hit on a streaming request is replayed.

``assemble`` folds OpenAI ``chat.completion.chunk`` payloads (one choice, as cacheable requests ask) into the
``chat.completion`` the same request would have got without ``stream``: content, tool calls merged by index,
the finish reason and the usage. ``replay`` turns such a completion back into chunks — role, content, tool
calls, finish — followed by the usage chunk (``choices: []``) when the app asked for usage.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sidecar.core.types import StreamChunk, Usage
from sidecar.formats.openai import chunks_from_completion


class Incomplete(Exception):
    """The chunks do not make a whole answer (no finish reason, a choice other than 0, a refusal shape)."""


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` the chunks spell out; ``Incomplete`` when they do not end a single answer."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: Any = None
    head: dict[str, Any] = {}
    for chunk in chunks:
        if not chunk:
            continue  # an upstream event that maps to no OpenAI chunk
        if not head and chunk.get("id"):
            head = {"id": chunk["id"], "created": chunk.get("created", int(time.time())),
                    "model": chunk.get("model", "")}
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                raise Incomplete("more than one choice")
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str):
                content.append(text)
            for call in delta.get("tool_calls") or ():
                _merge_call(calls, call)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish is None:
        raise Incomplete("the stream did not finish")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content or not calls else None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    completion = {"id": head.get("id", "chatcmpl-sidecar"), "object": "chat.completion",
                  "created": head.get("created", int(time.time())), "model": head.get("model", ""),
                  "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        completion["usage"] = usage
    return completion


def answer_bytes(chunks: list[dict[str, Any]], usage: Usage | None) -> bytes | None:
    """The answer ``chunks`` spell, as the cache stores it — with ``usage`` when the chunks carry none; None
    when they spell none."""
    try:
        completion = assemble(chunks)
    except Incomplete:
        return None
    if "usage" not in completion and usage is not None:
        completion["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                               "total_tokens": usage.total_tokens}
    return orjson.dumps(completion)


def fold_payloads(raw: bytes, usage: Usage | None) -> bytes | None:
    """``answer_bytes`` of chunks kept as their JSON payloads, comma-separated; None also for payloads of an
    unexpected shape: this runs in the cache lookup of a request that did not make the stream, which must get a
    miss, never an error."""
    try:
        return answer_bytes(orjson.loads(b"[" + raw + b"]"), usage)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError):
        return None


def _merge_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", 0)
    if not isinstance(index, int):
        raise Incomplete("a tool call without an index")
    call = calls.get(index)
    function = delta.get("function") or {}
    if call is None:
        call = calls[index] = {"id": delta.get("id") or "", "type": delta.get("type") or "function",
                               "function": {"name": function.get("name") or "", "arguments": ""}}
    elif delta.get("id"):
        call["id"] = delta["id"]
    if function.get("name") and not call["function"]["name"]:
        call["function"]["name"] = function["name"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        call["function"]["arguments"] += arguments


def replay(completion: dict[str, Any], include_usage: bool) -> list[StreamChunk]:
    """A stored ``chat.completion`` as the chunks of a stream (and its usage chunk when asked for)."""
    chunks = chunks_from_completion(completion)
    usage = completion.get("usage")
    if include_usage and isinstance(usage, dict):
        first = chunks[0].data
        data = {"id": first["id"], "object": "chat.completion.chunk", "created": first["created"],
                "model": first["model"], "choices": [], "usage": usage}
        chunks.append(StreamChunk(orjson.dumps(data), data))
    return chunks
