"""The semantic cache on the request path: which requests it applies to, the last user message embedded
through the configured embeddings model group (the real embeddings path: the router, its retries and
breakers), and a hit when an answer to a close enough question — same group, same parameters — is known.

Embeddings that are slow or fail make a plain miss within ``timeout``: the request goes on to the upstream
as if there were no semantic cache, and its answer is not stored (there is no vector to store it under).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson

from sidecar.config.shared import SemanticSettings
from sidecar.core.types import ChatRequest, Endpoint
from sidecar.routing.router import Router
from sidecar.state.cache import EXCLUDED_FIELDS
from sidecar.state.semantic import SemanticIndex
from sidecar.state.semantic_share import SemanticShare

log = logging.getLogger("sidecar.semantic")
SEMANTIC_HIT = "semantic-hit"


def question(body: dict[str, Any]) -> tuple[str, str] | None:
    """(the last user message's text, a digest of everything else that shapes the answer), or None when the
    request has no user text to embed."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message.get("content"))
            if not text:
                return None
            rest = {k: v for k, v in body.items() if k not in EXCLUDED_FIELDS}
            rest["messages"] = [*messages[:i], {**message, "content": None}, *messages[i + 1:]]
            digest = hashlib.blake2b(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()
            return text, digest
    return None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class SemanticCache:
    """The opt-in groups' semantic lookups and stores, over one bounded in-memory index."""

    def __init__(self, settings: SemanticSettings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.groups = frozenset(settings.groups)
        self.index = SemanticIndex(settings.max_entries, settings.ttl)
        self.hits = self.misses = self.skipped = 0  # skipped: embeddings slow or failed (a plain miss)
        self.share: SemanticShare | None = None  # the fleet's entries through Redis; set by the assembly

    def applies(self, chat: ChatRequest) -> bool:
        if chat.model not in self.groups or chat.endpoint is not Endpoint.CHAT or chat.continuation:
            return False
        body = chat.body
        if body.get("tools") and not self.settings.tools:
            return False
        temperature = body.get("temperature")
        deterministic = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
        return (deterministic or self.settings.sampled) and body.get("n") in (None, 1)

    async def lookup(self, chat: ChatRequest) -> tuple[tuple[str, list[float]] | None, tuple[float, bytes] | None]:
        """((bucket, vector) to store this request's answer under, or None; (similarity, answer) on a hit)."""
        asked = question(chat.body)
        if asked is None:
            return None, None
        text, params = asked
        vector = await self._embed(text)
        if vector is None:
            self.skipped += 1
            return None, None
        bucket = f"{chat.model}\0{params}"
        best = self.index.best(bucket, vector)
        if best is not None and best[0] >= self.settings.threshold:
            self.hits += 1
            return (bucket, vector), best
        self.misses += 1
        return (bucket, vector), None

    def store(self, place: tuple[str, list[float]], answer: bytes) -> None:
        self.index.add(place[0], place[1], answer)
        if self.share is not None:
            self.share.publish(place[0], place[1], answer)

    async def _embed(self, text: str) -> list[float] | None:
        model = self.settings.embedding_model
        request = ChatRequest(model, {"model": model, "input": [text]}, Endpoint.EMBEDDINGS)
        try:
            response, outcome = await asyncio.wait_for(self.router.complete(request), self.settings.timeout)
            if outcome.catch_all is not None:
                return None  # a stand-in (the last good answer to something else) is no embedding of this text
            vector = response.data["data"][0]["embedding"] if response.data else orjson.loads(
                response.raw or b"{}")["data"][0]["embedding"]
        except Exception as error:  # slow, down, or an answer without a vector: a plain miss
            log.debug("semantic cache: no embedding (%s)", type(error).__name__)
            return None
        if not isinstance(vector, list) or not all(isinstance(v, int | float) for v in vector):
            return None
        return [float(v) for v in vector]

    def render(self) -> str:
        return ("# HELP llm_sidecar_semantic_cache_total Semantic cache lookups: hit, miss, or skipped (no "
                "embedding in time).\n# TYPE llm_sidecar_semantic_cache_total counter\n"
                f'llm_sidecar_semantic_cache_total{{result="hit"}} {self.hits}\n'
                f'llm_sidecar_semantic_cache_total{{result="miss"}} {self.misses}\n'
                f'llm_sidecar_semantic_cache_total{{result="skipped"}} {self.skipped}\n'
                "# HELP llm_sidecar_semantic_cache_entries Answers in the semantic cache's index.\n"
                "# TYPE llm_sidecar_semantic_cache_entries gauge\n"
                f"llm_sidecar_semantic_cache_entries {len(self.index)}\n"
                + (self.share.render() if self.share is not None else ""))

    async def aclose(self) -> None:
        if self.share is not None:
            await self.share.aclose()
