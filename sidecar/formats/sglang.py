"""What an SGLang replica says about its load (pure): ``/v1/loads`` JSON and the ``/metrics`` exposition.

``/v1/loads`` (SGLang ≥ 0.5.x, reference §5.4) has one entry per data-parallel rank; ``/metrics`` (§6) has
one sample per scheduler. Both are summed over ranks. SGLang names its gauges ``sglang:…``; the Ray metrics
backend and ``/v1/loads?format=prometheus`` use ``sglang_…`` — both are accepted, as SMG's poller does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Load:
    """A replica's polled load. ``max_running`` is known from ``/v1/loads`` only (None from ``/metrics``)."""

    running: float = 0.0
    waiting: float = 0.0
    token_usage: float = 0.0
    cache_hit_rate: float = 0.0
    max_running: int | None = None


MAX_COUNT = 1_000_000  # requests one rank may report running or waiting; past it (or not finite): a bad answer
MAX_RANKS = 1024  # data-parallel ranks (or schedulers) one answer may list


def parse_loads(body: bytes) -> Load:
    """``GET /v1/loads`` → Load; ``ValueError`` when it is not the shape SGLang sends (no ``loads``) or a count
    is not a plausible number (negative, huge, not finite: it would skew every choice in the pool)."""
    data = orjson.loads(body)
    loads = data.get("loads") if isinstance(data, dict) else None
    if not isinstance(loads, list) or not 0 < len(loads) <= MAX_RANKS or not all(isinstance(x, dict) for x in loads):
        raise ValueError("no loads in the answer")
    limits = [x.get("max_running_requests") for x in loads]
    return Load(
        running=sum(_count(x.get("num_running_reqs")) for x in loads),
        waiting=sum(_count(x.get("num_waiting_reqs")) for x in loads),
        token_usage=max(_ratio(x.get("token_usage")) for x in loads),
        cache_hit_rate=sum(_ratio(x.get("cache_hit_rate")) for x in loads) / len(loads),
        max_running=sum(limits) if all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_COUNT
                                       for v in limits) else None,
    )


def _count(value: Any) -> float:
    """A reported count: absent or not a number reads 0; out of range is a bad answer."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    if not 0 <= value <= MAX_COUNT:  # NaN fails this too
        raise ValueError("a load count out of range")
    return float(value)


def _ratio(value: Any) -> float:
    """A reported ratio (token usage, cache hit rate), clamped to 0 to 1; anything else reads 0."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return 0.0
    return min(max(float(value), 0.0), 1.0)


# one sample per line: a label set never spans lines (``[^}\n]``: an unclosed '{' must not scan the whole body)
_SAMPLE = re.compile(rb"^sglang[:_](num_running_reqs|num_queue_reqs|token_usage|cache_hit_rate)(?:\{[^}\n]*\})?"
                     rb"[ \t]+([-+0-9.eE]+|NaN)", re.MULTILINE)
_COUNTS = (b"num_running_reqs", b"num_queue_reqs")


def parse_metrics(text: bytes) -> Load:
    """``GET /metrics`` → Load (gauges summed over schedulers; usage the highest, hit rate the mean)."""
    values: dict[bytes, list[float]] = {}
    for name, value in _SAMPLE.findall(text):
        try:
            number = float(value)
        except ValueError:
            continue
        if number == number:  # not NaN
            values.setdefault(name, []).append(_count(number) if name in _COUNTS else _ratio(number))
    if b"num_running_reqs" not in values and b"num_queue_reqs" not in values:
        raise ValueError("no SGLang load gauges in the exposition")
    if max(len(v) for v in values.values()) > MAX_RANKS:
        raise ValueError("more samples than schedulers")
    hit = values.get(b"cache_hit_rate", [0.0])
    return Load(running=sum(values.get(b"num_running_reqs", [])), waiting=sum(values.get(b"num_queue_reqs", [])),
                token_usage=max(values.get(b"token_usage", [0.0])), cache_hit_rate=sum(hit) / len(hit))
