"""The semantic cache's stream entries (encoded, decoded, refused when damaged or too large), the reader's
backoff, and which entries a pod takes into its index."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest

from sidecar.config.shared import RedisSettings, SemanticSettings
from sidecar.state.semantic import SemanticIndex
from sidecar.state.semantic_share import (
    BACKOFF_CAP,
    MAX_ANSWER_BYTES,
    SemanticShare,
    SharedEntry,
    backoff,
    decode,
    encode,
)

ANSWER = orjson.dumps({"object": "chat.completion", "choices": [{"message": {"content": "Paris"}}]})


def entry(answer: bytes = ANSWER, **changes: object) -> SharedEntry:
    fields: dict[str, object] = {"bucket": "chat\0abc123", "vector": (0.5, -1.25, 3.0), "answer": answer,
                                 "expires_at": 1_700_000_600.25, "pod": "pod-a-1-abcdef", "generation": "g1/embed"}
    return SharedEntry(**{**fields, **changes})  # type: ignore[arg-type]


def test_an_entry_survives_the_stream_with_its_vector_as_float32_and_its_expiry() -> None:
    fields = encode(entry())
    assert fields[b"vector"] == struct.pack("<3f", 0.5, -1.25, 3.0) and len(fields[b"vector"]) == 12
    assert fields[b"answer"] == b"P" + ANSWER  # small: as it is
    assert decode(fields) == entry()


def test_a_large_answer_is_compressed_and_comes_back_whole() -> None:
    large = orjson.dumps({"content": "word " * 5000})
    fields = encode(entry(large))
    assert fields[b"answer"][:1] == b"Z" and len(fields[b"answer"]) < len(large) / 10
    assert decode(fields).answer == large


def test_a_vector_loses_only_float32_precision() -> None:
    vector = (0.1, 1 / 3, -2.718281828)
    back = decode(encode(entry(vector=vector))).vector
    assert back != vector and all(abs(a - b) < 1e-6 for a, b in zip(back, vector, strict=True))


@pytest.mark.parametrize("damage", [
    lambda f: f.pop(b"pod"),
    lambda f: f.update({b"vector": b"abc"}),  # not whole float32s
    lambda f: f.update({b"vector": b""}),
    lambda f: f.update({b"expires": b"soon"}),
    lambda f: f.update({b"expires": b"nan"}),
    lambda f: f.update({b"answer": b"X{}"}),  # an unknown tag
    lambda f: f.update({b"answer": b"Znot zlib"}),
    lambda f: f.update({b"bucket": b"\xff\xfe"}),
    lambda f: f.update({b"vector": struct.pack("<3f", float("nan"), 0.0, 1.0)}),
    lambda f: f.update({b"vector": struct.pack("<3f", float("inf"), 0.0, 1.0)}),
    lambda f: f.update({b"answer": b"P<html>not json</html>"}),
    lambda f: f.update({b"answer": b"P[1, 2]"}),  # JSON, not an object
    lambda f: f.update({b"answer": b"Z" + zlib.compress(b"not json " * 1000)}),
    lambda f: f.update({b"answer": b"Z" + zlib.compress(b"{}")[:-4]}),  # cut short
])
def test_a_damaged_entry_is_refused(damage: object) -> None:
    fields = encode(entry())
    damage(fields)  # type: ignore[operator]
    with pytest.raises(ValueError):
        decode(fields)


def test_answers_over_the_cap_are_refused_even_when_they_compress_well() -> None:
    over = b"{" + b" " * (MAX_ANSWER_BYTES - 1) + b"}"  # a JSON object a byte over the cap
    with pytest.raises(ValueError):
        decode({**encode(entry()), b"answer": b"P" + over})
    with pytest.raises(ValueError):  # a zlib bomb inflates no further than the cap
        decode({**encode(entry()), b"answer": b"Z" + zlib.compress(over)})
    at_cap = over[:-2] + b"}"
    assert decode({**encode(entry()), b"answer": b"Z" + zlib.compress(at_cap)}).answer == at_cap


def test_the_backoff_doubles_to_its_cap_jittered_in_the_upper_half() -> None:
    assert backoff(1, 0.0) == 0.25 and backoff(1, 0.999) < 0.5
    assert backoff(2, 0.0) == 0.5 and backoff(3, 0.0) == 1.0
    assert backoff(50, 0.0) == BACKOFF_CAP / 2 and backoff(10_000, 0.999) < BACKOFF_CAP


def test_a_pod_takes_live_entries_of_other_pods_of_its_generation_with_what_is_left_of_their_time() -> None:
    now = [1_700_000_000.0]
    index = SemanticIndex(max_entries=10, ttl=600, clock=lambda: now[0])
    share = SemanticShare(index, SemanticSettings("embed", ("chat",), ttl=600), RedisSettings(), "ns", "g1/embed",
                          clock=lambda: now[0])
    share._take(encode(entry(pod=share.pod)))  # its own: already in its index
    share._take(encode(entry(generation="g0/embed")))  # another config's: other deployments or embeddings
    share._take(encode(entry(expires_at=now[0] - 1)))  # out of time
    share._take({b"vector": b"damaged"})
    assert len(index) == 0 and share.received == 0
    share._take(encode(entry(expires_at=now[0] + 30)))
    assert share.received == 1 and index.best("chat\0abc123", [0.5, -1.25, 3.0]) == (pytest.approx(1.0), ANSWER)
    now[0] += 31  # its original expiry, not this pod's ttl
    assert index.best("chat\0abc123", [0.5, -1.25, 3.0]) is None


def test_publish_never_waits_and_counts_what_it_drops() -> None:
    index = SemanticIndex(max_entries=10, ttl=600)
    share = SemanticShare(index, SemanticSettings("embed", ("chat",)), RedisSettings(), "ns", "g1/embed")
    share.publish("chat\0abc", [1.0, 0.0], ANSWER)
    share.publish("chat\0abc", [1.0, 0.0], b" " * (MAX_ANSWER_BYTES + 1))  # over the cap: stays local
    assert share.queue.qsize() == 1 and share.dropped == 1 and share.queued_bytes == len(ANSWER)
    for _ in range(share.queue.maxsize):
        share.publish("chat\0abc", [1.0, 0.0], ANSWER)
    assert share.queue.full() and share.dropped == 2
    share.gate.failed(ConnectionError())  # Redis away: dropped at once
    share.queue.get_nowait()
    share.publish("chat\0abc", [1.0, 0.0], ANSWER)
    assert share.dropped == 3
