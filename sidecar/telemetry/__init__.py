"""Telemetry: metrics (Prometheus text at /metrics), traces (OpenTelemetry), JSON logs, cost.

``sidecar.telemetry`` re-exports the pieces the server and router use; the submodules keep each concern
small: ``metrics`` (registry and rendering), ``tracing`` (OTel setup and spans), ``logs`` (JSON lines and
redaction), ``record`` (one request's facts).
"""

from collections.abc import Mapping

from sidecar.telemetry.metrics import LATENCY_BUCKETS, RequestMetrics
from sidecar.telemetry.record import RequestRecord

__all__ = ["LATENCY_BUCKETS", "RequestMetrics", "RequestRecord", "exporter_names", "metrics_export_requested"]


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The trace exporters the standard OTEL_* variables ask for; empty means tracing is off.

    Kept apart from ``tracing`` so that deciding costs no import: the OpenTelemetry SDK and exporters
    (~100 ms and several MiB) load only when tracing is on.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if has_endpoint else []
    return [n.strip() for n in named.split(",") if n.strip() and n.strip() != "none"]


def metrics_export_requested(env: Mapping[str, str]) -> bool:
    """Do the OTEL_* variables ask for OTLP metrics? (Decided without importing the SDK.)"""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    named = env.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    if named:
        return "otlp" in {n.strip() for n in named.split(",")}
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
