"""The response cache: whole answers to identical, deterministic requests, kept in memory or in Redis.

An answer's key is made of what determines it: endpoint, model group and ``canonical_body`` (the request body
with sorted keys and without the fields that do not change the answer). With a Redis tier it is their blake2b
digest (``cache_key``: alike in every pod); in memory alone, their hash (see ``ResponseCache.lookup``).
``ResponseCache.lookup`` says which requests qualify:
OpenAI-format chat, completions and embeddings, and Anthropic-format chat without Anthropic-only features —
chat and completions only when deterministic (``temperature`` 0, ``n`` absent or 1) unless the mode is
``all``; streams only for chat (a stream is stored as the whole answer it spelt, see ``routing.cached``).
``ResponseCache`` keeps answer bytes in the process's bounded memory (``MemoryTier``) and, with Redis, in
an injected aiocache backend behind it. A Redis that fails or is slow is a miss, never an error: lookups
wait at most ``GET_TIMEOUT`` and the ``RedisGate`` skips Redis for a while after a failure.

A lookup asks memory first; a Redis hit fills memory for what is left of the entry's time (Redis entries
carry their expiry, see ``encode_entry``), so no tier serves an answer past its ``ttl``. Stores go to both.
Answers larger than ``COMPRESS_ABOVE`` bytes are stored in Redis zlib-compressed (memory keeps them as they
are).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from hashlib import blake2b
from typing import Any

import orjson

from sidecar.config.shared import CacheSettings
from sidecar.core.types import ChatRequest, Endpoint, WireFormat
from sidecar.state.redis import RedisGate, client, connection_options, warm_up

log = logging.getLogger("sidecar.cache")
# Fields that do not change the answer: who asked, for what bookkeeping, and how it is delivered.
EXCLUDED_FIELDS = frozenset({"user", "metadata", "stream", "stream_options", "store"})
GET_TIMEOUT = 0.05  # a lookup slower than this is a miss
SET_TIMEOUT = 0.5  # stores happen after the answer is sent
HIT, MISS = "hit", "miss"
COMPRESS_ABOVE = 4096  # bytes: larger answers go to Redis compressed
# The largest answer either tier stores or takes from Redis (routing.coalesce.MAX_BYTES, semantic_share's cap):
# a larger entry would make every pod's GET pass its time limit and shut the gate; a larger one read is damage.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
MEMORY_BYTES = 256 * 1024 * 1024  # the memory tier's answers together, beside its ``max_size`` entries
# A Redis entry: a tag byte, the expiry (UNIX seconds, big-endian double), the answer (compressed for Z).
PLAIN, COMPRESSED = b"P", b"Z"
_EXPIRY = struct.Struct(">d")
# What the memory tier keeps: answer bytes, or (fold, payloads, usage) — a finished stream's chunks as their JSON
# payloads, comma-separated, folded into its answer only if somebody asks for it (``fold(payloads, usage)``;
# None: no answer after all). A tuple, not an object that folds itself: one object fewer per stored stream.
Stored = bytes | tuple[Callable[[bytes, Any], bytes | None], bytes, Any]
# An answer's key: ``shared_key`` with a Redis tier (the same in every pod), else a hash only this process knows
Key = str | int
# Enum members as module constants: ``Endpoint.CHAT`` is a lookup through the enum's metaclass (~800 instructions)
_CHAT, _EMBEDDINGS = Endpoint.CHAT, Endpoint.EMBEDDINGS
_OPENAI, _ANTHROPIC = WireFormat.OPENAI, WireFormat.ANTHROPIC
_NUMBERS, _ONE = (int, float), (None, 1)


def encode_entry(body: bytes, expires_at: float, compress_above: int = COMPRESS_ABOVE) -> bytes:
    """An answer as stored in Redis: tagged, with its expiry, compressed when large (and it helps)."""
    if len(body) > compress_above:
        packed = zlib.compress(body, 1)
        if len(packed) < len(body):
            return COMPRESSED + _EXPIRY.pack(expires_at) + packed
    return PLAIN + _EXPIRY.pack(expires_at) + body


def decode_entry(raw: bytes) -> tuple[bytes, float | None]:
    """(the answer, its expiry) from a Redis entry; an entry written before entries were tagged (a JSON
    answer, ``{``…) has no expiry. ``ValueError`` (or ``zlib.error``) when the entry is damaged or inflates
    past ``MAX_ANSWER_BYTES``."""
    tag = raw[:1]
    if tag == b"{":
        return raw, None
    if tag not in (PLAIN, COMPRESSED) or len(raw) < 1 + _EXPIRY.size:
        raise ValueError("not a cache entry")
    (expires_at,) = _EXPIRY.unpack_from(raw, 1)
    body = raw[1 + _EXPIRY.size:]
    return (inflate(body) if tag == COMPRESSED else body), expires_at


def inflate(body: bytes) -> bytes:
    """A compressed answer, inflated no further than ``MAX_ANSWER_BYTES`` (a small entry may inflate to
    gigabytes: memory, and the event loop, would go to it); ``ValueError`` past it, cut short, or damaged.
    The response cache's and the shared semantic cache's entries both come through here."""
    inflating = zlib.decompressobj()
    try:
        answer = inflating.decompress(body, MAX_ANSWER_BYTES + 1)
    except zlib.error as error:
        raise ValueError("a damaged compressed answer") from error
    if len(answer) > MAX_ANSWER_BYTES or inflating.unconsumed_tail or not inflating.eof:
        raise ValueError("a compressed answer over the cap, or cut short")
    return answer


def json_answer(body: bytes) -> bytes:
    """``body`` when it is an answer another process may have written: a JSON object within
    ``MAX_ANSWER_BYTES`` (the pipeline translates and replays it); ``ValueError`` if not."""
    if len(body) > MAX_ANSWER_BYTES or not isinstance(orjson.loads(body), dict):  # JSONDecodeError: a ValueError
        raise ValueError("not an answer")
    return body


def shared_answer(raw: bytes) -> tuple[bytes, float | None]:
    """``decode_entry`` for an entry read from Redis, which any client may have written (``json_answer``)."""
    body, expires_at = decode_entry(raw)
    return json_answer(body), expires_at


def canonical_body(request: ChatRequest) -> bytes:
    """The request's body as far as it determines the answer: sorted keys, without the fields that do not change
    it. (With the endpoint, the model group, the ``generation`` — the digest of the deployment set, so answers
    from a replaced set are never served — and the request ``rule`` that decided it, it makes an answer's key.)"""
    body = request.body
    if not EXCLUDED_FIELDS.isdisjoint(body):  # copied only when there is something to leave out
        body = body.copy()
        for name in EXCLUDED_FIELDS:
            body.pop(name, None)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def cache_key(request: ChatRequest, generation: str = "", rule: str = "") -> str:
    """The key of a request's answer in Redis (and its cross-pod lock's), the same in every pod."""
    return shared_key(canonical_body(request), request, generation, rule)


def shared_key(body: bytes, request: ChatRequest, generation: str, rule: str) -> str:
    """A blake2b digest of ``canonical_body`` and the names beside it. (``endpoint`` is a str enum: ``join``
    takes its value without the enum's ``.value`` property, Python code.)"""
    return blake2b(body + "\0".join((request.endpoint, request.model, generation, rule)).encode(),
                   digest_size=20).hexdigest()


def directives(value: str | None) -> tuple[bool, bool]:
    """(lookup, store) from the request's ``Cache-Control`` header value: ``no-cache`` skips the lookup (the
    fresh answer is still stored); ``no-store`` skips both."""
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


class MemoryTier:
    """Answer bytes by key in this process, each with its expiry (``clock``: monotonic seconds), at most
    ``max_size`` entries and ``max_bytes`` of answers (the oldest stored goes first).

    Plain dict operations, not aiocache's memory cache: that one costs every miss a chain of coroutines
    (its enable, timeout and plugin wrappers) and every store a task and a timer of the event loop to drop
    the entry at its expiry — ~120k of the ~780k instructions a cache miss cost. Here an entry out of time is
    dropped when it is next looked up, or pushed out by newer ones (``max_size`` bounds memory either way).
    """

    __slots__ = ("clock", "entries", "max_bytes", "max_size", "size")

    def __init__(self, max_size: int, clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = MEMORY_BYTES) -> None:
        # key -> (expiry, answer or a stream to fold when first read), oldest stored first. An OrderedDict: dropping
        # a dict's first entry again and again leaves holes that every later next(iter(...)) walks over;
        # popitem(last=False) does not.
        self.entries: OrderedDict[Key, tuple[float, Stored]] = OrderedDict()
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.size = 0  # the bytes of the answers (or streams' payloads) kept
        self.clock = clock

    def get(self, key: Key) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        expires_at, body = entry
        if expires_at <= self.clock():
            self._drop(key, body)
            return None
        if body.__class__ is not bytes:  # made on first read (a finished stream's fold)
            folded = body[0](body[1], body[2])  # type: ignore[index, operator]
            if folded is None:
                self._drop(key, body)
                return None
            self.size += len(folded) - _size(body)
            body = folded
            self.entries[key] = (expires_at, body)  # an existing key: its place in the order stays
        return body  # type: ignore[return-value]

    def _drop(self, key: Key, body: Stored) -> None:
        del self.entries[key]
        self.size -= _size(body)

    def set(self, key: Key, body: Stored, ttl: float) -> None:
        entries = self.entries
        previous = entries.pop(key, None)  # stored again: it is now the newest
        if previous is not None:
            self.size -= _size(previous[1])
        entries[key] = (self.clock() + ttl, body)
        self.size += _size(body)
        while len(entries) > self.max_size or (self.size > self.max_bytes and entries):
            self.size -= _size(entries.popitem(False)[1][1])  # the oldest (positional: a keyword costs more)

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0


def _size(body: Stored) -> int:
    return len(body) if body.__class__ is bytes else len(body[1])  # type: ignore[arg-type, index]


def redis_backend(settings: CacheSettings) -> Any:
    """aiocache's Redis cache with short timeouts and no retries of its own."""
    from aiocache import RedisCache

    redis = settings.redis
    assert redis is not None
    pool_options = connection_options(redis)
    timeout = pool_options.pop("socket_connect_timeout")
    cache = RedisCache(serializer=BytesSerializer(), namespace=settings.namespace, timeout=None,
                       endpoint=redis.host, port=redis.port, db=redis.db,
                       password=redis.password.value if redis.password else None, ssl=redis.ssl,
                       create_connection_timeout=timeout, connection_pool_kwargs=pool_options)
    if redis.mode != "standalone":  # Sentinel or Cluster: redis-py's own client in aiocache's place
        cache.client = client(redis)
    return cache


class ResponseCache:
    """Answer bytes by ``cache_key`` for ``settings.ttl`` seconds: in ``memory`` and, when given, in ``remote``
    (an aiocache cache holding ``encode_entry`` values) behind it.

    ``gate`` goes with ``remote``: while it is shut (Redis failed recently) the remote tier's lookups are
    misses and its stores are dropped, without touching the network.
    """

    def __init__(self, settings: CacheSettings, remote: Any = None, gate: RedisGate | None = None, *,
                 memory: MemoryTier | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.memory = memory if memory is not None else MemoryTier(settings.max_size)
        self.remote = remote
        self.gate = gate
        self.clock = clock  # wall clock: Redis entries' expiry is shared by every pod
        self.ttl = settings.ttl
        self.deterministic_only = settings.mode != "all"  # else sampled answers are cached too
        self._stores: set[asyncio.Task[None]] = set()
        self._fetching: dict[str, asyncio.Future[bytes | None]] = {}  # Redis lookups in flight, by key
        self.warming: asyncio.Task[None] | None = None  # the first contact (connect, AUTH; Sentinel's primary
        # lookup, a Cluster's slot map) is made off the request path: lookups are misses until it is done

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> ResponseCache:
        if settings.type == "redis":
            assert settings.redis is not None
            cache = cls(settings, redis_backend(settings), RedisGate("response cache", settings.redis))
            assert cache.gate is not None
            cache.warming = asyncio.create_task(warm_up(cache.remote.client, cache.gate))
            return cache
        return cls(settings)

    def lookup(self, request: ChatRequest, headers: Mapping[str, str], generation: str = "",
               rule: str = "") -> tuple[Key | None, bytes | None, bool]:
        """(the key to store the answer under — None: the cache stays out; the memory tier's answer, or None;
        whether to look in the Redis tier — memory had none). One call, not a coroutine: most lookups end in
        memory, and every cacheable request makes one."""
        # Which requests qualify (see the module's docstring). Inline, not a function of its own: every
        # cacheable request asks, and a call costs as much as the checks.
        endpoint, wire = request.endpoint, request.wire
        if request.continuation or (request.stream and endpoint is not _CHAT) or (
                wire is not _OPENAI and (wire is not _ANTHROPIC or request.native_only)):
            return None, None, False
        if self.deterministic_only and endpoint is not _EMBEDDINGS:
            body = request.body
            temperature = body.get("temperature")
            # type(), not isinstance: True is not a temperature of 0
            if type(temperature) not in _NUMBERS or temperature != 0 or body.get("n") not in _ONE:
                return None, None, False
        value = headers.get("cache-control")
        lookup = True
        if value:
            lookup, store = directives(value)
            if not (store or lookup):
                return None, None, False
        try:
            body = canonical_body(request)
        except TypeError:  # a value orjson cannot encode (bodies parsed by orjson never have one)
            return None, None, False
        # Only this process keeps the answer: Python's own hash of the body and names — the body's by keyed
        # SipHash — a tenth of blake2b's cost and as safe here. Its 64 bits make an accidental collision among
        # the memory tier's entries a one in ~10^16 event per lookup, and its key is random per process and never
        # leaves it: nobody can aim a collision (to be served another's answer they would need a second preimage
        # without the key).
        key: Key = (hash((body, request.endpoint, request.model, generation, rule)) if self.remote is None
                    else shared_key(body, request, generation, rule))
        if not lookup:
            return key, None, False
        if key not in self.memory.entries:  # a miss without the memory tier's call (most are misses)
            return key, None, self.remote is not None
        found = self.memory.get(key)
        return key, found, found is None and self.remote is not None

    async def get(self, key: Key) -> bytes | None:
        """The stored answer, or None (also when the remote tier fails or is slow)."""
        body = self.memory.get(key)
        if body is not None or self.remote is None:
            return body
        return await self.get_shared(key)  # type: ignore[arg-type]

    async def get_shared(self, key: str) -> bytes | None:
        """The Redis tier's answer, for a key the memory tier does not have. One Redis lookup per key at a time: a
        burst of identical requests (the case coalescing is for) asks Redis once, not once per request — many
        concurrent lookups would each need a connection of their own, and the slowest would pass the lookup's
        time limit and shut the gate for everybody."""
        pending = self._fetching.get(key)
        if pending is not None:
            return await asyncio.shield(pending)  # shielded: one waiter going away does not cancel the others'
        fetching: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._fetching[key] = fetching
        body = None
        try:
            body = await self._get_remote(key)
        finally:
            del self._fetching[key]
            fetching.set_result(body)  # the others get a miss when this lookup was cancelled
        return body

    async def _get_remote(self, key: str) -> bytes | None:
        gate = self.gate
        assert gate is not None
        if self.warming is not None:
            if not self.warming.done():
                return None  # a miss while the first contact is made (it may take more than GET_TIMEOUT)
            self.warming = None
        if not gate.open:
            return None
        try:
            raw = await asyncio.wait_for(self.remote.get(key), GET_TIMEOUT)
        except Exception as error:  # timeouts, connection errors, protocol errors: all a miss
            gate.failed(error)
            return None
        gate.succeeded()
        if raw is None:
            return None
        try:
            body, expires_at = shared_answer(raw)
        except ValueError:
            log.warning("a damaged entry in the response cache was ignored")
            return None
        left = self.ttl if expires_at is None else expires_at - self.clock()
        if left <= 0:
            return None  # Redis has not dropped it yet; it is out of time all the same
        self.memory.set(key, body, left)
        return body

    def put(self, key: Key, body: Stored) -> asyncio.Task[None] | None:
        """Store ``body``: in memory at once, in Redis in the background (the app's answer does not wait).
        Returns the store in the shared tier (None: no shared tier, or Redis is skipped) — a fleet lease ends
        after it. A stream kept as its payloads is folded now when it goes to Redis. An answer over
        ``MAX_ANSWER_BYTES`` is not stored."""
        if body.__class__ is bytes and len(body) > MAX_ANSWER_BYTES:  # type: ignore[arg-type]
            return None  # in neither tier (a stream kept as its payloads is at most 64 KiB of them)
        if self.remote is None or (self.gate is not None and not self.gate.open):  # memory only
            self.memory.set(key, body, self.ttl)
            return None
        if body.__class__ is not bytes:
            body = body[0](body[1], body[2])  # type: ignore[index, operator]
            if body is None or len(body) > MAX_ANSWER_BYTES:
                return None
        self.memory.set(key, body, self.ttl)
        task = asyncio.create_task(self._put_remote(key, body))  # type: ignore[arg-type]  # a shared_key
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)
        return task

    async def _put_remote(self, key: str, body: bytes) -> None:
        gate = self.gate
        assert gate is not None
        try:
            await asyncio.wait_for(self.remote.set(key, encode_entry(body, self.clock() + self.ttl), ttl=self.ttl),
                                   SET_TIMEOUT)
        except Exception as error:
            gate.failed(error)
            return
        gate.succeeded()

    async def aclose(self) -> None:
        if self.warming is not None:
            self.warming.cancel()
            await asyncio.gather(self.warming, return_exceptions=True)
        if self._stores:
            await asyncio.gather(*self._stores, return_exceptions=True)
        self.memory.clear()
        if self.remote is not None:
            try:
                await self.remote.close()
            except Exception as error:
                log.debug("closing the cache backend: %s", type(error).__name__)
