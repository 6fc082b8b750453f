"""A fault-injecting upstream that speaks the OpenAI wire format, for tests, the demo and benchmarks.

Faults are set at start (command-line flags) and changed at run time through a small control route:

    GET  /_control           current faults and request counters
    POST /_control/faults    JSON object: replace the given fault fields
    POST /_control/reset     zero the counters (faults kept)

Never imported by runtime modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from dataclasses import asdict, fields
from typing import Any

import orjson
from aiohttp import web

from sidecar.formats.sse import DONE_EVENT, encode_event
from sidecar.testing import fake_anthropic, fake_bedrock, fake_gemini, fake_responses
from sidecar.testing.faults import (
    FAULTS_KEY,
    STATS_KEY,
    Faults,
    Stats,
    answer_pieces,
    common_faults,
    json_response,
    quota_headers,
    sleep_watching,
    stream_events,
)

__all__ = ["Faults", "create_fake_app", "run"]

def create_fake_app(faults: Faults | None = None, name: str = "fake") -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[FAULTS_KEY] = faults or Faults()
    app[STATS_KEY] = Stats()
    app["name"] = name
    app["rng"] = random.Random(app[FAULTS_KEY].seed)
    app.on_response_prepare.append(quota_headers)
    app.add_routes([
        web.post("/v1/chat/completions", _chat),
        web.post("/v1/completions", _completions),
        web.post("/v1/embeddings", _embeddings),
        web.get("/v1/models", _models),
        web.get("/_control", _control_get),
        web.post("/_control/faults", _control_faults),
        web.post("/_control/reset", _control_reset),
    ])
    app.add_routes(fake_anthropic.ROUTES + fake_gemini.ROUTES + fake_bedrock.ROUTES + fake_responses.ROUTES)
    return app


# ---- control -------------------------------------------------------------------------------------


async def _control_get(request: web.Request) -> web.Response:
    return json_response({"faults": asdict(request.app[FAULTS_KEY]), "stats": asdict(request.app[STATS_KEY])})


async def _control_faults(request: web.Request) -> web.Response:
    try:
        request.app[FAULTS_KEY].update(orjson.loads(await request.read()))
    except (ValueError, TypeError) as exc:
        return json_response({"error": str(exc)}, 400)
    if request.app[FAULTS_KEY].seed is not None:
        request.app["rng"].seed(request.app[FAULTS_KEY].seed)
    return json_response(asdict(request.app[FAULTS_KEY]))


async def _control_reset(request: web.Request) -> web.Response:
    stats = request.app[STATS_KEY]
    for f in fields(stats):
        setattr(stats, f.name, getattr(Stats(), f.name))
    return json_response({"ok": True})


# ---- the OpenAI surface --------------------------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "chat")


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "completions")


async def _answer(request: web.Request, kind: str) -> web.StreamResponse:
    early = await common_faults(request)
    if early is not None:
        return early
    faults, body = request.app[FAULTS_KEY], request.app[STATS_KEY].last_body
    model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
    if isinstance(body, dict) and body.get("stream"):
        return await _stream(request, kind, model, body)
    await sleep_watching(request, faults.latency + faults.ttft)
    if faults.malformed:
        return web.Response(body=b'{"id": "chatcmpl-x", "choices": [', content_type="application/json")
    pieces = answer_pieces(request.app, body)
    answer = _completion(kind, model, "".join(pieces), _usage(body, len(pieces)))
    tool = _tool_to_call(body, faults) if kind == "chat" else None
    if tool is not None:
        answer["choices"][0].update(finish_reason="tool_calls", message={
            "role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": TOOL_CALL_ID, "type": "function",
                 "function": {"name": tool, "arguments": faults.tool_arguments or TOOL_ARGUMENTS}}]})
    if faults.reasoning and kind == "chat":
        answer["choices"][0]["message"]["reasoning_content"] = faults.reasoning
    if faults.finish_reason is not None:
        answer["choices"][0]["finish_reason"] = faults.finish_reason
    request.app[STATS_KEY].completed += 1
    return json_response(answer)


TOOL_CALL_ID, TOOL_ARGUMENTS = "call_fake1", '{"city":"Oslo"}'


def _tool_to_call(body: Any, faults: Faults) -> str | None:
    """With function tools offered and no tool result since the last assistant turn, the answer calls the first
    (or the one ``faults.tool_call`` names, if offered; none when it is "")."""
    tools = body.get("tools") if isinstance(body, dict) else None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not tools or not isinstance(messages, list) or not messages or _answered(messages):
        return None
    names = [t["function"].get("name") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if faults.tool_call is not None:
        return faults.tool_call if faults.tool_call in names else None
    return str(names[0]) if names else None


def _answered(messages: list[Any]) -> bool:
    """A tool result came after the last assistant message (an agent may add user text after it)."""
    for message in reversed(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            return True
        if role == "assistant":
            return False
    return False


async def _stream(request: web.Request, kind: str, model: str, body: dict[str, Any]) -> web.StreamResponse:
    app, faults = request.app, request.app[FAULTS_KEY]
    await asyncio.sleep(faults.latency)
    if faults.endless:
        return await _endless(request, kind, model, faults.text or "x")
    pieces = answer_pieces(app, body)
    chunks = [_chunk(kind, model, {"role": "assistant", "content": ""}, None)] if kind == "chat" else []
    tool = _tool_to_call(body, faults) if kind == "chat" else None
    if faults.reasoning and kind == "chat":
        half = len(faults.reasoning) // 2
        chunks += [_chunk(kind, model, {"reasoning_content": part}, None)
                   for part in (faults.reasoning[:half], faults.reasoning[half:])]
    if tool is not None:
        call = {"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": {"name": tool, "arguments": ""}}
        arguments = faults.tool_arguments or TOOL_ARGUMENTS
        chunks += [_chunk(kind, model, {"tool_calls": [call]}, None),
                   _chunk(kind, model, {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]},
                          None),
                   _chunk(kind, model, {}, "tool_calls")]
    else:
        chunks += [_chunk(kind, model, {"content": p}, None) for p in pieces]
        chunks.append(_chunk(kind, model, {}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        usage_chunk = _chunk(kind, model, {}, None)
        usage_chunk["choices"], usage_chunk["usage"] = [], _usage(body, len(pieces))
        chunks.append(usage_chunk)
    return await stream_events(request, [encode_event(orjson.dumps(c)) for c in chunks],
                               malformed=b"data: {not json\n\n", tail=b"" if faults.no_done else DONE_EVENT,
                               error_event=_error_event)


async def _endless(request: web.Request, kind: str, model: str, text: str) -> web.StreamResponse:
    """A runaway answer: the same content event forever, written in batches (backpressure paces it)."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    await response.write(encode_event(orjson.dumps(_chunk(kind, model, {"role": "assistant", "content": ""}, None))))
    batch = encode_event(orjson.dumps(_chunk(kind, model, {"content": text}, None))) * 64
    try:
        while True:
            await response.write(batch)
    finally:
        request.app[STATS_KEY].disconnects += 1


def _error_event(faults: Faults) -> bytes:
    message = faults.error_message or "The server had an error"
    return encode_event(orjson.dumps({"error": {"message": message, "type": "server_error", "code": None}}))


async def _embeddings(request: web.Request) -> web.StreamResponse:
    early = await common_faults(request)
    if early is not None:
        return early
    body = request.app[STATS_KEY].last_body
    inputs = body.get("input") if isinstance(body, dict) else None
    items = inputs if isinstance(inputs, list) else [inputs]
    # a bag of words (paraphrases land near each other) for models named bow… or with the fault set
    words = request.app[FAULTS_KEY].embedding_model == "words" or str(body.get("model", "")).startswith("bow")
    embed = _words if words else _vector
    data = [{"object": "embedding", "index": i, "embedding": embed(str(item))} for i, item in enumerate(items)]
    tokens = sum(len(str(item).split()) for item in items)
    request.app[STATS_KEY].completed += 1
    return json_response({"object": "list", "data": data, "model": body.get("model"),
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                              "owned_by": "fake"}]})


# ---- bodies ---------------------------------------------------------------------------------------


def _usage(body: Any, completion_tokens: int) -> dict[str, int]:
    messages = body.get("messages") if isinstance(body, dict) else None
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict)) if \
        isinstance(messages, list) else len(str(body.get("prompt", "")).split())
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


def _completion(kind: str, model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "logprobs": None, "finish_reason": "stop"}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        obj = "text_completion"
    return {"id": "chatcmpl-fake", "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage, "system_fingerprint": "fp_fake"}


def _chunk(kind: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    if kind == "chat":
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": "chatcmpl-fake", "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice]}


STOPWORDS = frozenset({"the", "a", "an", "to", "of", "my", "me", "i", "is", "it", "and", "or", "for", "in", "on",
                       "can", "you", "please", "how", "do", "what", "with", "your", "our", "are", "be", "this"})


def _words(text: str) -> list[float]:
    """A deterministic bag-of-words embedding: each word (lower-case, stop words out, a plural's s dropped)
    adds one to the dimension its sha256 picks."""
    vector = [0.0] * 256
    for word in "".join(c if c.isalnum() else " " for c in text.lower()).split():
        if word in STOPWORDS:
            continue
        word = word[:-1] if len(word) > 3 and word.endswith("s") else word
        vector[hashlib.sha256(word.encode()).digest()[0]] += 1.0
    return vector


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 4) for b in digest[:8]]


async def run(port: int, faults: Faults, host: str = "127.0.0.1", name: str = "fake") -> None:
    """Serve until cancelled (the ``fake-provider`` command)."""
    runner = web.AppRunner(create_fake_app(faults, name), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
