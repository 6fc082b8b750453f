"""Per-replica metrics of shared SGLang deployments (Prometheus text), from rows the server reads off the
router's replica pools at scrape time — nothing is counted on the request path for them here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class ReplicaRow(NamedTuple):
    """One replica as a scrape sees it; ``replica`` is its stable name (``r-…``), never its address."""

    deployment: str
    replica: str
    healthy: bool
    in_flight: int
    queue_depth: float  # the last polled waiting requests
    requests: int
    cached_prompt_tokens: int


METRICS = (
    ("requests_total", "counter", "Attempts this sidecar sent to each replica.", "requests"),
    ("in_flight", "gauge", "This sidecar's attempts in flight on each replica.", "in_flight"),
    ("queue_depth", "gauge", "Requests waiting on each replica, as last polled.", "queue_depth"),
    ("cached_prompt_tokens_total", "counter", "Prompt tokens each replica reported served from its prefix cache.",
     "cached_prompt_tokens"),
    ("healthy", "gauge", "1 while a replica is in rotation (its last health poll passed), else 0.", "healthy"),
)


def render_replicas(rows: Iterable[ReplicaRow]) -> str:
    rows = list(rows)
    if not rows:
        return ""
    lines: list[str] = []
    for name, kind, help_text, field in METRICS:
        metric = f"llm_sidecar_sglang_replica_{name}"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        lines += [f'{metric}{{deployment="{_esc(r.deployment)}",replica="{r.replica}"}} {float(getattr(r, field)):g}'
                  for r in rows]
    return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
