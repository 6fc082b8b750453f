"""OpenAI's own Responses API as an upstream, for Responses apps: their body goes to ``{api_base}/responses``
untouched (state, built-in tools and reasoning items work as at OpenAI), and the answer's bytes come back to
them verbatim (``ChatResponse.native`` / ``StreamChunk.native``), while the router reads it as Chat
(``formats.responses_upstream``) for usage, cost, progress and continuation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from sidecar.core.errors import UpstreamError, UpstreamServerError
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk, WireFormat
from sidecar.formats.common import StreamErrorEvent
from sidecar.formats.openai import usage_from
from sidecar.formats.responses_upstream import ResponsesToChat, Translated, response_to_completion
from sidecar.formats.sse import MAX_EVENT, encode_event
from sidecar.providers.base import TranslatingReader, with_partial


def passthrough(request: ChatRequest) -> bool:
    """The app spoke the Responses API and nothing was changed since (a continuation goes through Chat)."""
    return request.wire is WireFormat.RESPONSES and request.source is not None and not request.continuation


def body_for(request: ChatRequest, model: str) -> bytes:
    return orjson.dumps({**request.source, "model": model})  # type: ignore[dict-item]


def read_response(body: bytes) -> ChatResponse:
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        completion = response_to_completion(data)
    except ValueError as exc:
        raise UpstreamServerError(f"the upstream sent a malformed answer: {exc}", upstream_status=200) from None
    return ChatResponse(completion, None, usage_from(completion.get("usage")), native=body)


class ResponsesStreamReader(TranslatingReader):
    """Responses SSE → Chat chunks, every upstream event riding along as bytes on the first chunk it became."""

    __slots__ = ("classify",)
    translator: ResponsesToChat

    def __init__(self, *, include_usage: bool, classify: Callable[[dict[str, Any]], UpstreamError],
                 max_event: int = MAX_EVENT) -> None:
        super().__init__(ResponsesToChat(include_usage=include_usage, max_event=max_event))
        self.classify = classify  # an in-band error event → the error class (the OpenAI adapter's rules)

    def feed(self, data: bytes) -> list[StreamChunk]:
        return self._chunks(self.translator.feed, data)

    def finish(self) -> list[StreamChunk]:
        return self._chunks(lambda _: self.translator.finish(), b"")

    def _chunks(self, translate, data: bytes) -> list[StreamChunk]:  # type: ignore[no-untyped-def]
        try:
            translated = translate(data)
        except StreamErrorEvent as exc:
            raise with_partial(self.classify(exc.payload), self._convert(exc.partial)) from None
        return self._convert(translated)

    @staticmethod
    def _convert(translated: list[Translated]) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        for item in translated:
            chunks = [StreamChunk(orjson.dumps(c), c, usage_from(c.get("usage"))) for c in item.chunks]
            if item.data is not None:  # an event nobody could read is skipped, not forwarded
                if not chunks:
                    chunks = [StreamChunk(b"", {})]
                chunks[0].native = encode_event(item.event.data, item.event.event)
            out += chunks
        return out
