"""The semantic cache shared by the fleet: entries go through a Redis Stream, search stays in each pod's memory.

Every entry this pod stores is also appended to ``<namespace>:semantic`` (``XADD … MAXLEN ~ 2 * max_entries``)
by a background publisher: ``publish`` only queues it (bounded in entries and bytes; dropped, and counted,
when the queue is full or Redis is away). One reader task per pod loads the newest live entries at start
(``XREVRANGE``, at most ``max_entries``) and then follows the stream (``XREAD BLOCK``) from the last id it
saw, putting other pods' entries into its index with what is left of their time. Redis away → the reader
backs off (bounded, jittered) and resumes from that id; nothing on the request path waits for Redis.

Why not Redis vector search: it needs Redis Stack (RediSearch ≥ 2.4), which not every fleet has, and a search
per request would put a network round trip (and Redis's health) on the request path, where the in-memory scan
of one bucket costs microseconds. Sharing entries, not searches, keeps the lookup local.

An entry carries a ``generation`` (the deployment set and the embedding model): pods on another config —
during a rollout — neither serve nor take each other's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.config.shared import RedisSettings, SemanticSettings
from sidecar.state.cache import MAX_ANSWER_BYTES, inflate, json_answer
from sidecar.state.redis import RedisGate, client, pod_id
from sidecar.state.semantic import SemanticIndex

log = logging.getLogger("sidecar.semantic")
MAX_DIMENSIONS = 16384  # a longer vector in the stream is damage, not an embedding
COMPRESS_ABOVE = 4096  # bytes: larger answers go to the stream zlib-compressed (when that helps)
PLAIN, COMPRESSED = b"P", b"Z"
QUEUE_ENTRIES = 256  # entries waiting to be published...
QUEUE_BYTES = 16 * 1024 * 1024  # ...and their answers' bytes; beyond either, an entry is dropped
BATCH = 64  # entries per XADD pipeline
PUBLISH_TIMEOUT = 1.0  # seconds one pipeline may take; slower is a failure (the batch is dropped)
BLOCK_MS = 5000  # one XREAD's wait for new entries
READ_COUNT = 256  # entries per XREAD
PAGE = 256  # entries per XREVRANGE at start
LOAD_TIMEOUT = 5.0  # seconds one page of the first load may take
BACKOFF_BASE, BACKOFF_CAP = 0.5, 5.0  # seconds: the reader's waits after a failure, doubling up to the cap


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """One entry of the stream: the index's bucket, vector and answer, when it expires (UNIX seconds), which
    pod wrote it and for which generation."""

    bucket: str
    vector: tuple[float, ...]
    answer: bytes
    expires_at: float
    pod: str
    generation: str


def encode(entry: SharedEntry, compress_above: int = COMPRESS_ABOVE) -> dict[bytes, bytes]:
    """The stream fields of ``entry``: the vector as packed little-endian float32, the answer tagged (and
    compressed when large and that helps)."""
    answer = PLAIN + entry.answer
    if len(entry.answer) > compress_above:
        packed = zlib.compress(entry.answer, 1)
        if len(packed) < len(entry.answer):
            answer = COMPRESSED + packed
    return {b"bucket": entry.bucket.encode(), b"vector": struct.pack(f"<{len(entry.vector)}f", *entry.vector),
            b"answer": answer, b"expires": repr(entry.expires_at).encode(), b"pod": entry.pod.encode(),
            b"gen": entry.generation.encode()}


def decode(fields: dict[bytes, bytes]) -> SharedEntry:
    """The entry in a stream's fields; ``ValueError`` when it is damaged or too large, its vector holds a NaN
    or an infinity, or its answer is not a JSON object."""
    try:
        raw_vector, raw_answer = fields[b"vector"], fields[b"answer"]
        bucket, pod, generation = fields[b"bucket"].decode(), fields[b"pod"].decode(), fields[b"gen"].decode()
        expires_at = float(fields[b"expires"])
    except (KeyError, UnicodeDecodeError) as error:
        raise ValueError("not a semantic cache entry") from error
    dimensions, rest = divmod(len(raw_vector), 4)
    if rest or not 0 < dimensions <= MAX_DIMENSIONS or not math.isfinite(expires_at):
        raise ValueError("not a semantic cache entry")
    vector = struct.unpack(f"<{dimensions}f", raw_vector)
    if not all(map(math.isfinite, vector)):
        raise ValueError("a vector with NaN or infinite values")
    return SharedEntry(bucket, vector, _answer(raw_answer), expires_at, pod, generation)


def _answer(raw: bytes) -> bytes:
    tag, body = raw[:1], raw[1:]
    if tag == PLAIN:
        return json_answer(body)
    if tag == COMPRESSED:
        return json_answer(inflate(body))
    raise ValueError("not an answer")


def backoff(failures: int, draw: float) -> float:
    """Seconds to wait after ``failures`` failures in a row (≥ 1): doubling from ``BACKOFF_BASE`` up to
    ``BACKOFF_CAP``, the upper half of it jittered by ``draw`` (uniform in [0, 1)) so pods do not come back
    in step."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 16))
    return ceiling * (0.5 + draw / 2)


class SemanticShare:
    """Publishes this pod's entries to the stream and feeds other pods' into ``index``. ``start`` runs both
    tasks; ``aclose`` stops them."""

    def __init__(self, index: SemanticIndex, settings: SemanticSettings, redis: RedisSettings, namespace: str,
                 generation: str, *, clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self.settings = settings
        self.place = (redis, namespace)
        self.key = f"{namespace}:semantic"
        self.generation = generation
        self.clock = clock  # wall clock: expiries are shared by every pod
        self.pod = pod_id()
        self.gate = RedisGate("shared semantic cache", redis)
        self.writer = client(redis)
        self.reader = client(redis, socket_timeout=BLOCK_MS / 1000 + 2)  # outlives one XREAD BLOCK
        self.queue: asyncio.Queue[SharedEntry] = asyncio.Queue(QUEUE_ENTRIES)
        self.queued_bytes = 0
        self.last_id: bytes | None = None  # the newest stream entry seen (None: not loaded yet)
        self.published = self.received = self.dropped = 0
        self.tasks: tuple[asyncio.Task[None], ...] = ()

    def start(self) -> SemanticShare:
        self.tasks = (asyncio.create_task(self._publish_loop()), asyncio.create_task(self._read_loop()))
        return self

    def publish(self, bucket: str, vector: Sequence[float], answer: bytes) -> None:
        """Queue an entry this pod stored (never waits; dropped when the queue is full or Redis is away)."""
        size = len(answer)
        if size > MAX_ANSWER_BYTES or self.queued_bytes + size > QUEUE_BYTES or not self.gate.open:
            self.dropped += 1
            return
        entry = SharedEntry(bucket, tuple(vector), answer, self.clock() + self.settings.ttl, self.pod,
                            self.generation)
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        self.queued_bytes += size

    async def _publish_loop(self) -> None:
        maxlen, expire = self.settings.max_entries * 2, math.ceil(self.settings.ttl) + 60
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self.queued_bytes -= sum(len(e.answer) for e in batch)
            fields = [encode(entry) for entry in batch]
            try:
                try:
                    await self._send(fields, maxlen, expire)
                except TimeoutError:
                    raise  # a slow Redis is not asked twice
                except Exception:  # a pooled connection Redis closed (a restart): once more, on a new one
                    await self._send(fields, maxlen, expire)
            except Exception as error:
                self.gate.failed(error)
                self.dropped += len(batch)
                continue
            self.gate.succeeded()
            self.published += len(batch)

    async def _send(self, fields: list[dict[bytes, bytes]], maxlen: int, expire: int) -> None:
        pipe = self.writer.pipeline(transaction=False)
        for one in fields:
            pipe.xadd(self.key, one, maxlen=maxlen, approximate=True)
        pipe.expire(self.key, expire)  # a stream no pod writes to goes once its entries are all out of time
        await asyncio.wait_for(pipe.execute(), PUBLISH_TIMEOUT)

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            try:
                if self.last_id is None:
                    await self._load()
                else:
                    await self._follow()
            except Exception as error:
                self.gate.failed(error)  # logs when Redis is lost (and the gate's success, when it is back)
                failures += 1
                await asyncio.sleep(backoff(failures, random.random()))
                continue
            self.gate.succeeded()
            failures = 0

    async def _load(self) -> None:
        """The newest live entries, at most ``max_entries``, into the index, oldest first (so the index's
        eviction order is the stream's); page by page, yielding to requests between pages."""
        pages: list[list[tuple[bytes, dict[bytes, bytes]]]] = []
        top, wanted, newest, before = b"+", self.settings.max_entries, b"0-0", self.received
        while wanted > 0:
            page = await asyncio.wait_for(self.reader.xrevrange(self.key, top, b"-", count=min(PAGE, wanted)),
                                          LOAD_TIMEOUT)
            if not page:
                break
            if not pages:
                newest = page[0][0]
            pages.append(page)
            wanted -= len(page)
            top = b"(" + page[-1][0]
        for page in reversed(pages):
            for _, fields in reversed(page):
                self._take(fields)
            await asyncio.sleep(0)
        self.last_id = newest
        log.info("semantic cache: %d entries of other pods loaded from redis", self.received - before)

    async def _follow(self) -> None:
        assert self.last_id is not None
        reply = await self.reader.xread({self.key: self.last_id}, count=READ_COUNT, block=BLOCK_MS)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                self._take(fields)

    def _take(self, fields: dict[bytes, bytes]) -> None:
        try:
            entry = decode(fields)
        except ValueError:
            log.debug("semantic cache: a damaged stream entry was ignored")
            return
        if entry.pod == self.pod or entry.generation != self.generation:
            return
        left = entry.expires_at - self.clock()
        if left > 0:
            self.index.add(entry.bucket, entry.vector, entry.answer, ttl=min(left, self.settings.ttl))
            self.received += 1

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for redis in (self.writer, self.reader):
            with contextlib.suppress(Exception):
                await redis.aclose()

    def render(self) -> str:
        return ("# HELP llm_sidecar_semantic_cache_shared_total Semantic cache entries shared through Redis: "
                "published by this pod, received from other pods, or dropped (not published: queue full, Redis "
                "away or slow, answer over 4 MiB).\n# TYPE llm_sidecar_semantic_cache_shared_total counter\n"
                f'llm_sidecar_semantic_cache_shared_total{{result="published"}} {self.published}\n'
                f'llm_sidecar_semantic_cache_shared_total{{result="received"}} {self.received}\n'
                f'llm_sidecar_semantic_cache_shared_total{{result="dropped"}} {self.dropped}\n')
