"""Intent routing's arithmetic: which target group's example utterances a request's embedding is nearest to
(pure; no I/O). Vectors are normalised once; similarity is the cosine, the best over each group's examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Vector = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class IntentChoice:
    """A trail value: the request asked for ``group`` and went to ``chosen`` because of ``reason`` (``nearest``,
    ``below_threshold``, ``embeddings_failed``, ``not_ready``, ``no_text``), with the best ``score`` found."""

    group: str
    chosen: str
    reason: str
    score: float | None = None


def normalised(values: Sequence[float]) -> Vector | None:
    """``values`` scaled to length 1; None for a zero or non-numeric vector."""
    try:
        norm = math.sqrt(math.fsum(float(v) * float(v) for v in values))
    except (TypeError, ValueError):
        return None
    if not norm or not math.isfinite(norm):
        return None
    return tuple(float(v) / norm for v in values)


def nearest(vector: Vector, index: Sequence[tuple[str, Sequence[Vector]]]) -> tuple[str | None, float]:
    """The target group whose nearest example is most similar to ``vector``, and that similarity (cosine);
    examples of another length than ``vector`` are ignored."""
    best, score = None, -math.inf
    for group, examples in index:
        for example in examples:
            if len(example) == len(vector):
                similarity = math.fsum(a * b for a, b in zip(example, vector, strict=True))
                if similarity > score:
                    best, score = group, similarity
    return best, score
