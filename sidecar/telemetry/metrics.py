"""Request metrics, rendered in Prometheus text format for /metrics.

A hand-kept registry: each request costs a handful of dict updates (about a microsecond), where the
OpenTelemetry SDK's instruments cost several microseconds per call with attribute sets hashed each time.
Exporting these series over OTLP as well is not built yet: /metrics (Prometheus text) is the interface.

The metric names are part of the operator contract (the Helm chart's alerts and dashboard use them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from sidecar.policy.breaker import BreakerState
from sidecar.telemetry.record import RequestRecord

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}  # chart contract


class Histogram:
    """Cumulative-at-render histogram: per label set, counts per bucket plus count and sum."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(LATENCY_BUCKETS) + 3)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if value <= bound:
                series[i] += 1
                break
        else:
            series[len(LATENCY_BUCKETS)] += 1
        series[-2] += 1  # count
        series[-1] += value  # sum

    def cumulative(self, labels: tuple[str, ...]) -> list[float]:
        """Bucket counts, cumulative, one per bound (the +Inf bucket is the count)."""
        out, total = [], 0.0
        for n in self.series[labels][: len(LATENCY_BUCKETS)]:
            total += n
            out.append(total)
        return out


class Exporter(Protocol):
    def record(self, record: RequestRecord) -> None: ...


class RequestMetrics:
    """Counters and histograms per (model group, deployment, outcome); O(1) per request."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.causes: Counter[tuple[str, str, str]] = Counter()  # (deployment, error class, cause)
        self.fallbacks: Counter[tuple[str, str, str]] = Counter()
        self.panics: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[tuple[str, str, str]] = Counter()
        self.cost: Counter[tuple[str, str]] = Counter()
        self.duration = Histogram()
        self.ttft = Histogram()
        self.in_flight = 0
        # shadow traffic (routing.shadow), apart from the app's requests: (group, shadow group, deployment, outcome)
        self.shadow: Counter[tuple[str, str, str, str]] = Counter()
        self.shadow_duration = Histogram()  # (group, shadow group, outcome)
        self.shadow_tokens: Counter[tuple[str, str, str]] = Counter()  # (shadow group, deployment, direction)
        self.shadow_cost: Counter[tuple[str, str]] = Counter()  # (shadow group, deployment)
        self.exporter: Exporter | None = None  # OTLP export of the same series, when configured


    def observe(self, record: RequestRecord) -> None:
        group, deployment = record.group, record.deployment
        self.requests[(group, deployment, record.outcome)] += 1
        for error_class in record.errors:
            self.attempts[(group, error_class)] += 1
        for failure in record.failures:
            self.causes[failure] += 1
        self.duration.observe((group, deployment, record.outcome), record.seconds)
        if record.ttft is not None:
            self.ttft.observe((group, deployment), record.ttft)
        if record.fallback is not None:
            self.fallbacks[(group, record.fallback, record.fallback_cause or "")] += 1
        if record.panic is not None:
            self.panics[(group, record.panic)] += 1
        usage = record.usage
        if usage is not None:
            self.tokens[(group, deployment, "input")] += usage.prompt_tokens
            self.tokens[(group, deployment, "output")] += usage.completion_tokens
        if record.cost is not None:
            self.cost[(group, deployment)] += record.cost
        if self.exporter is not None:
            self.exporter.record(record)

    def render(self, breakers: Iterable[tuple[str, BreakerState]] = ()) -> str:
        lines: list[str] = []
        _counter(lines, "llm_sidecar_requests_total", "Requests answered, by model group, deployment and outcome.",
                 ("model_group", "deployment", "outcome"), self.requests)
        _counter(lines, "llm_sidecar_failed_attempts_total", "Upstream attempts that failed, by error class.",
                 ("model_group", "error_class"), self.attempts)
        _counter(lines, "llm_sidecar_upstream_failures_total",
                 "Failed upstream attempts by deployment, error class and cause (dns, refused, tls_verify, proxy_auth, "
                 "connect_timeout, closed, http_503, ...).", ("deployment", "error_class", "cause"), self.causes)
        _counter(lines, "llm_sidecar_fallbacks_total", "Requests answered by a fallback model group, by cause.",
                 ("model_group", "fallback", "cause"), self.fallbacks)
        _counter(lines, "llm_sidecar_breaker_panic_total",
                 "Requests sent to a deployment past its open breaker because nothing else was left.",
                 ("model_group", "deployment"), self.panics)
        _counter(lines, "llm_sidecar_tokens_total", "Tokens billed, by direction (input, output).",
                 ("model_group", "deployment", "direction"), self.tokens)
        _counter(lines, "llm_sidecar_cost_usd_total", "Spend in USD from model_info prices (deployments with prices).",
                 ("model_group", "deployment"), self.cost)
        _counter(lines, "llm_sidecar_shadow_requests_total",
                 "Shadow copies of requests, by model group, shadow group, deployment and outcome (success, an "
                 "error class, dropped).", ("model_group", "shadow_group", "deployment", "outcome"), self.shadow)
        _counter(lines, "llm_sidecar_shadow_tokens_total", "Tokens billed for shadow copies, by direction.",
                 ("shadow_group", "deployment", "direction"), self.shadow_tokens)
        _counter(lines, "llm_sidecar_shadow_cost_usd_total", "Spend in USD on shadow copies (not in any budget).",
                 ("shadow_group", "deployment"), self.shadow_cost)
        _histogram(lines, "llm_sidecar_shadow_duration_seconds", "Time a shadow copy took, by outcome.",
                   ("model_group", "shadow_group", "outcome"), self.shadow_duration)
        _histogram(lines, "llm_sidecar_request_duration_seconds", "Time from request to complete answer.",
                   ("model_group", "deployment", "outcome"), self.duration)
        _histogram(lines, "llm_sidecar_time_to_first_token_seconds",
                   "Time from a stream's upstream call to its first token.",
                   ("model_group", "deployment"), self.ttft)
        lines += ["# HELP llm_sidecar_breaker_state Circuit breaker per deployment: 0 closed, 1 open, 2 half-open.",
                  "# TYPE llm_sidecar_breaker_state gauge"]
        lines += [f'llm_sidecar_breaker_state{{deployment="{_esc(d)}"}} {BREAKER_VALUES[s]}' for d, s in breakers]
        lines += ["# HELP llm_sidecar_in_flight Requests being served now.", "# TYPE llm_sidecar_in_flight gauge",
                  f"llm_sidecar_in_flight {self.in_flight}", ""]
        return "\n".join(lines)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True))


def _counter(lines: list[str], name: str, help_text: str, names: tuple[str, ...],
             values: Counter[tuple[str, str]] | Counter[tuple[str, str, str]] | Counter[tuple[str, str, str, str]],
             ) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key, n in sorted(values.items()):
        lines.append(f"{name}{{{_labels(names, key)}}} {n}")


def _histogram(lines: list[str], name: str, help_text: str, names: tuple[str, ...], hist: Histogram) -> None:
    metric = name
    lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} histogram"]
    for key in sorted(hist.series):
        series, labels = hist.series[key], _labels(names, key)
        for bound, n in zip(LATENCY_BUCKETS, hist.cumulative(key), strict=True):
            lines.append(f'{metric}_bucket{{{labels},le="{bound}"}} {int(n)}')  # counts: every digit (not :g's 6)
        lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {int(series[-2])}')
        lines.append(f"{metric}_count{{{labels}}} {int(series[-2])}")
        lines.append(f"{metric}_sum{{{labels}}} {series[-1]:.6f}")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
