"""What every fake provider shares: the faults it injects, its counters, the faults applied before an
answer (``common_faults``) and while streaming one (``stream_events``), and the answer text in pieces.

Each dialect's fake (``fake_provider`` for OpenAI, ``fake_anthropic``, ``fake_gemini``) imports these from
here, never from each other. Never imported by runtime modules.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web

FAULTS_KEY = web.AppKey("faults", "Faults")
STATS_KEY = web.AppKey("stats", "Stats")


@dataclass(slots=True)
class Faults:
    """What the fake does wrong. Rates are 0..1; times in seconds; ``fail_next`` fails that many next."""

    error_rate: float = 0.0
    fail_next: int = 0
    error_status: int = 429
    error_code: str | None = None
    error_message: str | None = None  # replaces the injected error's message (each dialect's own body)
    error_param: str | None = None
    error_event_at: int | None = None  # the stream ends with the dialect's in-band error event at this index
    endless: bool = False  # stream content events as fast as the client takes them, never ending
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
    odd_event: str | None = None  # the raw bytes written at malformed_event_at instead of the dialect's bad JSON
    ping_every: float = 0.0  # streams: an SSE comment (": ping") this often while waiting the ttft, no tokens
    no_done: bool = False
    chunks: int = 5
    text: str = ""
    require_key: str | None = None
    reject_prefill: bool = False
    seed: int | None = None
    stream_exception: str | None = None  # Bedrock: an in-stream exception frame (lowerCamel name) at drop_after
    tool_call: str | None = None  # OpenAI: the tool to call (None: the first one offered; "": never call one)
    tool_arguments: str | None = None  # OpenAI: that call's arguments (JSON text; None: {"city":"Oslo"})
    reasoning: str = ""  # OpenAI: reasoning_content sent before the answer (as SGLang/vLLM/DeepSeek do)
    # An OpenAI-style request quota: this many requests per ``quota_window`` seconds, refilled continuously; every
    # answer says what is left (x-ratelimit-limit/remaining/reset-requests), and a request past it gets a 429.
    quota_requests: int | None = None
    finish_reason: str | None = None  # a whole chat answer's finish_reason instead of "stop" (e.g. "length")
    # embeddings: "digest" (8 numbers from the text's sha256) or "words" (a deterministic bag of words: 256
    # dimensions, each word hashed to one; texts sharing words are near, so paraphrases land together)
    embedding_model: str = "digest"
    quota_window: float = 60.0

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
    sts_calls: int = 0


async def common_faults(request: web.Request, *,
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
        return error_response(400, "invalid JSON body", "invalid_request_error", None, stats)
    if faults.require_key is not None and not (authorized or _bearer_ok)(request, faults.require_key):
        if injected is not None:
            return injected(Faults(error_status=401), stats)
        return error_response(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key", stats)
    if faults.reset:
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    if faults.reject_prefill and prefill_of(stats.last_body) is not None:
        return error_response(400, "This model does not support assistant message prefill.", "invalid_request_error",
                      None, stats)
    if faults.hang:
        await sleep_watching(request, 3600)
    if faults.fail_next > 0 or (faults.error_rate and app["rng"].random() < faults.error_rate):
        faults.fail_next = max(0, faults.fail_next - 1)
        stats.errors_injected += 1
        await asyncio.sleep(faults.latency)
        return (injected or _injected_error)(faults, stats)
    if faults.quota_requests is not None and not _take_quota(request, faults):
        return error_response(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", stats)
    return None


QUOTA_KEY = "quota"  # app[...]: [level, last update (monotonic)] of the request quota, None until first used


def _take_quota(request: web.Request, faults: Faults) -> bool:
    """Charge one request to the quota bucket (False: empty); the answer's rate-limit headers go on the request
    for ``quota_headers`` to add."""
    limit, window = faults.quota_requests or 0, faults.quota_window
    rate, now = limit / window, time.monotonic()
    state = request.app.get(QUOTA_KEY)
    if state is None or state[2] != (limit, window):
        state = request.app[QUOTA_KEY] = [float(limit), now, (limit, window)]
    state[0], state[1] = min(float(limit), state[0] + (now - state[1]) * rate), now
    granted = state[0] >= 1
    if granted:
        state[0] -= 1
    full_in = math.ceil((limit - state[0]) / rate * 1000) if rate else 0  # ms, rounded up
    request["quota_headers"] = {"x-ratelimit-limit-requests": str(limit),
                                "x-ratelimit-remaining-requests": str(math.floor(state[0])),
                                "x-ratelimit-reset-requests": f"{full_in}ms"}
    return granted


async def quota_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the quota's headers on every answer to a request that was charged to it."""
    headers = request.get("quota_headers")
    if headers:
        response.headers.update(headers)



def _bearer_ok(request: web.Request, key: str) -> bool:
    return request.headers.get("authorization") == f"Bearer {key}"


def _injected_error(faults: Faults, stats: Stats) -> web.Response:
    status = faults.error_status
    kinds = {429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests"),
             400: ("invalid_request_error", None, "Invalid request"),
             401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
             404: ("invalid_request_error", "model_not_found", "The model does not exist")}
    type_, code, message = kinds.get(status, ("server_error", None, "The server had an error"))
    response = error_response(status, faults.error_message or message, type_, faults.error_code or code, stats,
                              faults.error_param)
    if faults.retry_after is not None:
        response.headers["retry-after"] = f"{faults.retry_after:g}"
        response.headers["retry-after-ms"] = str(int(faults.retry_after * 1000))
    if status == 429:
        response.headers["x-ratelimit-remaining-requests"] = "0"
    return response


async def stream_events(request: web.Request, events: list[bytes], *, malformed: bytes, tail: bytes = b"",
                        headers: dict[str, str] | None = None,
                        error_event: Callable[[Faults], bytes] | None = None) -> web.StreamResponse:
    """Send already-encoded SSE events with the stream faults applied (time to first token, drop or stall
    after N events, one malformed event, an in-band error event, per-event delay), counting completions and
    disconnects. ``tail`` is the provider's end marker, if it has one; ``error_event`` encodes the
    provider's in-band error event (``error_message``, and ``error_status`` where its dialect has one)."""
    faults, stats = request.app[FAULTS_KEY], request.app[STATS_KEY]
    response = web.StreamResponse(headers=headers or {"content-type": "text/event-stream",
                                                      "cache-control": "no-cache"})
    await response.prepare(request)
    await _first_token_wait(request, response, faults)
    finished = False
    try:
        for i, data in enumerate(events):
            if faults.drop_after is not None and i >= faults.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if faults.stall_after is not None and i >= faults.stall_after:
                await asyncio.sleep(3600)
            if faults.error_event_at == i and error_event is not None:
                await response.write(error_event(faults))
                break
            if faults.malformed_event_at == i:
                await response.write(malformed if faults.odd_event is None else faults.odd_event.encode())
            await response.write(data)
            if faults.chunk_delay:
                await asyncio.sleep(faults.chunk_delay)
        if tail and faults.error_event_at is None:
            await response.write(tail)
        await response.write_eof()
        finished = True
        stats.completed += 1
    finally:
        if not finished:
            stats.disconnects += 1
    return response


async def _first_token_wait(request: web.Request, response: web.StreamResponse, faults: Faults) -> None:
    """The time to first token, with keep-alive comments in it when ``ping_every`` is set (as Anthropic's
    ``ping`` events and OpenRouter's ``: OPENROUTER PROCESSING`` comments keep a slow answer's connection)."""
    if faults.ping_every <= 0:
        await sleep_watching(request, faults.ttft)
        return
    end = time.monotonic() + faults.ttft
    while (left := end - time.monotonic()) > 0:
        await sleep_watching(request, min(left, faults.ping_every))
        await response.write(b": ping\n\n")


async def sleep_watching(request: web.Request, seconds: float) -> None:
    """Sleep; a client that goes away meanwhile (the handler is cancelled) counts as a disconnect."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        request.app[STATS_KEY].disconnects += 1
        raise


def prefill_of(body: Any) -> str | None:
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


def answer_pieces(app: web.Application, body: Any) -> list[str]:
    """The answer in ``chunks`` pieces; after an assistant prefill that starts the full text, only the rest
    (the model continues its own answer, as prefill-capable engines do)."""
    faults = app[FAULTS_KEY]
    text = faults.text or f"Hello from {app['name']}."
    prefill = prefill_of(body)
    if prefill and text.startswith(prefill):
        text = text[len(prefill):]
    n = max(1, faults.chunks)
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


def error_response(status: int, message: str, type_: str, code: str | None, stats: Stats,
                   param: str | None = None) -> web.Response:
    stats.by_status[str(status)] = stats.by_status.get(str(status), 0) + 1
    return json_response({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
