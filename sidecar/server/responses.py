"""OpenAI Responses API ingress: ``POST /v1/responses`` served through the same pipeline as chat requests.

An OpenAI deployment's own bytes (``ChatResponse.native`` / ``StreamChunk.native``) are returned verbatim;
anything else is rendered from the router's Chat answer into the Response object and its exact event sequence
(``formats.responses_stream``). Errors before the stream starts are OpenAI-shaped (``middleware.guarded``);
after it, the ``error`` event and ``response.failed``.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk
from sidecar.formats import responses
from sidecar.formats.responses_stream import ChatToResponses
from sidecar.server.handlers import Dialect, SSESink, read_body, serve
from sidecar.server.keys import STATE
from sidecar.server.middleware import public_fields


class ResponsesStreamSink(SSESink):
    """Renders the router's chunks as Responses SSE, or forwards an OpenAI deployment's own events while the
    renderer follows them (so a resumed answer continues the same response)."""

    __slots__ = ("renderer",)

    def __init__(self, request: web.Request, chat: ChatRequest) -> None:
        super().__init__(request)
        self.renderer = ChatToResponses(chat.source or {})

    async def send(self, chunks: list[StreamChunk]) -> None:
        assert self.response is not None
        out = []
        native_event = False  # the reader puts an event's extra chunks right after its native one
        for chunk in chunks:
            if chunk.native is not None:
                native_event = True
                out.append(chunk.native)
                self._observe(chunk.native)
            elif not native_event and chunk.data:
                out.append(self.renderer.feed(chunk.data))
        if out:
            await self.response.write(b"".join(out))

    def _observe(self, native: bytes) -> None:
        _, _, data = native.partition(b"data: ")
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict):
            self.renderer.observe(event)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write(self.renderer.end())
        await self.response.write_eof()

    async def fail(self, error: SidecarError) -> None:
        assert self.response is not None
        message, _, code = public_fields(error)  # redacted: upstream text can echo keys and addresses
        await self.response.write(self.renderer.fail(error.status, error.type, code, message))


def _dialect(chat: ChatRequest) -> Dialect:
    source = chat.source or {}

    def body(response: ChatResponse) -> bytes:
        if response.native is not None:
            return response.native
        return orjson.dumps(responses.to_response(response.data, source))

    return Dialect(ResponsesStreamSink, body)


async def responses_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    chat = responses.parse_request(await read_body(request, state))
    return await serve(request, state, chat, _dialect(chat))
