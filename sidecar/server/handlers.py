"""Thin handlers: read the body, parse it, hand it to the router, render the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter

import orjson
from aiohttp import web

from sidecar.core.cost import format_cost, request_cost
from sidecar.core.errors import BodyTooLarge, SidecarError
from sidecar.core.types import ChatRequest, ChatResponse, Endpoint, StreamChunk
from sidecar.formats import openai as openai_format
from sidecar.formats.sse import DONE_EVENT
from sidecar.policy.plan import FallbackStep
from sidecar.routing.outcome import Outcome, StreamSink
from sidecar.server.keys import STATE, AppState
from sidecar.server.middleware import OUTCOME_HEADERS, REQUEST_ID, request_id_of
from sidecar.state import cache
from sidecar.telemetry.logs import log_request
from sidecar.telemetry.record import CURRENT_OUTCOME, RequestRecord

JSON = "application/json"
CACHE_HEADER = "x-sidecar-cache"  # hit | miss, on requests the response cache applies to
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def outcome_headers(outcome: Outcome, request_id: str) -> dict[str, str]:
    headers = {REQUEST_ID: request_id, "x-sidecar-attempts": str(outcome.attempts)}
    if outcome.deployment is not None:
        headers["x-sidecar-deployment"] = outcome.deployment
    if outcome.fallback is not None:
        headers["x-sidecar-fallback"] = outcome.fallback
    return headers


async def read_body(request: web.Request, state: AppState) -> bytes:
    length = request.content_length
    if length is not None and length > state.config.sidecar.max_body_bytes:
        raise BodyTooLarge(f"the request body is larger than {state.config.sidecar.max_body_size_mb:g} MiB")
    return await request.read()


class SSESink:
    """The app's connection as an event stream: ``start`` commits status and headers; writes wait for the
    app to drain (backpressure)."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(self, outcome: Outcome) -> None:
        headers = {**SSE_HEADERS, **outcome_headers(outcome, request_id_of(self.request))}
        self.response = web.StreamResponse(status=200, headers=headers)
        await self.response.prepare(self.request)


class OpenAIStreamSink(SSESink):
    """Renders chunks as OpenAI SSE: each chunk's JSON as it came, then ``[DONE]``."""

    __slots__ = ()

    async def send(self, chunks: list[StreamChunk]) -> None:
        assert self.response is not None
        if len(chunks) == 1:
            await self.response.write(b"data: " + chunks[0].raw + b"\n\n")
        else:
            await self.response.write(b"".join(b"data: " + c.raw + b"\n\n" for c in chunks))

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write(DONE_EVENT)
        await self.response.write_eof()

    async def fail(self, error: SidecarError) -> None:
        assert self.response is not None
        body = openai_format.error_body(error.message, error.type, error.param, error.code)
        await self.response.write(b"data: " + body + b"\n\n")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How answers go back to the app in the wire format it spoke: a stream sink and a body renderer."""

    sink: Callable[[web.Request, ChatRequest], StreamSink]
    body: Callable[[ChatResponse], bytes]


def _openai_body(response: ChatResponse) -> bytes:
    return response.raw if response.raw is not None else orjson.dumps(response.data)


OPENAI = Dialect(lambda request, chat: OpenAIStreamSink(request), _openai_body)


def openai_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        chat = openai_format.parse_request(await read_body(request, state), endpoint)
        return await serve(request, state, chat, OPENAI)

    return handler


async def serve(request: web.Request, state: AppState, chat: ChatRequest, dialect: Dialect) -> web.StreamResponse:
    """Route one request and render the answer in the app's dialect; records the outcome either way."""
    router = state.router
    assert router is not None
    metrics = state.metrics
    started = perf_counter()  # not the loop's clock: uvloop's moves in whole milliseconds
    metrics.in_flight += 1
    CURRENT_OUTCOME.set(None)  # keep-alive requests share a task's context
    group = chat.model if router.has_group(chat.model) else ""  # app-chosen names are not labels
    record = RequestRecord(request_id_of(request), group, stream=chat.stream)
    tracing = state.tracing
    spans = None if tracing is None else tracing.start_request(request.method, request.path, request.headers,
                                                                chat.model, chat.body)
    outcome: Outcome | None = None
    try:
        cache_key, hit = (None, None) if state.cache is None else await _lookup(request, state.cache, chat)
        if hit is not None:
            record.outcome, record.status = "cache_hit", 200
            return hit
        if state.budgets is not None:
            state.budgets.check(chat.model)  # memory only; raises BudgetExceeded before any upstream call
        if chat.stream:
            sink = dialect.sink(request, chat)
            outcome = await router.stream(chat, sink)
            record.outcome, record.status = ("error" if outcome.failed else "success"), 200
            assert sink.response is not None
            return sink.response
        response, outcome = await router.complete(chat)
        record.outcome, record.status = "success", 200
        return _render(state, dialect.body(response), outcome, record, cache_key)
    except SidecarError as error:
        record.status, record.error_type = error.status, error.error_class
        tried = outcome or CURRENT_OUTCOME.get()
        if isinstance(tried, Outcome) and tried.attempts:
            request[OUTCOME_HEADERS] = outcome_headers(tried, record.request_id)
        raise
    except asyncio.CancelledError:
        record.outcome, record.status = "cancelled", 499
        raise
    finally:
        metrics.in_flight -= 1
        record.seconds = perf_counter() - started
        _fill(record, outcome or CURRENT_OUTCOME.get(), state)  # type: ignore[arg-type]
        if spans is not None:
            record.trace_id = spans.trace_id
            spans.finish(record, outcome or CURRENT_OUTCOME.get())  # type: ignore[arg-type]
        metrics.observe(record)
        log_request(record)
        if state.budgets is not None and record.cost:
            state.budgets.spend((record.group, record.fallback or record.group), record.cost)


def _render(state: AppState, body: bytes, outcome: Outcome, record: RequestRecord,
            cache_key: str | None) -> web.Response:
    """A whole answer with its headers; stored in the response cache when the request is cacheable."""
    headers = outcome_headers(outcome, record.request_id)
    record.cost = request_cost(outcome.usage, state.prices.get(outcome.deployment or ""))
    if record.cost is not None:
        headers["x-sidecar-cost"] = format_cost(record.cost)
    if cache_key is not None and state.cache is not None:
        headers[CACHE_HEADER] = cache.MISS
        if outcome.catch_all is None:  # a stand-in answer is not the upstream's: never cached
            state.cache.put(cache_key, body)
    return web.Response(body=body, headers=headers, content_type=JSON)


async def _lookup(request: web.Request, responses: cache.ResponseCache,
                  chat: ChatRequest) -> tuple[str | None, web.Response | None]:
    """(the key to store this request's answer under, or None; the cached answer, or None)."""
    key, lookup = responses.key_for(chat, request.headers)
    if key is None or not lookup:
        return key, None
    body = await responses.get(key)
    if body is None:
        return key, None
    headers = {REQUEST_ID: request_id_of(request), "x-sidecar-attempts": "0", CACHE_HEADER: cache.HIT}
    return key, web.Response(body=body, headers=headers, content_type=JSON)


def _fill(record: RequestRecord, outcome: Outcome | None, state: AppState) -> None:
    """Copy what the router did into the record (the outcome may be partial when routing raised)."""
    if outcome is None:
        return
    record.deployment = outcome.deployment or ""
    record.attempts, record.errors, record.ttft, record.usage = (outcome.attempts, outcome.errors, outcome.ttft,
                                                                 outcome.usage)
    record.fallback = outcome.fallback
    if record.fallback is not None:
        record.fallback_cause = next((s.cause for s in reversed(outcome.trail) if isinstance(s, FallbackStep)),
                                     None)
    if record.cost is None and record.usage is not None:
        record.cost = request_cost(record.usage, state.prices.get(record.deployment))


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "llm-sidecar"}
            for name in state.config.groups]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=JSON)
