"""Anthropic Messages ingress: ``POST /v1/messages`` served through the same router as OpenAI requests.

An Anthropic upstream's own bytes (``ChatResponse.native`` / ``StreamChunk.native``) are returned verbatim;
anything else is translated from the router's OpenAI chunks into Anthropic's exact event sequence.
Errors before the stream starts are rendered in Anthropic's shape by ``middleware.guarded`` (the path is in
``routes.ANTHROPIC_PATHS``); after it, as an ``event: error``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk
from sidecar.formats import anthropic_ingress
from sidecar.formats.anthropic_stream import OpenAIToAnthropic, error_event
from sidecar.server.handlers import Dialect, SSESink, read_body, serve
from sidecar.server.keys import STATE
from sidecar.server.middleware import public_fields


class AnthropicStreamSink(SSESink):
    """Renders the router's chunks as Anthropic SSE.

    Passthrough (the first chunk carries ``native`` bytes): upstream events are forwarded verbatim and
    translated chunks are ignored — except after a mid-stream resume by another deployment, whose chunks
    continue the message in a new text block. Otherwise every chunk is translated by ``OpenAIToAnthropic``.
    """

    __slots__ = ("encoder", "native", "native_blocks", "native_ended")

    def __init__(self, request: web.Request, chat: ChatRequest) -> None:
        super().__init__(request)
        self.encoder = OpenAIToAnthropic(chat.model, thinking=chat.extras is not None and chat.extras.thinking)
        self.native: bool | None = None
        self.native_blocks = 0  # content blocks the upstream opened, so a resumed answer numbers after them
        self.native_ended = False

    async def send(self, chunks: list[StreamChunk]) -> None:
        assert self.response is not None
        if self.native is None and chunks:
            self.native = chunks[0].native is not None
        out = []
        same_event = False  # the reader puts an event's extra chunks right after its native one
        for chunk in chunks:
            if chunk.native is not None:
                same_event = True
                out.append(chunk.native)
                self._observe(chunk.native)
            elif not self.native:
                out.append(self.encoder.feed(chunk.data))
            elif not same_event and chunk.data:
                out.append(self._resumed(chunk.data))
        if out:
            await self.response.write(b"".join(out))

    def _observe(self, native: bytes) -> None:
        """One native piece may hold several events (a translated upstream's, e.g. Bedrock's)."""
        lines = b"\n" + native  # an event line starts a line; the same words inside a text delta do not count
        self.native_blocks += lines.count(b"\nevent: content_block_start\n")
        if b"\nevent: message_stop\n" in lines:
            self.native_ended = True

    def _resumed(self, data: dict[str, Any]) -> bytes:
        """Another attempt continues the upstream's message: no second message_start, blocks numbered on."""
        if not self.encoder.started:
            self.encoder.started = True
            self.encoder.next_block = self.native_blocks
        return self.encoder.feed(data)

    async def finish(self) -> None:
        assert self.response is not None
        if not self.native_ended:
            self.encoder.started = self.encoder.started or bool(self.native)
            await self.response.write(self.encoder.end())
        await self.response.write_eof()

    async def fail(self, error: SidecarError) -> None:
        assert self.response is not None
        message = public_fields(error)[0]
        await self.response.write(error_event(anthropic_ingress.error_type(error.status), message))


def _anthropic_body(response: ChatResponse) -> bytes:
    """An Anthropic upstream's own bytes as they came; anything else translated."""
    if response.native is not None:
        return response.native
    return orjson.dumps(anthropic_ingress.to_message(response.data))


def _anthropic_body_thinking(response: ChatResponse) -> bytes:
    """As ``_anthropic_body``, with a translated answer's reasoning text as a thinking block."""
    if response.native is not None:
        return response.native
    return orjson.dumps(anthropic_ingress.to_message(response.data, thinking=True))


ANTHROPIC = Dialect(AnthropicStreamSink, _anthropic_body)
ANTHROPIC_THINKING = Dialect(AnthropicStreamSink, _anthropic_body_thinking)  # the app asked to see thinking


async def messages_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    headers = request.headers
    beta = ",".join(headers.getall("anthropic-beta")) if "anthropic-beta" in headers else None
    chat = anthropic_ingress.parse_request(await read_body(request, state), beta, headers.get("anthropic-version"))
    thinking = chat.extras is not None and chat.extras.thinking
    return await serve(request, state, chat, ANTHROPIC_THINKING if thinking else ANTHROPIC)
