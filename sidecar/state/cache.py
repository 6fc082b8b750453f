"""The response cache: whole answers to identical, deterministic requests, kept in memory or in Redis.

``cache_key`` is pure: a digest of the endpoint, the model group and the canonical request body (sorted
keys, without the fields that do not change the answer). ``cacheable`` says which requests qualify:
OpenAI-format chat, completions and embeddings, and Anthropic-format chat without Anthropic-only features —
chat and completions only when deterministic (``temperature`` 0, ``n`` absent or 1) unless the mode is
``all``; streams only for chat (a stream is stored as the whole answer it spelt, see ``routing.cached``).
``ResponseCache`` stores answer bytes in an injected aiocache backend. A Redis that fails or is slow is a
miss, never an error: lookups wait at most ``GET_TIMEOUT`` and the ``RedisGate`` skips Redis for a while
after a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.config.shared import CacheSettings
from sidecar.core.types import ChatRequest, Endpoint, WireFormat
from sidecar.state.redis import RedisGate, connection_options

log = logging.getLogger("sidecar.cache")
# Fields that do not change the answer: who asked, for what bookkeeping, and how it is delivered.
EXCLUDED_FIELDS = frozenset({"user", "metadata", "stream", "stream_options", "store"})
GET_TIMEOUT = 0.05  # a lookup slower than this is a miss
SET_TIMEOUT = 0.5  # stores happen after the answer is sent
HIT, MISS = "hit", "miss"


def cache_key(request: ChatRequest, generation: str = "") -> str:
    """A stable digest of what determines the answer: endpoint, model group and canonical body, and the
    ``generation`` — the digest of the deployment set, so answers from a replaced set are never served."""
    body = {k: v for k, v in request.body.items() if k not in EXCLUDED_FIELDS}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(canonical, digest_size=20, person=b"llm-sidecar")
    digest.update(f"\0{request.endpoint.value}\0{request.model}\0{generation}".encode())
    return digest.hexdigest()


def _is_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def cacheable(request: ChatRequest, mode: str = "deterministic") -> bool:
    """May this request's answer be cached (and answered from the cache)?"""
    if request.continuation or (request.stream and request.endpoint is not Endpoint.CHAT):
        return False
    if request.wire is not WireFormat.OPENAI and (request.wire is not WireFormat.ANTHROPIC or request.native_only):
        return False
    if request.endpoint is Endpoint.EMBEDDINGS or mode == "all":
        return True
    body = request.body
    return _is_zero(body.get("temperature")) and body.get("n") in (None, 1)


def directives(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(lookup, store) from the request's ``Cache-Control``: ``no-cache`` skips the lookup (the fresh
    answer is still stored); ``no-store`` skips both."""
    value = headers.get("cache-control")
    if not value:
        return True, True
    tokens = {t.strip().lower() for t in value.split(",")}
    if "no-store" in tokens:
        return False, False
    return "no-cache" not in tokens, True


class BytesSerializer:
    """Answer bytes as they are (aiocache's default serializers would JSON- or str-encode them)."""

    encoding = None

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, value: bytes | None) -> bytes | None:
        return value


def memory_backend(settings: CacheSettings) -> Any:
    """aiocache's memory cache, bounded to ``max_size`` entries (the oldest stored goes first)."""
    from aiocache import SimpleMemoryCache

    class BoundedMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
        async def _set(self, key: str, value: object, ttl: float | None = None, _cas_token: object = None,
                       _conn: object = None) -> bool:
            result: bool = await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
            while len(self._cache) > settings.max_size:
                await self._delete(next(iter(self._cache)))
            return result

    return BoundedMemoryCache(namespace=settings.namespace, timeout=None)


def redis_backend(settings: CacheSettings) -> Any:
    """aiocache's Redis cache with short timeouts and no retries of its own."""
    from aiocache import RedisCache

    redis = settings.redis
    assert redis is not None
    pool_options = connection_options(redis)
    timeout = pool_options.pop("socket_connect_timeout")
    return RedisCache(serializer=BytesSerializer(), namespace=settings.namespace, timeout=None,
                      endpoint=redis.host, port=redis.port, db=redis.db,
                      password=redis.password.value if redis.password else None, ssl=redis.ssl,
                      create_connection_timeout=timeout, connection_pool_kwargs=pool_options)


class ResponseCache:
    """Answer bytes by ``cache_key`` in ``backend`` (any aiocache cache) for ``settings.ttl`` seconds.

    ``gate`` is set for a remote backend: while it is shut (Redis failed recently) lookups are misses and
    stores are dropped, without touching the network.
    """

    def __init__(self, settings: CacheSettings, backend: Any, gate: RedisGate | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.gate = gate
        self.ttl = settings.ttl
        self.mode = settings.mode
        self._stores: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> ResponseCache:
        if settings.type == "redis":
            assert settings.redis is not None
            return cls(settings, redis_backend(settings), RedisGate("response cache", settings.redis))
        return cls(settings, memory_backend(settings))

    def key_for(self, request: ChatRequest, headers: Mapping[str, str],
                generation: str = "") -> tuple[str | None, bool]:
        """(key to store the answer under, whether to look it up first); key None: the cache stays out."""
        if not cacheable(request, self.mode):
            return None, False
        lookup, store = directives(headers)
        if not (store or lookup):
            return None, False
        try:
            return cache_key(request, generation), lookup
        except TypeError:  # a value orjson cannot encode (bodies parsed by orjson never have one)
            return None, False

    async def get(self, key: str) -> bytes | None:
        """The stored answer, or None (also when the backend fails or is slow)."""
        gate = self.gate
        if gate is None:
            return await self.backend.get(key)  # type: ignore[no-any-return]
        if not gate.open:
            return None
        try:
            value = await asyncio.wait_for(self.backend.get(key), GET_TIMEOUT)
        except Exception as error:  # timeouts, connection errors, protocol errors: all a miss
            gate.failed(error)
            return None
        gate.succeeded()
        return value  # type: ignore[no-any-return]

    def put(self, key: str, body: bytes) -> None:
        """Store ``body`` in the background: the app's answer does not wait for the cache."""
        if self.gate is not None and not self.gate.open:
            return
        task = asyncio.create_task(self._put(key, body))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _put(self, key: str, body: bytes) -> None:
        try:
            await asyncio.wait_for(self.backend.set(key, body, ttl=self.ttl), SET_TIMEOUT)
        except Exception as error:
            if self.gate is None:
                log.warning("could not store an answer in the cache (%s)", type(error).__name__)
                return
            self.gate.failed(error)
            return
        if self.gate is not None:
            self.gate.succeeded()

    async def aclose(self) -> None:
        if self._stores:
            await asyncio.gather(*self._stores, return_exceptions=True)
        try:
            await self.backend.close()
        except Exception as error:
            log.debug("closing the cache backend: %s", type(error).__name__)
