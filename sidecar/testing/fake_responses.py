"""The fake upstream's OpenAI Responses surface: ``POST /v1/responses``, plain and streamed.

It answers with the same text as the Chat surface (or a call of the first function tool when tools are offered
and no ``function_call_output`` came back yet), shaped as OpenAI shapes Responses objects and events, and
accepts the stateful fields a gateway must pass through untouched (``previous_response_id``, ``store``,
built-in tools). Shares ``Faults`` with the other surfaces.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from sidecar.formats.responses_stream import ChatToResponses
from sidecar.testing.faults import FAULTS_KEY, STATS_KEY, answer_pieces, common_faults, json_response, stream_events

TOOL_ARGUMENTS = '{"city":"Oslo"}'


def _chunks(app: web.Application, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The answer as Chat chunks (the renderer turns them into Responses events)."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    items = body.get("input") if isinstance(body.get("input"), list) else []
    answered = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items)
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    if tools and not answered:
        call = {"index": 0, "id": "call_fake1", "type": "function", "function": {"name": tools[0]["name"],
                                                                                  "arguments": ""}}
        out = [chunk({"role": "assistant"}), chunk({"tool_calls": [call]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGUMENTS}}]}),
               chunk({}, "tool_calls")]
    else:
        pieces = answer_pieces(app, {})
        out = [chunk({"role": "assistant", "content": ""}), *[chunk({"content": p}) for p in pieces],
               chunk({}, "stop")]
    prompt = max(1, len(orjson.dumps(items or body.get("input"))) // 16)
    usage = {"prompt_tokens": prompt, "completion_tokens": len(out) - 2, "total_tokens": prompt + len(out) - 2}
    return [*out, {**base, "choices": [], "usage": usage}]


async def create(request: web.Request) -> web.StreamResponse:
    early = await common_faults(request)
    if early is not None:
        return early
    faults, stats = request.app[FAULTS_KEY], request.app[STATS_KEY]
    body = stats.last_body if isinstance(stats.last_body, dict) else {}
    model = str(body.get("model") or "fake-model")
    await asyncio.sleep(faults.latency)
    renderer = ChatToResponses(body)
    events = [renderer.feed(c) for c in _chunks(request.app, body, model)] + [renderer.end()]
    if body.get("stream"):  # one write per event, so drop_after counts events
        split = [e + b"\n\n" for piece in events for e in piece.split(b"\n\n") if e]
        return await stream_events(request, split, malformed=b"event: response.output_text.delta\ndata: {no\n\n")
    await asyncio.sleep(faults.ttft)
    final = orjson.loads(events[-1].split(b"data: ", 1)[1])["response"]
    final["store"] = body.get("store", True)  # OpenAI stores by default
    final["previous_response_id"] = body.get("previous_response_id")
    stats.completed += 1
    return json_response(final)


ROUTES = [web.post("/v1/responses", create)]
