"""The catch-all: what the app gets when every deployment and fallback failed.

Either a configured static answer, or — when the operator enabled it — the last good answer to the
identical request, from a small bounded LRU store. Keys are a digest of the request body without its
transport options (``stream``, ``stream_options``), so a streamed and a plain request share answers.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from typing import Any

import orjson

from sidecar.config import CatchAll
from sidecar.core.types import ChatRequest, ChatResponse, Endpoint
from sidecar.formats.continuation import StreamProgress
from sidecar.formats.openai import completion_from_text

TRANSPORT_FIELDS = ("stream", "stream_options")


class CatchAllStore:
    __slots__ = ("_answers", "settings")

    def __init__(self, settings: CatchAll) -> None:
        self.settings = settings
        self._answers: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    def remember(self, request: ChatRequest, response: ChatResponse) -> None:
        if self.settings.last_good and request.endpoint is Endpoint.CHAT:
            self._store(_key(request), response.data)

    def remember_text(self, request: ChatRequest, progress: StreamProgress) -> None:
        if self.settings.last_good and progress.continuable and progress.finished:
            self._store(_key(request), completion_from_text(progress.text, progress.model or request.model,
                                                            progress.id or "chatcmpl-sidecar"))

    def response(self, request: ChatRequest, *, remembered: bool = True) -> tuple[ChatResponse, str] | None:
        """(answer, "last_good" | "static"), or None when the catch-all has nothing to offer. ``remembered``
        False: not the remembered answers (a rule restricts the request; they may come from anywhere)."""
        if request.endpoint is not Endpoint.CHAT:
            return None
        if self.settings.last_good and remembered:
            data = self._answers.get(_key(request))
            if data is not None:
                return ChatResponse(data), "last_good"
        if self.settings.static_response is not None:
            data = completion_from_text(self.settings.static_response, request.model,
                                        f"chatcmpl-{uuid.uuid4().hex}")
            return ChatResponse(data), "static"
        return None

    def _store(self, key: bytes, data: dict[str, Any]) -> None:
        self._answers[key] = data
        self._answers.move_to_end(key)
        while len(self._answers) > self.settings.max_entries:
            self._answers.popitem(last=False)


def _key(request: ChatRequest) -> bytes:
    body = {k: v for k, v in request.body.items() if k not in TRANSPORT_FIELDS}
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
