"""An SGLang-faithful fake server (one replica per app), per §8 of the SGLang reference.

What it does as SGLang does: ``/health`` (503 while starting or unhealthy, else 200 with an empty body after
``health_delay``), ``/ready``, ``/v1/models``, chat and completions in SGLang's shapes (flat 400 errors,
``matched_stop``, ``reasoning_content``, a separate finish chunk, a usage chunk with ``choices: []``,
``usage.prompt_tokens_details.cached_tokens`` as with ``--enable-cache-report``), a scheduler with
``max_running`` slots and a waiting queue bounded by ``max_queued`` (503 "The request queue is full." — never
429), in-band abort chunks on a 200 stream (``abort_next``), ``/v1/loads``, ``/metrics`` with the real
``sglang:`` names, ``/flush_cache``, ``/abort_request``; ``/get_load`` is a 404 as in 0.5.23.

The prefix cache (``sglang_cache.PrefixCache``): a request's cached part is its longest cached prefix; time to
first token = queue wait + ``prefill_base`` + uncached tokens * ``prefill_per_token``; then one output token
every ``decode_per_token``.

Run-time control: ``GET /_control`` (settings and counters; ``?trace=1`` adds one line per request),
``POST /_control/faults`` (replace settings), ``POST /_control/reset`` (zero counters, flush the cache). Never
imported by runtime modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from hashlib import blake2b
from typing import Any

import orjson
from aiohttp import web

from sidecar.testing.sglang_cache import PAGE, PrefixCache, page_keys, prompt_tokens
from sidecar.testing.sglang_metrics import E2E_BUCKETS, TTFT_BUCKETS, Histogram, exposition, loads_body

QUEUE_FULL = "The request queue is full."
ABORTED = "Request running timeout reached."
TRACE = 100_000  # requests the trace keeps (GET /_control?trace=1)


@dataclass(slots=True)
class SGLangSettings:
    """One replica's engine settings and faults (times in seconds)."""

    model: str = "sglang-model"
    max_running: int = 8
    max_queued: int | None = None  # --max-queued-requests; None: unbounded, as SGLang's default
    cache_tokens: int = 20_000  # prefix-cache capacity
    max_total_tokens: int = 400_000  # the KV pool, for token_usage
    prefill_base: float = 0.002
    prefill_per_token: float = 0.00002
    decode_per_token: float = 0.002
    output_tokens: int = 8
    startup_delay: float = 0.0  # /health and /ready answer 503 this long after start
    health_delay: float = 0.0  # SGLang's generating /health takes about a second; tests set 0
    healthy: bool = True
    abort_next: int = 0  # the next N streams end with an in-band 503 error chunk after abort_after chunks
    abort_after: int = 2
    cache_report: bool = True  # --enable-cache-report

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass(slots=True)
class EngineStats:
    requests: int = 0
    completed: int = 0
    rejected: int = 0  # 503 queue full
    aborted: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    health_checks: int = 0
    load_polls: int = 0
    peak_load: int = 0  # the most requests running and waiting at once
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    trace: deque[tuple[float, str, str, int, int, int]] = field(  # see Engine.note; the last TRACE requests
        default_factory=lambda: deque(maxlen=TRACE))


class Engine:
    """The scheduler of one replica: running slots, a waiting queue, the prefix cache, counters."""

    def __init__(self, settings: SGLangSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.started = time.monotonic()
        self.cache = PrefixCache(settings.cache_tokens)
        self.stats = EngineStats()
        self.running = 0
        self.waiting = 0
        self.wakeup = asyncio.Condition()
        self.aborts: set[str] = set()
        self.abort_all = False

    def up(self) -> bool:
        return self.settings.healthy and time.monotonic() - self.started >= self.settings.startup_delay

    @property
    def hit_rate(self) -> float:
        return self.stats.cached_tokens / self.stats.prompt_tokens if self.stats.prompt_tokens else 0.0

    async def admit(self) -> bool:
        """Wait for a running slot; False when the waiting queue is full (the caller answers 503)."""
        limit = self.settings.max_queued
        if self.running >= self.settings.max_running and limit is not None and self.waiting >= limit:
            self.stats.rejected += 1
            return False
        self.waiting += 1
        self.stats.peak_load = max(self.stats.peak_load, self.running + self.waiting)
        try:
            async with self.wakeup:
                await self.wakeup.wait_for(lambda: self.running < self.settings.max_running)
                self.running += 1
        finally:
            self.waiting -= 1
        return True

    async def release(self) -> None:
        self.running -= 1
        async with self.wakeup:
            # every waiter re-checks: one woken alone and cancelled before it runs (a client gone) loses the wakeup
            self.wakeup.notify_all()

    def prefill(self, tokens: Sequence[str]) -> tuple[int, float]:
        """Cached tokens of the prompt and the prefill time; the prompt's pages become cached."""
        self.cache.capacity = max(0, self.settings.cache_tokens) // PAGE  # it may change at run time
        keys = page_keys(tokens)
        cached = min(self.cache.match(keys), max(0, len(tokens) - 1))  # SGLang always computes the last token
        self.cache.insert(keys)
        self.stats.prompt_tokens += len(tokens)
        self.stats.cached_tokens += cached
        return cached, self.settings.prefill_base + (len(tokens) - cached) * self.settings.prefill_per_token


    def note(self, arrived: float, body: dict[str, Any], tokens: int, cached: int) -> None:
        """One request's line of the trace (``GET /_control?trace=1``, for the bench's explanation of a hit
        ratio): arrival, a hash of its messages before the first user turn (the shared system prompt) and of
        its first user turn (the conversation), the former's tokens, the prompt's tokens and the cached ones."""
        messages = body.get("messages")
        head, first, shared = "", "", 0
        if isinstance(messages, list):
            for i, message in enumerate(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    head = _digest(messages[:i])
                    first = _digest(message)
                    shared = len(prompt_tokens({"messages": messages[:i]})) - 1  # no <|assistant|> marker
                    break
        self.stats.trace.append((arrived, head, first, shared, tokens, cached))


def _digest(value: Any) -> str:
    return blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=6).hexdigest()


ENGINE = web.AppKey("engine", Engine)


def create_sglang_app(settings: SGLangSettings | None = None, name: str = "sglang") -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[ENGINE] = Engine(settings or SGLangSettings(), name)
    app.add_routes([
        web.get("/health", _health), web.get("/health_generate", _health), web.get("/ready", _ready),
        web.get("/v1/models", _models), web.get("/v1/loads", _loads), web.get("/metrics", _metrics),
        web.post("/v1/chat/completions", _chat), web.post("/v1/completions", _completions),
        web.get("/model_info", _model_info), web.get("/get_model_info", _model_info),
        web.get("/server_info", _server_info), web.get("/get_server_info", _server_info),
        web.get("/flush_cache", _flush), web.post("/flush_cache", _flush), web.post("/abort_request", _abort),
        web.get("/_control", _control_get), web.post("/_control/faults", _control_faults),
        web.post("/_control/reset", _control_reset),
    ])
    return app


# ---- health, load, metrics, control ----------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.stats.health_checks += 1
    if not engine.up():
        return web.Response(status=503)
    await asyncio.sleep(engine.settings.health_delay)
    return web.Response(status=200 if engine.up() else 503)


async def _ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[ENGINE].up() else 503)


async def _models(request: web.Request) -> web.Response:
    model = request.app[ENGINE].settings.model
    return _json({"object": "list", "data": [{"id": model, "object": "model", "created": int(time.time()),
                                              "owned_by": "sglang", "root": model, "parent": None,
                                              "max_model_len": 32768}]})


async def _model_info(request: web.Request) -> web.Response:
    model = request.app[ENGINE].settings.model
    return _json({"model_path": model, "served_model_name": model, "tokenizer_path": model, "is_generation": True,
                  "preferred_sampling_params": None, "weight_version": "default", "load_format": "auto",
                  "reasoning_parser": None, "tool_call_parser": None, "disaggregation_mode": "null",
                  "has_image_understanding": False, "has_audio_understanding": False, "model_type": "emulated",
                  "architectures": ["EmulatedForCausalLM"]})


async def _server_info(request: web.Request) -> web.Response:
    s = request.app[ENGINE].settings
    return _json({"model_path": s.model, "served_model_name": s.model, "tp_size": 1, "dp_size": 1,
                  "max_running_requests": s.max_running, "max_queued_requests": s.max_queued,
                  "context_length": 32768, "enable_metrics": True, "schedule_policy": "fcfs", "status": "ready",
                  "max_total_num_tokens": s.max_total_tokens, "version": "0.5.23", "frontend": "python",
                  "internal_states": [{"last_gen_throughput": 0.0, "memory_usage": {}}]})


async def _loads(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.stats.load_polls += 1
    return _json(loads_body(engine))


async def _metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.stats.load_polls += 1
    return web.Response(text=exposition(engine), content_type="text/plain", charset="utf-8")


async def _flush(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if engine.running or engine.waiting:
        return web.Response(status=400, text="Cache not flushed: there are running or waiting requests.\n")
    engine.cache.flush()
    return web.Response(text="Cache flushed.\nPlease check backend logs for more details. (When there are running or "
                             "waiting requests, the operation will not be performed.)\n")


async def _abort(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = {}
    if isinstance(body, dict):
        if body.get("abort_all"):
            engine.abort_all = True
        elif isinstance(body.get("rid"), str):
            engine.aborts.add(body["rid"])
    return web.Response(status=200)


async def _control_get(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    skip = ("ttft", "e2e") if request.query.get("trace") else ("ttft", "e2e", "trace")
    stats = {f.name: getattr(engine.stats, f.name) for f in fields(engine.stats) if f.name not in skip}
    if "trace" in stats:
        stats["trace"] = list(stats["trace"])
    return _json({"settings": asdict(engine.settings), "stats": stats, "running": engine.running,
                  "waiting": engine.waiting, "cached_pages": len(engine.cache.pages)})


async def _control_faults(request: web.Request) -> web.Response:
    try:
        request.app[ENGINE].settings.update(orjson.loads(await request.read()))
    except (ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(asdict(request.app[ENGINE].settings))


async def _control_reset(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.stats = EngineStats()
    engine.cache.flush()
    return _json({"ok": True})


# ---- generation ---------------------------------------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def _generate(request: web.Request, kind: str) -> web.StreamResponse:
    engine = request.app[ENGINE]
    engine.stats.requests += 1
    body, problem = await _validated(request, kind)
    if problem is not None:
        return _flat_error(400, problem, "BadRequestError")
    assert isinstance(body, dict)
    arrived = time.monotonic()
    if not await engine.admit():
        return _flat_error(503, QUEUE_FULL, "503")
    try:
        tokens = prompt_tokens(body)
        cached, prefill = engine.prefill(tokens)
        engine.note(arrived, body, len(tokens), cached)
        await asyncio.sleep(prefill)
        engine.stats.ttft.observe(time.monotonic() - arrived)
        rid = body["rid"] if isinstance(body.get("rid"), str) else uuid.uuid4().hex
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        count = min(engine.settings.output_tokens, limit) if isinstance(limit, int) and limit > 0 else \
            engine.settings.output_tokens
        usage = _usage(len(tokens), count, cached, engine.settings.cache_report)
        words = _words(engine.name, count).split(" ")[_continued(body):]  # continue_final_message: the rest
        model = body.get("model") if isinstance(body.get("model"), str) else "default"
        if body.get("stream"):
            return await _stream(request, engine, Reply(kind, rid, model, count, usage, arrived, words), body)
        await asyncio.sleep(count * engine.settings.decode_per_token)
        finish = "abort" if engine.abort_all or rid in engine.aborts else "length" if count < \
            engine.settings.output_tokens else "stop"
        engine.stats.generation_tokens += count
        engine.stats.completed += 1
        engine.stats.e2e.observe(time.monotonic() - arrived)
        return _json(_completion(kind, rid, model, " ".join(words), finish, usage))
    finally:
        await engine.release()


async def _validated(request: web.Request, kind: str) -> tuple[Any, str | None]:
    if request.content_type != "application/json":
        return None, "Content-Type must be application/json"
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return None, f"JSON decode error: {exc}"
    if not isinstance(body, dict):
        return None, "Input should be a valid dictionary"
    if kind == "chat" and not body.get("messages"):
        return None, "Messages cannot be empty."
    if kind == "completions" and not body.get("prompt"):
        return None, "Prompt cannot be empty"
    return body, None


@dataclass(frozen=True, slots=True)
class Reply:
    """What one generation answers with."""

    kind: str
    rid: str
    model: str
    count: int
    usage: dict[str, Any]
    arrived: float
    words: list[str]


async def _stream(request: web.Request, engine: Engine, reply: Reply, body: dict[str, Any]) -> web.StreamResponse:
    kind, rid, model, count, usage, arrived = (reply.kind, reply.rid, reply.model, reply.count, reply.usage,
                                               reply.arrived)
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    created = int(time.time())
    abort = engine.settings.abort_next > 0
    if abort:
        engine.settings.abort_next -= 1
    if kind == "chat":
        await response.write(_event(_chunk(kind, rid, created, model, {"reasoning_content": None, "role": "assistant",
                                                                       "content": ""}, None)))
    words = reply.words
    finish = "length" if count < engine.settings.output_tokens else "stop"
    for i, word in enumerate(words):
        if abort and i >= engine.settings.abort_after:
            engine.stats.aborted += 1
            await response.write(_event({"error": {"object": "error", "message": ABORTED,
                                                   "type": "SERVICE_UNAVAILABLE", "param": None, "code": 503}}))
            break
        if engine.abort_all or rid in engine.aborts:
            finish = "abort"
            break
        await asyncio.sleep(engine.settings.decode_per_token)
        await response.write(_event(_chunk(kind, rid, created, model,
                                           {"reasoning_content": None, "content": word + " "}, None)))
    else:
        abort = False
    if not abort:
        await response.write(_event(_chunk(kind, rid, created, model, {"reasoning_content": None}, finish)))
        engine.stats.generation_tokens += count
        engine.stats.completed += 1
        engine.stats.e2e.observe(time.monotonic() - arrived)
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        await response.write(_event({"id": rid, "object": _object(kind, True), "created": created, "model": model,
                                     "choices": [], "usage": usage}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# ---- bodies ---------------------------------------------------------------------------------------


def _usage(prompt: int, completion: int, cached: int, report: bool) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached} if report else None, "reasoning_tokens": 0,
            "completion_tokens_details": None}


def _continued(body: dict[str, Any]) -> int:
    """Words of the answer the request already has: with ``continue_final_message``, the assistant's last
    message is continued, not answered anew (what a cut stream's continuation by prefill relies on)."""
    messages = body.get("messages")
    if not body.get("continue_final_message") or not isinstance(messages, list) or not messages:
        return 0
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return 0
    return len(last["content"].split())


def _words(name: str, count: int) -> str:
    return " ".join([f"{name}:{i}" for i in range(count)])


def _object(kind: str, chunk: bool) -> str:
    if kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _completion(kind: str, rid: str, model: str, text: str, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text,
                                                          "reasoning_content": None},
                                  "logprobs": None, "finish_reason": finish, "matched_stop": None}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "matched_stop": None}
    return {"id": rid, "object": _object(kind, False), "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage, "metadata": {"weight_version": "default"}}


def _chunk(kind: str, rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                                  "matched_stop": None}
    else:
        choice = {"index": 0, "text": delta.get("content") or "", "logprobs": None, "finish_reason": finish,
                  "matched_stop": None}
    return {"id": rid, "object": _object(kind, True), "created": created, "model": model, "choices": [choice]}


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _flat_error(status: int, message: str, type_: str) -> web.Response:
    return _json({"object": "error", "message": message, "type": type_, "param": None, "code": status}, status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def run_sglang(ports: Sequence[int], settings: SGLangSettings, host: str = "127.0.0.1",
                     name: str = "sglang") -> None:
    """Serve one replica per port (each its own engine and cache) until cancelled."""
    runners = []
    for i, port in enumerate(ports):
        replica = SGLangSettings(**asdict(settings))
        runner = web.AppRunner(create_sglang_app(replica, f"{name}-{i}" if len(ports) > 1 else name),
                               handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
