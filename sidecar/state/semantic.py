"""The semantic cache's index: answers kept with the embedding of the question they answered, in memory.

Entries are grouped by a *bucket* — the model group and a digest of every parameter but the last user
message — so a hit only ever comes from the same group, settings and conversation before that message. A
lookup scans its bucket for the best cosine similarity; entries expire after ``ttl`` and the index holds at
most ``max_entries`` (the oldest stored goes first). No I/O: the embeddings come from the caller, and entries
other pods stored arrive through ``state.semantic_share``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    bucket: str
    vector: tuple[float, ...]
    norm: float
    answer: bytes
    expires: float


def _norm(vector: Sequence[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in vector))


class SemanticIndex:
    """Bounded: ``max_entries`` in all, each for ``ttl`` seconds."""

    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.buckets: dict[str, dict[int, Entry]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, bucket: str, vector: Sequence[float], answer: bytes, ttl: float | None = None) -> None:
        """Keep ``answer`` for ``ttl`` seconds (default the index's: an entry from another pod keeps what is
        left of its own time)."""
        norm = _norm(vector)
        if norm == 0 or not math.isfinite(norm):
            return  # no direction, or not a vector (NaN, inf: it would compare with nothing, or win every scan)
        entry = Entry(bucket, tuple(vector), norm, answer, self.clock() + (self.ttl if ttl is None else ttl))
        self._next += 1
        self.entries[self._next] = entry
        self.buckets.setdefault(bucket, {})[self._next] = entry
        while len(self.entries) > self.max_entries:
            self._drop(next(iter(self.entries)))

    def _drop(self, number: int) -> None:
        entry = self.entries.pop(number)
        members = self.buckets[entry.bucket]
        del members[number]
        if not members:
            del self.buckets[entry.bucket]

    def best(self, bucket: str, vector: Sequence[float]) -> tuple[float, bytes] | None:
        """(similarity, answer) of the closest live entry of ``bucket``, or None."""
        members = self.buckets.get(bucket)
        norm = _norm(vector)
        if not members or norm == 0 or not math.isfinite(norm):
            return None
        now = self.clock()
        found: tuple[float, bytes] | None = None
        for number, entry in list(members.items()):
            if entry.expires <= now:
                self._drop(number)
                continue
            if len(entry.vector) != len(vector):
                continue
            similarity = sum(a * b for a, b in zip(entry.vector, vector, strict=True)) / (entry.norm * norm)
            if not math.isfinite(similarity):  # a NaN kept as the best would hide every later entry
                continue
            if found is None or similarity > found[0]:
                found = (similarity, entry.answer)
        return found
