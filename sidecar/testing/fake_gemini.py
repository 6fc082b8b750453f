"""The fake upstream's Gemini surface: generateContent and streamGenerateContent (?alt=sse), Gemini API and
Vertex AI paths, plus an OAuth2 token endpoint (``POST /token``) a service-account key file can point at.

Injected errors use Google RPC bodies: 429 ``RESOURCE_EXHAUSTED`` with ``RetryInfo.retryDelay``, 503
``UNAVAILABLE``, a bad key as 400 ``INVALID_ARGUMENT``/``API_KEY_INVALID``. With ``tools`` and no function
response yet, the answer calls the first tool with ``{"city": "Oslo"}``.
"""

from __future__ import annotations

import asyncio
import itertools
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

STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
TOOL_ARGS = {"city": "Oslo"}
_tokens = itertools.count(1)


def gemini_error(status: int, message: str, stats: Stats, details: list[dict[str, Any]] | None = None) -> web.Response:
    stats.by_status[str(status)] = stats.by_status.get(str(status), 0) + 1
    return json_response({"error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN"),
                            "details": details or []}}, status)


def injected(faults: Faults, stats: Stats) -> web.Response:
    status = faults.error_status
    if status == 401:  # the Gemini API answers a bad key with 400 INVALID_ARGUMENT
        return gemini_error(400, "API key not valid. Please pass a valid API key.", stats,
                            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
    if status == 429:
        delay = faults.retry_after if faults.retry_after is not None else 1
        return gemini_error(429, "You exceeded your current quota.", stats, [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "fake"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay:g}s"}])
    messages = {503: "The model is overloaded. Please try again later."}
    return gemini_error(status, faults.error_message or messages.get(status, "Internal error encountered."), stats)


def authorized(request: web.Request, key: str) -> bool:
    return key in (request.headers.get("x-goog-api-key"), request.query.get("key")) or \
        request.headers.get("authorization") == f"Bearer {key}"


async def generate(request: web.Request) -> web.StreamResponse:
    model, _, action = request.match_info["target"].partition(":")
    if action not in ("generateContent", "streamGenerateContent"):
        return gemini_error(404, f"unknown method {action}", request.app[STATS_KEY])
    early = await common_faults(request, injected=injected, authorized=authorized)
    if early is not None:
        return early
    app, faults, stats = request.app, request.app[FAULTS_KEY], request.app[STATS_KEY]
    body = stats.last_body if isinstance(stats.last_body, dict) else {}
    if not isinstance(body.get("contents"), list) or not body["contents"]:
        return gemini_error(400, "* GenerateContentRequest.contents: contents is not specified", stats)
    await asyncio.sleep(faults.latency)
    parts = _parts(answer_pieces(app, body), body, call=faults.tool_call != "")
    usage = {"promptTokenCount": max(1, len(orjson.dumps(body["contents"])) // 16),
             "candidatesTokenCount": len(parts)}
    usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
    if action == "streamGenerateContent":
        return await _stream(request, model, parts, usage)
    await asyncio.sleep(faults.ttft)
    if faults.malformed:
        return web.Response(body=b'{"candidates": [', content_type="application/json")
    stats.completed += 1
    text = "".join(p["text"] for p in parts if "text" in p)
    merged = ([{"text": text}] if text else []) + [p for p in parts if "functionCall" in p]
    return json_response(_response(model, merged, "STOP", usage))


def _parts(pieces: list[str], body: dict[str, Any], call: bool = True) -> list[dict[str, Any]]:
    tools = (body.get("tools") or []) if call else []  # the fault tool_call "" calls no tool
    declarations = tools[0].get("functionDeclarations") if tools and isinstance(tools[0], dict) else None
    last = body["contents"][-1] if isinstance(body["contents"][-1], dict) else {}
    answered = any(isinstance(p, dict) and "functionResponse" in p for p in last.get("parts") or ())
    if declarations and not answered:
        return [{"functionCall": {"name": declarations[0].get("name"), "args": TOOL_ARGS}}]
    return [{"text": p} for p in pieces]


def _response(model: str, parts: list[dict[str, Any]], finish: str | None,
              usage: dict[str, int] | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    data: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "fake-response"}
    if usage:
        data["usageMetadata"] = usage
    return data


async def _stream(request: web.Request, model: str, parts: list[dict[str, Any]],
                  usage: dict[str, int]) -> web.StreamResponse:
    prompt_only = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
    chunks = [_response(model, [part], "STOP" if i == len(parts) - 1 else None,
                        usage if i == len(parts) - 1 else prompt_only) for i, part in enumerate(parts)]
    # Gemini's SSE uses CRLF and has no end marker: the connection closing ends the stream.
    events = [encode_event(orjson.dumps(chunk)).replace(b"\n", b"\r\n") for chunk in chunks]
    return await stream_events(request, events, headers={"content-type": "text/event-stream"},
                               malformed=b"data: {not json\r\n\r\n",
                               error_event=_error_event)


def _error_event(faults: Faults) -> bytes:
    status = faults.error_status
    error = {"code": status, "message": faults.error_message or "Internal error encountered.",
             "status": STATUSES.get(status, "UNKNOWN")}
    return encode_event(orjson.dumps({"error": error})).replace(b"\n", b"\r\n")


async def token(request: web.Request) -> web.Response:
    """OAuth2 token endpoint for service-account JWT grants (google-auth posts the signed assertion)."""
    form = await request.post()
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get("assertion"):
        return json_response({"error": "invalid_grant"}, 400)
    return json_response({"access_token": f"ya29.fake-{next(_tokens)}", "expires_in": 3600, "token_type": "Bearer"})


VERTEX = "/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}"
ROUTES = [web.post("/v1beta/models/{target}", generate), web.post("/v1/models/{target}", generate),
          web.post(VERTEX, generate), web.post("/token", token)]
