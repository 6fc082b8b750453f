"""What an SGLang replica says about its load (pure): ``/v1/loads`` JSON and the ``/metrics`` exposition.

``/v1/loads`` (SGLang ≥ 0.5.x, reference §5.4) has one entry per data-parallel rank; ``/metrics`` (§6) has
one sample per scheduler. Both are summed over ranks. SGLang names its gauges ``sglang:…``; the Ray metrics
backend and ``/v1/loads?format=prometheus`` use ``sglang_…`` — both are accepted, as SMG's poller does.
"""

from __future__ import annotations

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


def parse_loads(body: bytes) -> Load:
    """``GET /v1/loads`` → Load; ``ValueError`` when it is not the shape SGLang sends (no ``loads``)."""
    data = orjson.loads(body)
    loads = data.get("loads") if isinstance(data, dict) else None
    if not isinstance(loads, list) or not loads or not all(isinstance(x, dict) for x in loads):
        raise ValueError("no loads in the answer")
    limits = [x.get("max_running_requests") for x in loads]
    return Load(
        running=_sum(loads, "num_running_reqs"),
        waiting=_sum(loads, "num_waiting_reqs"),
        token_usage=max(_number(x.get("token_usage")) for x in loads),
        cache_hit_rate=sum(_number(x.get("cache_hit_rate")) for x in loads) / len(loads),
        max_running=sum(int(v) for v in limits) if all(isinstance(v, int) for v in limits) else None,
    )


def _sum(loads: list[dict[str, Any]], key: str) -> float:
    return sum(_number(x.get(key)) for x in loads)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


_SAMPLE = re.compile(rb"^sglang[:_](num_running_reqs|num_queue_reqs|token_usage|cache_hit_rate)(?:\{[^}]*\})?\s+"
                     rb"([-+0-9.eE]+|NaN)", re.MULTILINE)


def parse_metrics(text: bytes) -> Load:
    """``GET /metrics`` → Load (gauges summed over schedulers; usage the highest, hit rate the mean)."""
    values: dict[bytes, list[float]] = {}
    for name, value in _SAMPLE.findall(text):
        try:
            number = float(value)
        except ValueError:
            continue
        if number == number:  # not NaN
            values.setdefault(name, []).append(number)
    if b"num_running_reqs" not in values and b"num_queue_reqs" not in values:
        raise ValueError("no SGLang load gauges in the exposition")
    hit = values.get(b"cache_hit_rate", [0.0])
    return Load(running=sum(values.get(b"num_running_reqs", [])), waiting=sum(values.get(b"num_queue_reqs", [])),
                token_usage=max(values.get(b"token_usage", [0.0])), cache_hit_rate=sum(hit) / len(hit))
