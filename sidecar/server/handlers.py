"""Thin handlers: read the body, parse it, hand it to the pipeline, render the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from sidecar.core.cost import format_cost
from sidecar.core.errors import BodyTooLarge, RequestTimeout, SidecarError
from sidecar.core.types import ChatRequest, ChatResponse, Endpoint, StreamChunk
from sidecar.formats import openai as openai_format
from sidecar.formats.sse import DONE_EVENT
from sidecar.routing.outcome import Outcome, StreamSink
from sidecar.server.keys import STATE, AppState
from sidecar.server.middleware import OUTCOME_HEADERS, REQUEST_ID, public_fields, request_id_of

JSON = "application/json"
CACHE_HEADER = "x-sidecar-cache"  # hit | miss | coalesced, on requests the response cache applies to
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def outcome_headers(outcome: Outcome, request_id: str) -> dict[str, str]:
    headers = {REQUEST_ID: request_id, "x-sidecar-attempts": str(outcome.attempts)}
    if outcome.deployment is not None:
        headers["x-sidecar-deployment"] = outcome.deployment
    if outcome.fallback is not None:
        headers["x-sidecar-fallback"] = outcome.fallback
    if outcome.cache is not None:
        headers[CACHE_HEADER] = outcome.cache
    return headers


MAX_JSON_VALUES = 500_000  # a 300k-token embeddings batch as token ids fits; parsed, at most ~40 MB


async def read_body(request: web.Request, state: AppState) -> bytes:
    """The whole body, within ``max_body_size_mb`` and ``listeners.body_timeout`` (a timer only when the body
    is not already all there, as a small body is with its head), and within ``MAX_JSON_VALUES``."""
    sidecar = state.config.sidecar
    length = request.content_length
    if length is not None and length > sidecar.max_body_bytes:
        raise BodyTooLarge(f"the request body is larger than {sidecar.max_body_size_mb:g} MiB")
    if request.content.is_eof():
        return _within_values(await request.read())
    try:
        async with asyncio.timeout(sidecar.listeners.body_timeout):
            return _within_values(await request.read())
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {sidecar.listeners.body_timeout:g} s") from None


def _within_values(body: bytes) -> bytes:
    """``body`` if it can hold at most ``MAX_JSON_VALUES`` values: parsed, each small value is a Python object
    of 30-70 bytes, so a body of bytes the size cap allows (``[{},{},…]``) would take a gigabyte. Counted from
    the separators and openings (an upper bound: those inside strings count too), in C, before any parse."""
    if len(body) > MAX_JSON_VALUES and body.count(b",") + body.count(b"[") + body.count(b"{") > MAX_JSON_VALUES:
        raise BodyTooLarge(f"the request body holds more than {MAX_JSON_VALUES:,} JSON values")
    return body


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
        message, param, code = public_fields(error)
        body = openai_format.error_body(message, error.type, param, code)
        await self.response.write(b"data: " + body + b"\n\n")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How answers go back to the app in the wire format it spoke: a stream sink and a body renderer."""

    sink: Callable[[web.Request, ChatRequest], StreamSink]
    body: Callable[[ChatResponse], bytes]


OPENAI = Dialect(lambda request, chat: OpenAIStreamSink(request), openai_format.response_bytes)


def openai_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        chat = openai_format.parse_request(await read_body(request, state), endpoint)
        return await serve(request, state, chat, OPENAI)

    return handler


async def serve(request: web.Request, state: AppState, chat: ChatRequest, dialect: Dialect) -> web.StreamResponse:
    """Hand the request to the pipeline and render what it gives back in the app's dialect."""
    pipeline = state.pipeline
    assert pipeline is not None
    request_id = request_id_of(request)
    try:
        if chat.stream:
            sink = dialect.sink(request, chat)
            await pipeline.stream(chat, request, request_id, sink)
            assert sink.response is not None
            return sink.response
        answer = await pipeline.complete(chat, request, request_id)
    except SidecarError as error:
        tried = error.outcome
        if isinstance(tried, Outcome) and tried.attempts:
            request[OUTCOME_HEADERS] = outcome_headers(tried, request_id)
        raise
    if answer.outcome is None:  # from the cache
        headers = {REQUEST_ID: request_id, "x-sidecar-attempts": "0"}
    else:
        headers = outcome_headers(answer.outcome, request_id)
    if answer.cost is not None:
        headers["x-sidecar-cost"] = format_cost(answer.cost)
    if answer.cache is not None:
        headers[CACHE_HEADER] = answer.cache
    if answer.similarity is not None:
        headers["x-sidecar-cache-similarity"] = f"{answer.similarity:.4f}"
    return web.Response(body=dialect.body(answer.response), headers=headers, content_type=JSON)


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "llm-sidecar"}
            for name in state.config.groups]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=JSON)
