"""The fake upstream's Anthropic Messages surface: ``POST /v1/messages`` with the exact event sequence.

Shares ``Faults`` and ``Stats`` with the OpenAI surface (``fake_provider``); injected errors use Anthropic's
own bodies (429 ``rate_limit_error`` with ``retry-after``, 529 ``overloaded_error``, …). With ``tools`` in
the request and no tool result yet, the answer is a call of the first tool with ``{"city": "Oslo"}`` (or of
the tool and arguments the faults ``tool_call``/``tool_arguments`` name; none when ``tool_call`` is "").
Beta-gated fields (``BETA_GATED``) are refused without their ``anthropic-beta`` flag, as the real API does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from sidecar.formats.sse import encode_event
from sidecar.testing.faults import (
    FAULTS_KEY,
    STATS_KEY,
    Faults,
    Stats,
    answer_pieces,
    common_faults,
    json_response,
    stream_events,
)

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
         504: "timeout_error", 529: "overloaded_error"}
TOOL_INPUT = {"city": "Oslo"}
#: Fields the real API takes only with their anthropic-beta flag (a 400 without it), as Claude Code sends them.
BETA_GATED = (("context_management", "context-management-2025-06-27"), ("output_config.effort", "effort-2025-11-24"),
              ("tools.defer_loading", "advanced-tool-use-2025-11-20"))


def anthropic_error(status: int, message: str, stats: Stats, type_: str | None = None) -> web.Response:
    stats.by_status[str(status)] = stats.by_status.get(str(status), 0) + 1
    body = {"type": "error", "error": {"type": type_ or TYPES.get(status, "api_error"), "message": message},
            "request_id": "req_fake"}
    return json_response(body, status)


def injected(faults: Faults, stats: Stats) -> web.Response:
    status = faults.error_status
    messages = {429: "Number of requests has exceeded your rate limit.", 529: "Overloaded",
                401: "invalid x-api-key"}
    response = anthropic_error(status, faults.error_message or messages.get(status, "Internal server error"),
                               stats, faults.error_code)
    if faults.retry_after is not None:
        response.headers["retry-after"] = f"{faults.retry_after:g}"
    if status == 429:
        response.headers["anthropic-ratelimit-requests-remaining"] = "0"
    return response


def authorized(request: web.Request, key: str) -> bool:
    return request.headers.get("x-api-key") == key or request.headers.get("authorization") == f"Bearer {key}"


async def messages(request: web.Request) -> web.StreamResponse:
    early = await common_faults(request, injected=injected, authorized=authorized)
    if early is not None:
        return early
    app, faults, stats = request.app, request.app[FAULTS_KEY], request.app[STATS_KEY]
    body = stats.last_body if isinstance(stats.last_body, dict) else {}
    version = request.headers.get("anthropic-version")
    if not version:
        return anthropic_error(400, "anthropic-version: header is required", stats)
    if not isinstance(body.get("max_tokens"), int):
        return anthropic_error(400, "max_tokens: Field required", stats)
    refused = _beta_gated(body, request.headers.get("anthropic-beta", ""))
    if refused is not None:
        return anthropic_error(400, f"{refused}: Extra inputs are not permitted", stats)
    if version == "2026-10-21":
        for name in ("temperature", "top_p", "top_k"):
            if name in body:
                return anthropic_error(400, f"{name}: Extra inputs are not permitted", stats)
    await asyncio.sleep(faults.latency)
    blocks = _blocks(answer_pieces(app, body), body, faults)
    model = str(body.get("model", "fake-claude"))
    usage = {"input_tokens": _prompt_tokens(body), "output_tokens": len(blocks[0].get("pieces", ())) or 1,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
    if body.get("stream"):
        return await _stream(request, model, blocks, stop, usage)
    await asyncio.sleep(faults.ttft)
    if faults.malformed:
        return web.Response(body=b'{"id": "msg_x", "content": [', content_type="application/json")
    content = [{k: v for k, v in b.items() if k != "pieces"} | ({"text": "".join(b["pieces"])}
               if b["type"] == "text" else {}) for b in blocks]
    stats.completed += 1
    return json_response({"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
                  "stop_reason": stop, "stop_sequence": None, "usage": usage})


def _beta_gated(body: dict[str, Any], header: str) -> str | None:
    """The first beta-gated field the request uses without its flag in ``anthropic-beta``."""
    flags = {flag.strip() for flag in header.split(",")}
    config = body.get("output_config")
    used = {"context_management": body.get("context_management") is not None,
            "output_config.effort": isinstance(config, dict) and config.get("effort") is not None,
            "tools.defer_loading": any(isinstance(t, dict) and "defer_loading" in t for t in body.get("tools") or ())}
    return next((name for name, flag in BETA_GATED if used[name] and flag not in flags), None)


def _blocks(pieces: list[str], body: dict[str, Any], faults: Faults) -> list[dict[str, Any]]:
    """A call of the first tool offered (or of the one ``faults.tool_call`` names, with ``tool_arguments``; ""
    calls none) until the last user turn holds a tool result; else text."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    names = [t.get("name") for t in tools]
    name = names[0] if faults.tool_call is None and names else faults.tool_call if faults.tool_call in names else None
    last = (body.get("messages") or [{}])[-1]
    answered = isinstance(last, dict) and isinstance(last.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
    if name is not None and not answered:
        arguments = orjson.loads(faults.tool_arguments) if faults.tool_arguments else TOOL_INPUT
        return [{"type": "tool_use", "id": "toolu_fake1", "name": str(name), "input": arguments}]
    return [{"type": "text", "pieces": pieces}]


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps(body.get("messages", []))) // 16)


def _events(model: str, blocks: list[dict[str, Any]], stop: str, usage: dict[str, int]) -> list[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return encode_event(orjson.dumps({"type": name, **data}), name)

    start = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    out = [event("message_start", {"message": start})]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            out.append(event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
            if index == 0:
                out.append(event("ping", {}))
            out += [event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}})
                    for p in block["pieces"]]
        else:
            out.append(event("content_block_start", {"index": index, "content_block": {**block, "input": {}}}))
            encoded = orjson.dumps(block["input"]).decode()
            half = len(encoded) // 2
            out += [event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta",
                                                                              "partial_json": part}})
                    for part in ("", encoded[:half], encoded[half:])]
        out.append(event("content_block_stop", {"index": index}))
    out.append(event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                       "usage": {"output_tokens": usage["output_tokens"]}}))
    out.append(event("message_stop", {}))
    return out


async def _stream(request: web.Request, model: str, blocks: list[dict[str, Any]], stop: str,
                  usage: dict[str, int]) -> web.StreamResponse:
    headers = {"content-type": "text/event-stream", "cache-control": "no-cache", "request-id": "req_fake"}
    return await stream_events(request, list(_events(model, blocks, stop, usage)), headers=headers,
                               malformed=b"event: content_block_delta\ndata: {not json\n\n",
                               error_event=_error_event)


def _error_event(faults: Faults) -> bytes:
    error = {"type": TYPES.get(faults.error_status, "api_error"), "message": faults.error_message or "Internal error"}
    return encode_event(orjson.dumps({"type": "error", "error": error}), "error")


ROUTES = [web.post("/v1/messages", messages)]
