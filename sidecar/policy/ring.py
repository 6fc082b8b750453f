"""Choosing a replica of a shared SGLang deployment: consistent hashing with bounded loads (pure).

Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads" (2016), as HAProxy's
``hash-balance-factor`` applies it: each replica owns ``VNODES`` points on a 64-bit ring; a request's key
(``prefix_key``: the part of the prompt that stays the same for a whole conversation) lands on the first point
clockwise from its hash; a replica whose load would pass ``factor * mean load`` — the mean counting this
request; at least one more than the mean — is passed over for the next distinct replica on the ring. Every
sidecar derives the same ring from the same replica set (the hashes are blake2b, not Python's per-process
``hash``), so sidecars agree on where a conversation lives without talking to each other; a key moves only
when its replica leaves the set or is overloaded, and adding a replica to N moves about 1/(N+1) of the keys.

A sidecar also remembers where it sent each conversation (``providers.sglang``): a later turn goes back there
while that replica is within the looser ``keep_capacity`` (of ``replica_keep_factor``, by default the load
factor), even when the ring would now place the conversation elsewhere (its first turn was passed over, or the
placement key is a shared system prompt whose home has since filled up). With ``replica_spread`` k > 1 a key's
first k replicas on the ring are its home set and the lighter of them takes a new conversation (``choose``).
With no useful prefix (no user turn, an embeddings request) the request goes to the least loaded replica.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from itertools import chain, islice
from typing import Any

import orjson

VNODES = 160  # points per replica: ketama's count, a few percent of imbalance in key shares
PREFIX_CHARS = 4096  # completions: the stable part of a prompt is taken to be its start
SHARED_PREFIX_CHARS = 2048  # replica_key: shared — a system prompt this long (~500 tokens) is worth one home


def hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Ring:
    """The points of a replica set, sorted; ``owners[i]`` is the index in ``replicas`` of ``points[i]``."""

    replicas: tuple[str, ...]
    points: tuple[int, ...]
    owners: tuple[int, ...]


def build_ring(replicas: Sequence[str], vnodes: int = VNODES, previous: Ring | None = None) -> Ring:
    """The ring of ``replicas`` (stable names, e.g. their URLs): the same set gives the same ring anywhere.
    ``previous``: the ring this one replaces; the points of replicas in both are taken from it, so a change of
    the set hashes only the newcomers (the sort is then most of the cost: about 20 ms for 256 replicas)."""
    known: dict[str, list[int]] = {}
    if previous is not None:
        for point, owner in zip(previous.points, previous.owners, strict=True):
            known.setdefault(previous.replicas[owner], []).append(point)
    bits = max(len(replicas), 1).bit_length()  # a point and its owner in one int: ints sort faster than pairs
    marked = sorted(point << bits | index for index, name in enumerate(replicas)
                    for point in known.get(name) or [hash64(f"{name}#{i}".encode()) for i in range(vnodes)])
    mask = (1 << bits) - 1
    return Ring(tuple(replicas), tuple(m >> bits for m in marked), tuple(m & mask for m in marked))


@dataclass(frozen=True, slots=True)
class RingChoice:
    """A replica chosen (index into the ring's replicas, None when none may be chosen); ``position``: the
    key's point on the ring (-1 when least loaded); ``passed_over``: (replica index, load) of replicas skipped
    for their load, in ring order; ``how``: "ring", "sticky" (the replica this sidecar sent the conversation's
    earlier turns to), "shared" (where the fleet's placement in Redis put the conversation's long shared prefix)
    or "least_loaded"."""

    replica: int | None
    position: int
    passed_over: tuple[tuple[int, float], ...]
    how: str


@dataclass(frozen=True, slots=True)
class ReplicaChoice:
    """The trail's record of one attempt's replica (names, never addresses): ``how`` is ring, sticky, shared or
    least_loaded; ``position`` the key's point on the ring; ``passed_over``: (replica, load) skipped for their
    load; ``load`` the chosen replica's load before this attempt."""

    deployment: str
    replica: str
    how: str
    position: int
    passed_over: tuple[tuple[str, float], ...]
    load: float


SPILL_REASONS = frozenset({"no_healthy_replica", "pool_saturated"})  # a pool skipped: the request spills over


def _mean(loads: Sequence[float], eligible: Sequence[bool]) -> float | None:
    """The mean load of the eligible replicas, this request counted; None when none is eligible."""
    count = sum(eligible)
    if not count:
        return None
    return (sum(load for load, ok in zip(loads, eligible, strict=True) if ok) + 1) / count


def capacity(loads: Sequence[float], eligible: Sequence[bool], factor: float) -> float:
    """The most load a replica may carry after taking a new conversation: factor * mean, this request counted,
    and never less than mean + 1 (at low load, where the factor is less than one request). The least loaded
    replica is always under it. Not rounded up: at a mean of 5, ``ceil`` would let a replica hold 7 (1.4x)."""
    mean = _mean(loads, eligible)
    return 0.0 if mean is None else max(factor * mean, mean + 1)


def keep_capacity(loads: Sequence[float], eligible: Sequence[bool], factor: float) -> float:
    """The most load a replica may carry and keep a conversation it already has: ceil(factor * mean), at
    least ceil(mean) + 1 — looser than ``capacity``, because moving a conversation loses its cached prefix,
    while placing a new one elsewhere costs at most its shared system prompt."""
    mean = _mean(loads, eligible)
    return 0.0 if mean is None else float(max(math.ceil(factor * mean), math.ceil(mean) + 1))


def within(loads: Sequence[float], eligible: Sequence[bool], factor: float, index: int) -> bool:
    """Whether replica ``index`` may take one more turn of a conversation it has (``keep_capacity``)."""
    return eligible[index] and loads[index] + 1 <= keep_capacity(loads, eligible, factor)


def choose(ring: Ring, key: int, loads: Sequence[float], eligible: Sequence[bool], factor: float,
           spread: int = 1) -> RingChoice:
    """The first eligible replica clockwise from ``key`` whose load + 1 stays within ``capacity``.

    With ``spread`` k > 1 the first k distinct eligible replicas clockwise are the key's home set, tried less
    loaded first (ring order among equal loads), before the rest of the ring in order: a placement key many
    conversations share (a long system prompt) is cached on at most k replicas while they are within the
    bound, and the choice of the lighter of them keeps them balanced. ``passed_over`` is in the order tried."""
    if not ring.points:
        return RingChoice(None, -1, (), "ring")
    bound = capacity(loads, eligible, factor)
    start = bisect.bisect_left(ring.points, key) % len(ring.points)
    order = _clockwise(ring, start, eligible)
    home = list(islice(order, spread))
    home.sort(key=loads.__getitem__)  # stable: ring order among equal loads
    passed: list[tuple[int, float]] = []
    for owner in chain(home, order):
        if loads[owner] + 1 <= bound:
            return RingChoice(owner, start, tuple(passed), "ring")
        passed.append((owner, loads[owner]))
    return RingChoice(None, start, tuple(passed), "ring")


def ring_order(ring: Ring, key: int, eligible: Sequence[bool]) -> list[int]:
    """The eligible replicas in ring order from ``key``'s point, each once: the same on every sidecar."""
    if not ring.points:
        return []
    return list(_clockwise(ring, bisect.bisect_left(ring.points, key) % len(ring.points), eligible))


def _clockwise(ring: Ring, start: int, eligible: Sequence[bool]) -> Iterator[int]:
    """The eligible replicas in ring order from point ``start``, each once."""
    seen: set[int] = set()
    n = len(ring.points)
    for step in range(n):
        owner = ring.owners[(start + step) % n]
        if owner in seen:
            continue
        seen.add(owner)
        if eligible[owner]:
            yield owner
        if len(seen) == len(ring.replicas):
            return


def least_loaded(loads: Sequence[float], eligible: Sequence[bool], turn: int) -> RingChoice:
    """The eligible replica with the least load; ties go round by ``turn`` (so sidecars do not herd)."""
    best: int | None = None
    count = len(loads)
    for step in range(count):
        index = (turn + step) % count
        if eligible[index] and (best is None or loads[index] < loads[best]):
            best = index
    return RingChoice(best, -1, (), "least_loaded")


def prefix_keys(body: Mapping[str, Any], shared_first: bool = False) -> tuple[int, int] | None:
    """(placement key, conversation key) of a request, or None when its prompt has no useful prefix.

    The conversation key hashes the part of the prompt that is stable for a conversation — for chat, the
    messages up to and including the first user turn, which every later turn repeats; for completions, the
    start of the prompt. The placement key is where a conversation's first turn goes on the ring: the
    conversation key, or with ``shared_first`` a long shared prefix (the messages before the first user turn,
    at least ``SHARED_PREFIX_CHARS`` of text), so that every conversation under the same long system prompt
    goes to the same replica (while under the load bound) and the prompt is cached once, not on every replica.
    Anything else (embeddings): None.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                head = blake2b(orjson.dumps(messages[:i], option=orjson.OPT_SORT_KEYS), digest_size=8)
                shared = int.from_bytes(head.digest(), "big")
                head.update(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))
                conversation = int.from_bytes(head.digest(), "big")
                if shared_first and i and _text_length(messages[:i]) >= SHARED_PREFIX_CHARS:
                    return shared, conversation
                return conversation, conversation
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        key = hash64(prompt[:PREFIX_CHARS].encode())
        return key, key
    return None


def _text_length(messages: list[Any]) -> int:
    """The characters of text in ``messages``: a string content, or the text parts of a list of parts (how
    SDKs send a system prompt with ``cache_control`` or several blocks)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part["text"]) for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return total
