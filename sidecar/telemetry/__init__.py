"""Telemetry: metrics (Prometheus text at /metrics), traces (OpenTelemetry), JSON logs, cost.

``sidecar.telemetry`` re-exports the pieces the server and router use; the submodules keep each concern
small: ``metrics`` (registry and rendering), ``tracing`` (OTel setup and spans), ``logs`` (JSON lines and
redaction), ``record`` (one request's facts).
"""

from sidecar.telemetry.metrics import LATENCY_BUCKETS, RequestMetrics
from sidecar.telemetry.record import RequestRecord

__all__ = ["LATENCY_BUCKETS", "RequestMetrics", "RequestRecord"]
