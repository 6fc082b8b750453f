"""Span export on the event loop: encoded spans are queued, batched and sent.

The request path only appends its spans' bytes (``telemetry.otlp``) to a bounded list. A task on the loop
wakes every ``OTEL_BSP_SCHEDULE_DELAY`` (or as soon as a batch is full), wraps the batch in one
``ExportTraceServiceRequest`` and hands it to a sender:

* OTLP/HTTP (the usual case): POSTed through ``providers.http``, the same pooled keep-alive client the
  upstream calls use — no worker thread competing with the loop for the sidecar's one core;
* OTLP/gRPC, or OTLP/HTTP with client certificates or a custom CA: the SDK's exporter sends the bytes,
  in a worker thread (its TLS, retries and headers from the standard variables);
* console: the batch printed as OTLP JSON, one line per batch.

A slow or unreachable collector costs dropped spans (the queue is bounded), never a slow request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

from sidecar.telemetry.otlp import Envelope

log = logging.getLogger("sidecar.telemetry")
Post = Callable[[bytes, Mapping[str, str], float], Awaitable[int]]  # body, headers, timeout → HTTP status
Send = Callable[[bytes], Awaitable[None]]  # raises ExportFailed
WARN_EVERY = 60.0  # seconds between warnings about failed exports or dropped spans


class ExportFailed(Exception):
    pass


class BatchExporter:
    """Queues encoded spans; ``run`` (a task on the loop) sends them in batches."""

    def __init__(self, send: Send, envelope: Envelope, env: Mapping[str, str],
                 close: Callable[[], None] | None = None) -> None:
        self.send = send
        self.envelope = envelope
        self.close = close  # a blocking shutdown for an SDK exporter (run in a thread)
        self.delay = _number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000.0) / 1000.0
        self.max_batch = int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self.max_queue = int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self.queue: list[bytes] = []
        self.dropped = 0
        self._full = asyncio.Event()
        self._warned = 0.0

    def add(self, spans: list[bytes]) -> None:
        """A request's finished spans (called on the loop, by the request path)."""
        queue = self.queue
        if len(queue) + len(spans) > self.max_queue:
            self.dropped += len(spans)
            return
        queue += spans
        if len(queue) >= self.max_batch:
            self._full.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.delay)
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued now. Spans that end while it is being sent wait for the next batch: draining
        until the queue stays empty would, under load, send a tiny batch after every few requests."""
        pending, self.queue = self.queue, []
        for start in range(0, len(pending), self.max_batch):
            batch = pending[start:start + self.max_batch]
            try:
                await self.send(self.envelope.request(batch))
            except Exception as exc:  # the collector is down or slow: spans are best effort
                self._warn("could not export %d spans: %s", len(batch), exc)
        if self.dropped:
            self._warn("dropped %d spans: the export queue (OTEL_BSP_MAX_QUEUE_SIZE=%d) was full",
                       self.dropped, self.max_queue)
            self.dropped = 0

    async def aclose(self, within: float = 3.0) -> None:
        """A last flush, for at most ``within`` seconds (an unreachable collector cannot hold shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), within)
        if self.close is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, self.close), within)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(message, *args)


# ---- senders ---------------------------------------------------------------------------------------


def http_sender(post: Post, env: Mapping[str, str]) -> Send:
    """OTLP/HTTP through the sidecar's own client: one attempt per batch, no retries (best effort)."""
    timeout = _number(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", _number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0))
    headers = {"content-type": "application/x-protobuf", **_headers(env)}
    compress = (env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                or env.get("OTEL_EXPORTER_OTLP_COMPRESSION", "")).strip().lower() == "gzip"
    if compress:
        headers["content-encoding"] = "gzip"

    async def send(body: bytes) -> None:
        if compress:
            body = gzip.compress(body, compresslevel=1)
        status = await post(body, headers, timeout)
        if not 200 <= status < 300:
            raise ExportFailed(f"the collector answered {status}")

    return send


def threaded_sender(export: Callable[[bytes], bool]) -> Send:
    """A blocking exporter's ``export(body) -> ok``, run in a worker thread."""
    async def send(body: bytes) -> None:
        if not await asyncio.get_running_loop().run_in_executor(None, export, body):
            raise ExportFailed("the exporter reported a failure")

    return send


def sdk_exporter(protocol: str) -> tuple[Callable[[bytes], bool], Callable[[], None]]:
    """The SDK's OTLP exporter for ``protocol`` (``grpc`` or ``http/protobuf``), sending encoded bytes:
    its endpoint, headers, TLS, compression and retries come from the standard variables."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        class GrpcBytes(Grpc):  # the mixin's two hooks: the batch is already an encoded request
            def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
                return ExportTraceServiceRequest.FromString(data)

            def _count_data(self, data: Any) -> int:
                return 0

        grpc = GrpcBytes()
        return (lambda body: grpc._export(body).name == "SUCCESS"), grpc.shutdown

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    http = Http()
    return (lambda body: bool(http._client.export(body).success)), http.shutdown


def console_export(body: bytes) -> bool:
    """``OTEL_TRACES_EXPORTER=console``: the batch as one line of OTLP JSON on stdout."""
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    sys.stdout.write(MessageToJson(ExportTraceServiceRequest.FromString(body), indent=None) + "\n")
    sys.stdout.flush()
    return True


# ---- the standard variables ------------------------------------------------------------------------


def endpoint(env: Mapping[str, str]) -> str:
    """The traces URL the standard variables name (the signal-specific one is used as given)."""
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if url:
        return url
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def protocol(env: Mapping[str, str]) -> str:
    return (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf").strip().lower()


def own_client_usable(env: Mapping[str, str]) -> bool:
    """Can the sidecar's client send the traces? (gRPC, client certificates and custom CAs are the SDK's.)"""
    tls = ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")
    return protocol(env) != "grpc" and not any(
        env.get(f"OTEL_EXPORTER_OTLP_{name}") or env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") for name in tls)


def _headers(env: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``: ``key=value`` pairs, comma separated, URL-encoded."""
    raw = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS") or ""
    out = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[unquote(key.strip()).lower()] = unquote(value.strip())
    return out


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default
