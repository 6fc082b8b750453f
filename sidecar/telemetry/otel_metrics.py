"""The /metrics series exported over OTLP too, when the standard OTEL_* variables ask for it.

Counters and gauges are *observable* instruments whose callbacks read the registry (``metrics``) when the
periodic reader collects — so they add nothing per request. OpenTelemetry has no observable histogram, so
only the two histograms are recorded per request, and only while OTLP export is on. Off (and not even
imported) unless ``OTEL_METRICS_EXPORTER`` names ``otlp``, or it is unset and an OTLP endpoint is
configured; ``OTEL_SDK_DISABLED=true`` turns it off. The export interval is the SDK's
``OTEL_METRIC_EXPORT_INTERVAL`` (default 60 s).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from sidecar.policy.breaker import BreakerState
from sidecar.telemetry.metrics import BREAKER_VALUES, LATENCY_BUCKETS, RequestMetrics
from sidecar.telemetry.record import RequestRecord

Breakers = Callable[[], Iterable[tuple[str, BreakerState]]]


class OTelMetrics:
    """A MeterProvider whose instruments mirror ``RequestMetrics``; ``record`` feeds the histograms."""

    def __init__(self, registry: RequestMetrics, breakers: Breakers, env: Mapping[str, str]) -> None:
        self.registry = registry
        self.breakers = breakers
        reader = PeriodicExportingMetricReader(_exporter(env))
        buckets = View(instrument_type=Histogram, aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS))
        attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "llm-sidecar"}
        self.provider = MeterProvider(metric_readers=[reader], views=[buckets],
                                      resource=Resource.create(attributes), shutdown_on_exit=False)
        meter = self.provider.get_meter("llm-sidecar")
        self.duration = meter.create_histogram("llm_sidecar_request_duration", unit="s",
                                               description="Time from request to complete answer.")
        self.ttft = meter.create_histogram("llm_sidecar_time_to_first_token", unit="s",
                                           description="Time from a stream's upstream call to its first token.")
        counters = {
            "llm_sidecar_requests": (registry.requests, ("model_group", "deployment", "outcome")),
            "llm_sidecar_failed_attempts": (registry.attempts, ("model_group", "error_class")),
            "llm_sidecar_upstream_failures": (registry.causes, ("deployment", "error_class", "cause")),
            "llm_sidecar_fallbacks": (registry.fallbacks, ("model_group", "fallback", "cause")),
            "llm_sidecar_breaker_panic": (registry.panics, ("model_group", "deployment")),
            "llm_sidecar_tokens": (registry.tokens, ("model_group", "deployment", "direction")),
            "llm_sidecar_cost_usd": (registry.cost, ("model_group", "deployment")),
        }
        for name, (series, labels) in counters.items():
            meter.create_observable_counter(name, callbacks=[_reader(series, labels)])
        meter.create_observable_gauge("llm_sidecar_breaker_state", callbacks=[self._breaker_states],
                                      description="Circuit breaker per deployment: 0 closed, 1 open, 2 half-open.")
        meter.create_observable_up_down_counter("llm_sidecar_in_flight", callbacks=[self._in_flight])

    def record(self, record: RequestRecord) -> None:
        self.duration.record(record.seconds, {"model_group": record.group, "deployment": record.deployment,
                                              "outcome": record.outcome})
        if record.ttft is not None:
            self.ttft.record(record.ttft, {"model_group": record.group, "deployment": record.deployment})

    def _breaker_states(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(BREAKER_VALUES[state], {"deployment": d}) for d, state in self.breakers()]

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.registry.in_flight)]

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush once more, for at most ``timeout`` seconds (an unreachable collector cannot hold us)."""
        worker = threading.Thread(target=self.provider.shutdown, daemon=True)
        worker.start()
        worker.join(timeout)


def _reader(series: Counter[tuple[str, ...]], labels: tuple[str, ...]) -> Callable[[CallbackOptions],
                                                                                  Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(zip(labels, key, strict=True))) for key, value in list(series.items())]

    return observe


def _exporter(env: Mapping[str, str]):  # type: ignore[no-untyped-def]
    protocol = (env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()
