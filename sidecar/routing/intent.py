"""Intent routing: a request to an intent group goes to the target group whose example utterances its last user
message is nearest to, by embedding — through the sidecar's own embeddings path (``Router.complete`` on the
configured embeddings group: any provider, retries and breakers included) — else to the default group.

The examples are embedded once per config (a new ``Intents`` per router, so a reload recomputes them), in the
background: until they are ready a request goes to the default. A request's embedding has ``timeout_seconds``
at most; an embeddings failure or timeout sends it to the default at once and never fails it. The choice is
an ``IntentChoice`` on the trail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sidecar.config import IntentSettings
from sidecar.core.errors import SidecarError
from sidecar.core.types import ChatRequest, Endpoint
from sidecar.policy.intent import IntentChoice, Vector, nearest, normalised
from sidecar.routing.router import Router

log = logging.getLogger("sidecar.intent")
PREPARE_TIMEOUT = 60.0  # seconds for embedding a group's examples at start


class Intents:
    def __init__(self, settings: Mapping[str, IntentSettings], router: Router) -> None:
        self.settings = settings
        self.router = router
        self.index: dict[str, list[tuple[str, list[Vector]]]] = {}  # intent group → (target, example vectors)
        self.preparing: asyncio.Task[None] | None = None

    def prepare(self) -> None:
        """Embed every group's examples in the background (once; again only if it failed)."""
        if self.preparing is None or (self.preparing.done() and len(self.index) < len(self.settings)):
            self.preparing = asyncio.get_running_loop().create_task(self._prepare())

    async def _prepare(self) -> None:
        for group, settings in self.settings.items():
            if group in self.index:
                continue
            examples = [text for _, texts in settings.routes for text in texts]
            try:
                async with asyncio.timeout(PREPARE_TIMEOUT):
                    vectors = await self._embed(settings.embeddings, examples)
            except (SidecarError, TimeoutError) as error:
                log.warning("intent routing for %s: embedding its examples failed (%s); requests go to %s",
                            group, getattr(error, "error_class", "timeout"), settings.default)
                continue
            if vectors is None or len(vectors) != len(examples):
                log.warning("intent routing for %s: the embeddings answer did not fit its examples", group)
                continue
            index, at = [], 0
            for target, texts in settings.routes:
                index.append((target, [v for v in vectors[at:at + len(texts)] if v is not None]))
                at += len(texts)
            self.index[group] = index

    async def _embed(self, group: str, texts: list[str]) -> list[Vector | None] | None:
        body = {"model": group, "input": texts}
        response, _ = await self.router.complete(ChatRequest(model=group, body=body, endpoint=Endpoint.EMBEDDINGS),
                                                 catch_all=False)
        data = response.data.get("data")
        if not isinstance(data, list):
            return None
        items = sorted((d for d in data if isinstance(d, dict)), key=lambda d: d.get("index", 0))
        return [normalised(d["embedding"]) if isinstance(d.get("embedding"), list) else None for d in items]

    async def choose(self, group: str, chat: ChatRequest) -> IntentChoice:
        """Where a request to the intent group ``group`` goes, and why."""
        settings = self.settings[group]
        index = self.index.get(group)
        if index is None:
            self.prepare()
            return IntentChoice(group, settings.default, "not_ready")
        text = last_user_text(chat.body)
        if not text:
            return IntentChoice(group, settings.default, "no_text")
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                vectors = await self._embed(settings.embeddings, [text])
        except (SidecarError, TimeoutError):
            return IntentChoice(group, settings.default, "embeddings_failed")
        vector = vectors[0] if vectors else None
        if vector is None:
            return IntentChoice(group, settings.default, "embeddings_failed")
        target, score = nearest(vector, index)
        if target is None or score < settings.threshold:
            return IntentChoice(group, settings.default, "below_threshold", score if target else None)
        return IntentChoice(group, target, "nearest", score)


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the request's last user message (its text parts joined)."""
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return ""
    return ""
