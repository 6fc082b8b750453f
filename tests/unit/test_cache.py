"""cache_key and which requests the cache takes are pure: same meaning, same key; ResponseCache over a memory
backend, and a failing backend that is a miss, never an error."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config.shared import CacheSettings, RedisSettings
from sidecar.core.types import ChatRequest, Endpoint, StreamChunk, Usage, WireFormat
from sidecar.routing import cached
from sidecar.routing.outcome import Outcome
from sidecar.state.cache import (
    EXCLUDED_FIELDS,
    MAX_ANSWER_BYTES,
    MemoryTier,
    ResponseCache,
    cache_key,
    decode_entry,
    directives,
    encode_entry,
)
from sidecar.state.redis import RedisGate

MESSAGES = [{"role": "user", "content": "hi"}]


def request(body: dict[str, Any] | None = None, **kwargs: Any) -> ChatRequest:
    body = {"model": "g", "messages": MESSAGES, "temperature": 0, **(body or {})}
    return ChatRequest(kwargs.pop("model", "g"), body, **kwargs)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
bodies = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in EXCLUDED_FIELDS), json_values,
                         max_size=6)


@given(bodies)
def test_the_key_ignores_key_order(body: dict[str, Any]) -> None:
    reordered = dict(reversed(list(body.items())))
    assert cache_key(request(body)) == cache_key(request(reordered))


@given(bodies, st.sampled_from(sorted(EXCLUDED_FIELDS)), json_values)
def test_fields_that_do_not_change_the_answer_do_not_change_the_key(body: dict[str, Any], field: str,
                                                                    value: Any) -> None:
    assert cache_key(request(body)) == cache_key(request({**body, field: value}))


@given(bodies, st.text(min_size=1, max_size=8).filter(lambda k: k not in EXCLUDED_FIELDS), st.integers(0, 2**32))
def test_any_other_field_changes_the_key(body: dict[str, Any], field: str, value: int) -> None:
    changed = {**body, field: [value, "changed"]}
    assert cache_key(request(body)) != cache_key(request(changed)) or body.get(field) == [value, "changed"]


def test_the_key_is_stable_and_names_the_group_and_endpoint() -> None:
    key = cache_key(request())
    assert key == cache_key(request()) and len(key) == 40
    assert key != cache_key(request(model="other"))
    assert key != cache_key(request(endpoint=Endpoint.COMPLETIONS))
    assert cache_key(request({"messages": [{"role": "user", "content": "hi", "name": "x"}]})) != key
    assert key != cache_key(request(), rule="r1") != cache_key(request(), rule="r2")


def test_a_memory_only_key_names_the_body_group_endpoint_generation_and_rule() -> None:
    cache = ResponseCache(CacheSettings())
    key = cache.lookup(request(), {}, "gen")[0]
    assert key is not None and key == cache.lookup(request({"user": "u", "stream": False}), {}, "gen")[0]
    others = [cache.lookup(request(model="other"), {}, "gen")[0],
              cache.lookup(request(endpoint=Endpoint.COMPLETIONS), {}, "gen")[0],
              cache.lookup(request(), {}, "gen2")[0], cache.lookup(request(), {}, "gen", "r1")[0],
              cache.lookup(request({"seed": 1}), {}, "gen")[0]]
    assert key not in others and len(set(others)) == len(others)


@pytest.mark.parametrize(("body", "kwargs", "expected"), [
    ({}, {}, True),
    ({"temperature": 0.0, "n": 1}, {}, True),
    ({"temperature": 0.7}, {}, False),
    ({"temperature": None}, {}, False),
    ({"temperature": False}, {}, False),
    ({"n": 2}, {}, False),
    ({}, {"stream": True}, True),  # stored as the whole answer it spelt
    ({}, {"stream": True, "endpoint": Endpoint.COMPLETIONS}, False),
    ({}, {"wire": WireFormat.ANTHROPIC}, True),
    ({}, {"wire": WireFormat.ANTHROPIC, "native_only": ("thinking",)}, False),
    ({}, {"wire": WireFormat.RESPONSES}, False),
    ({}, {"continuation": True}, False),
    ({"temperature": 1}, {"endpoint": Endpoint.EMBEDDINGS}, True),
    ({"temperature": 1}, {"endpoint": Endpoint.COMPLETIONS}, False),
])
def test_cacheable_requests_are_deterministic(body: dict[str, Any], kwargs: dict[str, Any],
                                                               expected: bool) -> None:
    assert cacheable(request(body, **kwargs)) is expected


def test_mode_all_caches_sampled_answers_and_chat_streams_only() -> None:
    assert cacheable(request({"temperature": 0.9, "n": 3}), "all")
    assert cacheable(request({"temperature": 0.9}, stream=True), "all")
    assert not cacheable(request(stream=True, endpoint=Endpoint.COMPLETIONS), "all")


def cacheable(chat: ChatRequest, mode: str = "deterministic") -> bool:
    """Does the cache take part in ``chat`` (a key to store its answer under)?"""
    return ResponseCache(CacheSettings(mode=mode)).lookup(chat, {})[0] is not None


@pytest.mark.parametrize(("header", "expected"), [
    (None, (True, True)), ("no-cache", (False, True)), ("No-Store", (False, False)),
    ("max-age=0, no-cache", (False, True)), ("no-cache, no-store", (False, False)), ("max-age=60", (True, True)),
])
def test_cache_control_directives(header: str | None, expected: tuple[bool, bool]) -> None:
    assert directives(header) == expected


async def test_the_memory_cache_stores_looks_up_and_stays_bounded() -> None:
    cache = ResponseCache.from_settings(CacheSettings(max_size=2))
    keys = [cache.lookup(request({"seed": i}), {})[0] for i in range(3)]
    assert all(keys)
    for i, key in enumerate(keys):
        cache.put(key, f"answer {i}".encode())  # type: ignore[arg-type]
    assert not cache._stores  # memory only: stored at once, no task
    assert await cache.get(keys[0]) is None  # type: ignore[arg-type]
    assert await cache.get(keys[2]) == b"answer 2"  # type: ignore[arg-type]
    assert cache.lookup(request({"temperature": 1}), {}) == (None, None, False)
    assert cache.lookup(request(), {"cache-control": "no-store"}) == (None, None, False)
    key, found, ask = cache.lookup(request({"seed": 2}), {"cache-control": "no-cache"})
    assert (key, found, ask) == (keys[2], None, False)  # stored under the same key, not looked up
    assert cache.lookup(request({"seed": 2}), {}) == (keys[2], b"answer 2", False)
    await cache.aclose()


class BrokenBackend:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def get(self, key: str) -> bytes:
        self.calls += 1
        await asyncio.sleep(self.delay)
        raise ConnectionError("Error 111 connecting to redis://:hunter2@10.0.0.1:6379")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.calls += 1
        raise ConnectionError("down")

    async def close(self) -> None:
        pass


async def test_a_failing_backend_is_a_miss_then_skipped_for_a_while(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    gate = RedisGate("response cache", RedisSettings(password=None), backoff=5, clock=lambda: now[0])
    backend = BrokenBackend()
    cache = ResponseCache(CacheSettings(type="redis"), backend, gate)
    assert await cache.get("k") is None and backend.calls == 1
    assert await cache.get("k") is None and backend.calls == 1  # gate shut: Redis not even asked
    cache.put("other", b"v")
    assert not cache._stores  # kept in memory only
    now[0] += 5
    assert await cache.get("k") is None and backend.calls == 2  # one probe after the backoff...
    assert await cache.get("k") is None and backend.calls == 2  # ...failed: shut again
    warnings = [r for r in caplog.records if r.name == "sidecar.redis"]
    assert len(warnings) == 1 and "hunter2" not in warnings[0].getMessage()


def test_the_gate_lets_one_probe_through_after_the_backoff_and_opens_on_success() -> None:
    now = [0.0]
    gate = RedisGate("budgets", RedisSettings(), backoff=2, clock=lambda: now[0])
    assert gate.open
    gate.failed(ConnectionError())
    assert not gate.open
    now[0] = 2.0
    assert gate.open and not gate.open  # the first caller probes; the others wait for its answer
    gate.succeeded()
    assert gate.open and gate.open


async def test_a_slow_backend_is_a_miss_within_the_lookup_timeout() -> None:
    gate = RedisGate("response cache", RedisSettings())
    cache = ResponseCache(CacheSettings(type="redis"), BrokenBackend(delay=10), gate)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cache.get("k") is None
    assert loop.time() - started < 1 and not gate.open


def test_redis_entries_carry_their_expiry_and_large_answers_are_compressed() -> None:
    small, large = b'{"a":1}', b'{"text":"' + b"la " * 5000 + b'"}'
    assert decode_entry(encode_entry(small, 123.5)) == (small, 123.5)
    packed = encode_entry(large, 9.0)
    assert packed[:1] == b"Z" and len(packed) < len(large) // 10
    assert decode_entry(packed) == (large, 9.0)
    assert decode_entry(small) == (small, None)  # written before entries were tagged
    with pytest.raises(ValueError):
        decode_entry(b"garbage")


class DictBackend:
    """A remote backend that keeps what it is given (its own TTL is not what this tests)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    async def close(self) -> None:
        pass


async def test_memory_sits_in_front_of_redis_and_a_redis_hit_fills_it_for_the_time_left() -> None:
    now = [1000.0]
    settings = CacheSettings(type="redis", ttl=60, max_size=10)
    remote = DictBackend()
    writer = ResponseCache(settings, remote, RedisGate("response cache", RedisSettings()), clock=lambda: now[0])
    writer.put("k", b"{}")
    await asyncio.gather(*writer._stores)
    assert decode_entry(remote.data["k"]) == (b"{}", 1060.0)

    reader_memory = MemoryTier(settings.max_size)
    reader = ResponseCache(settings, remote, RedisGate("response cache", RedisSettings()), memory=reader_memory,
                           clock=lambda: now[0])
    now[0] = 1050.0
    assert await reader.get("k") == b"{}" and remote.gets == 1
    expiry = reader_memory.entries["k"][0] - time.monotonic()
    assert 9 < expiry <= 10  # what was left, not a fresh minute
    assert await reader.get("k") == b"{}" and remote.gets == 1  # from memory now
    now[0] = 1061.0
    other = ResponseCache(settings, remote, RedisGate("response cache", RedisSettings()), clock=lambda: now[0])
    assert await other.get("k") is None  # Redis still has it, but it is out of time
    for cache in (writer, reader, other):
        await cache.aclose()


class SlowDictBackend(DictBackend):
    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        await asyncio.sleep(0.01)
        return self.data.get(key)


async def test_identical_lookups_at_once_ask_redis_once_and_one_leaving_does_not_end_the_others() -> None:
    now = [1000.0]
    remote = SlowDictBackend()
    remote.data["k"] = encode_entry(b"{}", 1060.0)
    cache = ResponseCache(CacheSettings(type="redis", ttl=60), remote, RedisGate("response cache", RedisSettings()),
                          clock=lambda: now[0])
    lookups = [asyncio.create_task(cache.get("k")) for _ in range(20)]
    await asyncio.sleep(0)
    lookups[1].cancel()  # one app hangs up while its lookup waits on the first one's
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert remote.gets == 1
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 1] == [b"{}"] * 19
    assert cache._fetching == {}
    await cache.aclose()


def test_the_memory_tier_serves_an_answer_until_its_time_and_keeps_the_newest() -> None:
    now = [0.0]
    memory = MemoryTier(2, clock=lambda: now[0])
    memory.set("a", b"1", 10)
    memory.set("b", b"2", 5)
    now[0] = 4.9
    assert memory.get("a") == b"1" and memory.get("b") == b"2"
    now[0] = 5.0
    assert memory.get("b") is None and "b" not in memory.entries  # out of time: dropped when looked up
    memory.set("c", b"3", 10)
    memory.set("a", b"1 again", 10)  # stored again: now the newest
    memory.set("d", b"4", 10)
    assert memory.get("c") is None and memory.get("a") == b"1 again" and memory.get("d") == b"4"
    assert len(memory.entries) == 2


def _stream(pieces: list[str], finish: str | None = "stop") -> list[StreamChunk]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    datas = [{**head, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    if finish:
        datas.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return [StreamChunk(b"", {})] + [StreamChunk(orjson.dumps(d), d) for d in datas]  # and an event of no chunk


def test_a_short_stream_is_kept_as_its_chunks_and_folded_by_the_first_lookup() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=2)
    stored = cached.stored_stream(_stream(["Hel", "lo"]), Outcome("g", usage=usage))
    assert isinstance(stored, tuple)  # its payloads and usage, folded when first read
    memory = MemoryTier(4)
    memory.set("k", stored, 60)
    memory.set("later", b"x", 60)
    body = memory.get("k")
    assert body is not None and memory.entries["k"][1] == body  # folded once, kept folded
    answer = orjson.loads(body)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert list(memory.entries) == ["k", "later"]  # reading did not move it in the eviction order


def test_a_kept_stream_that_spells_no_answer_is_a_miss_and_is_dropped() -> None:
    memory = MemoryTier(4)
    memory.set("k", cached.stored_stream(_stream(["Hel"], finish=None), Outcome("g")), 60)  # type: ignore[arg-type]
    assert memory.get("k") is None and "k" not in memory.entries
    odd = [StreamChunk(b'{"choices":"not a list"}', {}), StreamChunk(b'{"choices":[7]}', {})]
    memory.set("odd", cached.stored_stream(odd, Outcome("g")), 60)  # type: ignore[arg-type]
    assert memory.get("odd") is None and "odd" not in memory.entries  # a miss for the reader, not an error


def test_a_long_stream_is_folded_when_stored() -> None:
    piece = "x" * 1000
    stored = cached.stored_stream(_stream([piece] * (cached.LAZY_MAX_BYTES // 1000 + 1)), Outcome("g"))
    assert isinstance(stored, bytes)
    assert orjson.loads(stored)["choices"][0]["message"]["content"].startswith(piece * 2)
    assert cached.stored_stream(_stream([piece] * 100, finish=None), Outcome("g")) is None


async def test_a_kept_stream_is_folded_before_it_goes_to_redis() -> None:
    remote = DictBackend()
    cache = ResponseCache(CacheSettings(type="redis", ttl=60, max_size=10), remote,
                          RedisGate("response cache", RedisSettings()))
    stored = cached.stored_stream(_stream(["Hi"]), Outcome("g"))
    assert isinstance(stored, tuple)  # its payloads and usage, folded when first read
    await asyncio.gather(cache.put("k", stored))  # type: ignore[arg-type]
    body, _ = decode_entry(remote.data["k"])
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "Hi"
    assert cache.memory.entries["k"][1] == body
    assert cache.put("never", cached.stored_stream(_stream(["Hi"], finish=None), Outcome("g"))) is None  # type: ignore[arg-type]
    assert "never" not in cache.memory.entries and "never" not in remote.data
    await cache.aclose()


def _bomb(size: int) -> bytes:
    """A compressed entry of a few KiB that inflates to ``size`` bytes."""
    deflate = zlib.compressobj(9)
    return b"Z" + struct.pack(">d", 1060.0) + deflate.compress(b"{" + b" " * (size - 2) + b"}") + deflate.flush()


def test_a_compressed_entry_is_inflated_no_further_than_the_cap() -> None:
    with pytest.raises(ValueError):
        decode_entry(_bomb(MAX_ANSWER_BYTES + 1))
    assert decode_entry(_bomb(MAX_ANSWER_BYTES))[0][-1:] == b"}"
    with pytest.raises(ValueError):  # cut short: zlib.decompress would refuse it too
        decode_entry(_bomb(1000)[:-6])


@pytest.mark.parametrize("raw", [
    b"P" + struct.pack(">d", 1060.0) + b"<html>not json</html>",
    b"P" + struct.pack(">d", 1060.0) + b"[1, 2]",  # JSON, not an object
    b"{not json",  # an untagged (older) entry
    b"P" + struct.pack(">d", 1060.0) + b"{" + b" " * MAX_ANSWER_BYTES + b"}",  # over the cap
    _bomb(MAX_ANSWER_BYTES + 1),
])
async def test_a_redis_entry_that_is_not_an_answer_is_a_miss_and_stays_out_of_memory(raw: bytes) -> None:
    remote = DictBackend()
    remote.data["k"] = raw
    cache = ResponseCache(CacheSettings(type="redis", ttl=60), remote, RedisGate("response cache", RedisSettings()),
                          clock=lambda: 1000.0)
    assert await cache.get("k") is None
    assert "k" not in cache.memory.entries and not cache.gate.down  # damage, not a Redis failure
    await cache.aclose()


async def test_an_answer_over_the_cap_is_stored_in_neither_tier() -> None:
    remote = DictBackend()
    cache = ResponseCache(CacheSettings(type="redis", ttl=60), remote, RedisGate("response cache", RedisSettings()))
    assert cache.put("big", b"{" + b" " * MAX_ANSWER_BYTES + b"}") is None
    local = ResponseCache(CacheSettings(type="local", ttl=60))
    local.put("big", b"{" + b" " * MAX_ANSWER_BYTES + b"}")
    assert "big" not in cache.memory.entries and "big" not in local.memory.entries
    stored = cache.put("small", b"{}")
    assert stored is not None
    await stored
    assert list(remote.data) == ["small"]
    await cache.aclose()


def test_the_memory_tier_keeps_at_most_max_bytes_of_answers() -> None:
    memory = MemoryTier(100, max_bytes=10)
    memory.set("a", b"1234", 60)
    memory.set("b", b"5678", 60)
    memory.set("a", b"12", 60)  # stored again: its old bytes no longer count
    assert memory.size == 6
    memory.set("c", b"abcdef", 60)  # 12 bytes: the oldest goes
    assert list(memory.entries) == ["a", "c"] and memory.size == 8
    stream = cached.stored_stream(_stream(["Hel", "lo"]), Outcome("g"))
    memory = MemoryTier(100, max_bytes=10_000)
    memory.set("s", stream, 60)  # type: ignore[arg-type]
    body = memory.get("s")  # folded: its size is now the answer's
    assert body is not None and memory.size == len(body)
