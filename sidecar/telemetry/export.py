"""OTLP/HTTP span export on the event loop, with the sidecar's own HTTP client.

The SDK's ``BatchSpanProcessor`` exports from a worker thread through a ``requests``-based client; on a
sidecar pinned to one core that thread competes with the event loop for the GIL on every batch — it was
most of what tracing still cost. Here the request path only appends finished spans to a bounded list; a
task on the loop wakes every ``OTEL_BSP_SCHEDULE_DELAY`` (or as soon as a batch is full), encodes the batch
with ``otlp.encode_request`` and POSTs it through ``providers.http`` — the same pooled keep-alive client
the upstream calls use. A slow or unreachable collector costs dropped spans (the queue is bounded), never
a slow request. One attempt per batch, no retries: traces are best effort.

Used for ``http/protobuf`` when no client certificate is configured; gRPC and mTLS stay on the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import unquote

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from sidecar.telemetry.otlp import encode_request

log = logging.getLogger("sidecar.telemetry")
Post = Callable[[bytes, Mapping[str, str], float], Awaitable[int]]  # body, headers, timeout → HTTP status
WARN_EVERY = 60.0  # seconds between warnings about failed exports or dropped spans


class LoopBatchProcessor(SpanProcessor):
    """Queues finished spans; ``run`` (a task on the loop) exports them in batches."""

    def __init__(self, post: Post, env: Mapping[str, str]) -> None:
        self.post = post
        self.delay = _number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000.0) / 1000.0
        self.max_batch = int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self.max_queue = int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self.timeout = _number(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                               _number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0))
        self.headers = {"content-type": "application/x-protobuf", **_headers(env)}
        self.gzip = (env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                     or env.get("OTEL_EXPORTER_OTLP_COMPRESSION", "")).strip().lower() == "gzip"
        if self.gzip:
            self.headers["content-encoding"] = "gzip"
        self.queue: list[ReadableSpan] = []
        self.dropped = 0
        self._full = asyncio.Event()
        self._warned = 0.0

    # ---- the SDK's SpanProcessor interface (called on the loop, by the request path) ------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) >= self.max_batch:
            self._full.set()

    def shutdown(self) -> None:
        pass  # ``aclose`` flushes; the SDK's synchronous shutdown has nothing left to do

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # ---- on the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.delay)
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch:]
            await self._export(batch)
        if self.dropped:
            self._warn("dropped %d spans: the export queue (OTEL_BSP_MAX_QUEUE_SIZE=%d) was full",
                       self.dropped, self.max_queue)
            self.dropped = 0

    async def aclose(self, within: float = 3.0) -> None:
        """A last flush, for at most ``within`` seconds (an unreachable collector cannot hold shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), within)

    async def _export(self, batch: Sequence[ReadableSpan]) -> None:
        body = encode_request(batch)
        if self.gzip:
            body = gzip.compress(body, compresslevel=1)
        try:
            status = await self.post(body, self.headers, self.timeout)
        except Exception as exc:  # the collector is down or slow: spans are best effort
            self._warn("could not export %d spans: %s", len(batch), exc)
            return
        if not 200 <= status < 300:
            self._warn("the collector answered %d to %d spans", status, len(batch))

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(message, *args)


def endpoint(env: Mapping[str, str]) -> str:
    """The traces URL the standard variables name (the signal-specific one is used as given)."""
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if url:
        return url
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def usable(env: Mapping[str, str]) -> bool:
    """Can this processor honour the configuration? (Client certificates and custom CAs are the SDK's.)"""
    tls = ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")
    return not any(env.get(f"OTEL_EXPORTER_OTLP_{name}") or env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
                   for name in tls)


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
