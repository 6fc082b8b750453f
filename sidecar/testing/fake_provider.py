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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web

from sidecar.formats.sse import DONE_EVENT, encode_event

FAULTS_KEY = web.AppKey("faults", "Faults")
STATS_KEY = web.AppKey("stats", "Stats")


@dataclass(slots=True)
class Faults:
    """What the fake does wrong. Rates are 0..1; times in seconds; ``fail_next`` fails that many next."""

    error_rate: float = 0.0
    fail_next: int = 0
    error_status: int = 429
    error_code: str | None = None
    retry_after: float | None = None
    latency: float = 0.0
    ttft: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False
    reset: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    malformed: bool = False
    malformed_event_at: int | None = None
    no_done: bool = False
    chunks: int = 5
    text: str = ""
    require_key: str | None = None
    reject_prefill: bool = False
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass(slots=True)
class Stats:
    requests: int = 0
    completed: int = 0
    errors_injected: int = 0
    disconnects: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)
    last_body: Any = None
    request_times: list[float] = field(default_factory=list)


def create_fake_app(faults: Faults | None = None, name: str = "fake") -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[FAULTS_KEY] = faults or Faults()
    app[STATS_KEY] = Stats()
    app["name"] = name
    app["rng"] = random.Random(app[FAULTS_KEY].seed)
    app.add_routes([
        web.post("/v1/chat/completions", _chat),
        web.post("/v1/completions", _completions),
        web.post("/v1/embeddings", _embeddings),
        web.get("/v1/models", _models),
        web.get("/_control", _control_get),
        web.post("/_control/faults", _control_faults),
        web.post("/_control/reset", _control_reset),
    ])
    from sidecar.testing import fake_anthropic, fake_gemini  # they import this module's helpers

    app.add_routes(fake_anthropic.ROUTES + fake_gemini.ROUTES)
    return app


# ---- control -------------------------------------------------------------------------------------


async def _control_get(request: web.Request) -> web.Response:
    return _json({"faults": asdict(request.app[FAULTS_KEY]), "stats": asdict(request.app[STATS_KEY])})


async def _control_faults(request: web.Request) -> web.Response:
    try:
        request.app[FAULTS_KEY].update(orjson.loads(await request.read()))
    except (ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 400)
    if request.app[FAULTS_KEY].seed is not None:
        request.app["rng"].seed(request.app[FAULTS_KEY].seed)
    return _json(asdict(request.app[FAULTS_KEY]))


async def _control_reset(request: web.Request) -> web.Response:
    stats = request.app[STATS_KEY]
    for f in fields(stats):
        setattr(stats, f.name, getattr(Stats(), f.name))
    return _json({"ok": True})


# ---- the OpenAI surface --------------------------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "chat")


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "completions")


async def _answer(request: web.Request, kind: str) -> web.StreamResponse:
    early = await _common_faults(request)
    if early is not None:
        return early
    faults, body = request.app[FAULTS_KEY], request.app[STATS_KEY].last_body
    model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
    if isinstance(body, dict) and body.get("stream"):
        return await _stream(request, kind, model, body)
    await _sleep_watching(request, faults.latency + faults.ttft)
    if faults.malformed:
        return web.Response(body=b'{"id": "chatcmpl-x", "choices": [', content_type="application/json")
    pieces = _pieces(request.app, body)
    answer = _completion(kind, model, "".join(pieces), _usage(body, len(pieces)))
    request.app[STATS_KEY].completed += 1
    return _json(answer)


async def _common_faults(request: web.Request, *,
                         injected: Callable[[Faults, Stats], web.Response] | None = None,
                         authorized: Callable[[web.Request, str], bool] | None = None) -> web.StreamResponse | None:
    """Bookkeeping and the faults shared by every route; a response when the request ends here.

    Other dialects pass ``injected`` (their native error bodies) and ``authorized`` (their key headers).
    """
    app, faults, stats = request.app, request.app[FAULTS_KEY], request.app[STATS_KEY]
    stats.requests += 1
    stats.request_times.append(time.time())
    stats.last_headers = {str(k).lower(): v for k, v in request.headers.items()}
    raw = await request.read()
    try:
        stats.last_body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(400, "invalid JSON body", "invalid_request_error", None, stats)
    if faults.require_key is not None and not (authorized or _bearer_ok)(request, faults.require_key):
        if injected is not None:
            return injected(Faults(error_status=401), stats)
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", stats)
    if faults.reset:
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    if faults.reject_prefill and _prefill(stats.last_body) is not None:
        return _error(400, "This model does not support assistant message prefill.", "invalid_request_error",
                      None, stats)
    if faults.hang:
        await _sleep_watching(request, 3600)
    if faults.fail_next > 0 or (faults.error_rate and app["rng"].random() < faults.error_rate):
        faults.fail_next = max(0, faults.fail_next - 1)
        stats.errors_injected += 1
        await asyncio.sleep(faults.latency)
        return (injected or _injected_error)(faults, stats)
    return None


common_faults = _common_faults


def _bearer_ok(request: web.Request, key: str) -> bool:
    return request.headers.get("authorization") == f"Bearer {key}"


def _injected_error(faults: Faults, stats: Stats) -> web.Response:
    status = faults.error_status
    kinds = {429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests"),
             400: ("invalid_request_error", None, "Invalid request"),
             401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
             404: ("invalid_request_error", "model_not_found", "The model does not exist")}
    type_, code, message = kinds.get(status, ("server_error", None, "The server had an error"))
    response = _error(status, message, type_, faults.error_code or code, stats)
    if faults.retry_after is not None:
        response.headers["retry-after"] = f"{faults.retry_after:g}"
        response.headers["retry-after-ms"] = str(int(faults.retry_after * 1000))
    if status == 429:
        response.headers["x-ratelimit-remaining-requests"] = "0"
    return response


async def _stream(request: web.Request, kind: str, model: str, body: dict[str, Any]) -> web.StreamResponse:
    app, faults = request.app, request.app[FAULTS_KEY]
    await asyncio.sleep(faults.latency)
    pieces = _pieces(app, body)
    chunks = [_chunk(kind, model, {"role": "assistant", "content": ""}, None)] if kind == "chat" else []
    chunks += [_chunk(kind, model, {"content": p}, None) for p in pieces]
    chunks.append(_chunk(kind, model, {}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        usage_chunk = _chunk(kind, model, {}, None)
        usage_chunk["choices"], usage_chunk["usage"] = [], _usage(body, len(pieces))
        chunks.append(usage_chunk)
    return await stream_events(request, [encode_event(orjson.dumps(c)) for c in chunks],
                               malformed=b"data: {not json\n\n", tail=b"" if faults.no_done else DONE_EVENT)


async def stream_events(request: web.Request, events: list[bytes], *, malformed: bytes, tail: bytes = b"",
                        headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send already-encoded SSE events with the stream faults applied (time to first token, drop or stall
    after N events, one malformed event, per-event delay), counting completions and disconnects.
    ``tail`` is the provider's end marker, if it has one."""
    faults, stats = request.app[FAULTS_KEY], request.app[STATS_KEY]
    response = web.StreamResponse(headers=headers or {"content-type": "text/event-stream",
                                                      "cache-control": "no-cache"})
    await response.prepare(request)
    await _sleep_watching(request, faults.ttft)
    finished = False
    try:
        for i, data in enumerate(events):
            if faults.drop_after is not None and i >= faults.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if faults.stall_after is not None and i >= faults.stall_after:
                await asyncio.sleep(3600)
            if faults.malformed_event_at == i:
                await response.write(malformed)
            await response.write(data)
            if faults.chunk_delay:
                await asyncio.sleep(faults.chunk_delay)
        if tail:
            await response.write(tail)
        await response.write_eof()
        finished = True
        stats.completed += 1
    finally:
        if not finished:
            stats.disconnects += 1
    return response


async def _embeddings(request: web.Request) -> web.StreamResponse:
    early = await _common_faults(request)
    if early is not None:
        return early
    body = request.app[STATS_KEY].last_body
    inputs = body.get("input") if isinstance(body, dict) else None
    items = inputs if isinstance(inputs, list) else [inputs]
    data = [{"object": "embedding", "index": i, "embedding": _vector(str(item))} for i, item in enumerate(items)]
    tokens = sum(len(str(item).split()) for item in items)
    request.app[STATS_KEY].completed += 1
    return _json({"object": "list", "data": data, "model": body.get("model"),
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                              "owned_by": "fake"}]})


# ---- bodies ---------------------------------------------------------------------------------------


async def _sleep_watching(request: web.Request, seconds: float) -> None:
    """Sleep; a client that goes away meanwhile (the handler is cancelled) counts as a disconnect."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        request.app[STATS_KEY].disconnects += 1
        raise


def _prefill(body: Any) -> str | None:
    """The assistant prefill of a chat request (its last message is the assistant's), else None."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):  # Anthropic's text blocks
        content = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return content if isinstance(content, str) else None


def _pieces(app: web.Application, body: Any) -> list[str]:
    """The answer in ``chunks`` pieces; after an assistant prefill that starts the full text, only the rest
    (the model continues its own answer, as prefill-capable engines do)."""
    faults = app[FAULTS_KEY]
    text = faults.text or f"Hello from {app['name']}."
    prefill = _prefill(body)
    if prefill and text.startswith(prefill):
        text = text[len(prefill):]
    n = max(1, faults.chunks)
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


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


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 4) for b in digest[:8]]


def _error(status: int, message: str, type_: str, code: str | None, stats: Stats) -> web.Response:
    stats.by_status[str(status)] = stats.by_status.get(str(status), 0) + 1
    return _json({"error": {"message": message, "type": type_, "param": None, "code": code}}, status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


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
