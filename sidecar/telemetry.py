"""Telemetry: request counters rendered in Prometheus text format for /metrics.

The metric names are part of the operator contract (dashboards and alerts use them).
"""

from __future__ import annotations

from collections import Counter

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class RequestMetrics:
    """Counters and a latency histogram per (model group, deployment, outcome); O(1) per request."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.buckets: dict[tuple[str, str], list[float]] = {}
        self.in_flight = 0

    def observe(self, group: str, deployment: str, outcome: str, seconds: float, errors: list[str]) -> None:
        self.requests[(group, deployment, outcome)] += 1
        for error_class in errors:
            self.attempts[(group, error_class)] += 1
        series = self.buckets.get((group, outcome))
        if series is None:
            series = self.buckets[(group, outcome)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                series[i] += 1
        series[-2] += 1  # count
        series[-1] += seconds  # sum

    def render(self) -> str:
        lines = [
            "# HELP llm_sidecar_requests_total Requests answered, by model group, deployment and outcome.",
            "# TYPE llm_sidecar_requests_total counter",
        ]
        for (group, deployment, outcome), n in sorted(self.requests.items()):
            lines.append(f'llm_sidecar_requests_total{{model_group="{_esc(group)}",'
                         f'deployment="{_esc(deployment)}",outcome="{outcome}"}} {n}')
        lines += ["# HELP llm_sidecar_failed_attempts_total Upstream attempts that failed, by error class.",
                  "# TYPE llm_sidecar_failed_attempts_total counter"]
        for (group, error_class), n in sorted(self.attempts.items()):
            lines.append(f'llm_sidecar_failed_attempts_total{{model_group="{_esc(group)}",'
                         f'error_class="{error_class}"}} {n}')
        lines += ["# HELP llm_sidecar_request_duration_seconds Time from request to complete answer.",
                  "# TYPE llm_sidecar_request_duration_seconds histogram"]
        for (group, outcome), series in sorted(self.buckets.items()):
            labels = f'model_group="{_esc(group)}",outcome="{outcome}"'
            for bound, n in zip(LATENCY_BUCKETS, series, strict=False):
                lines.append(f'llm_sidecar_request_duration_seconds_bucket{{{labels},le="{bound}"}} {n:g}')
            lines.append(f'llm_sidecar_request_duration_seconds_bucket{{{labels},le="+Inf"}} {series[-2]:g}')
            lines.append(f"llm_sidecar_request_duration_seconds_count{{{labels}}} {series[-2]:g}")
            lines.append(f"llm_sidecar_request_duration_seconds_sum{{{labels}}} {series[-1]:.6f}")
        lines += ["# HELP llm_sidecar_in_flight Requests being served now.", "# TYPE llm_sidecar_in_flight gauge",
                  f"llm_sidecar_in_flight {self.in_flight}", ""]
        return "\n".join(lines)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
