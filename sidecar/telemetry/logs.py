"""Structured logs: every record one JSON line (orjson), secrets redacted, one line per request.

Redaction runs on every message and exception text, so a key that reaches a log line by any path — an
upstream error body echoing our Authorization header, an exception text — leaves as ``[REDACTED]``
(``core.redact``: configured secrets, key shapes, URLs, deployment hosts, internal addresses). Structured
``fields`` are ids, names and numbers the sidecar chose, and are not rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, BinaryIO

import orjson

from sidecar.core.redact import Redactor
from sidecar.telemetry.record import RequestRecord

REQUEST_LOG = logging.getLogger("sidecar.request")
# The one redactor of the process: log lines, spans and the errors the app receives (``core.redact``);
# compiled for the configuration at start (``config.redaction.configure_redactor``).
REDACT = Redactor()


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...fields}`` with every string redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": REDACT(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = REDACT(self.formatException(record.exc_info))
        try:
            return orjson.dumps(line).decode()
        except TypeError:  # a lone surrogate (a client's undecodable header byte) is not UTF-8: escaped instead
            return orjson.dumps(_escaped(line), default=str).decode()


def _escaped(value: Any) -> Any:
    """``value`` with every string made valid UTF-8 (``\\udcff`` written out)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {_escaped(str(k)): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def setup_logging(level: str) -> None:
    """Root logging to stderr as JSON lines at ``level`` (sidecar_settings.log_level)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # OpenTelemetry warns, once per request and quoting it, about every malformed tracestate an app sends
    logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)


def log_request(record: RequestRecord) -> None:
    """The one line per request, at INFO (errors at WARNING). Skipped entirely when the level hides it.

    Written straight to stderr's binary buffer — no LogRecord, no formatter, no syscall per request;
    ``flush_request_log`` empties the buffer on a short timer and at shutdown. Every field is an id, a
    name from the config or a number, so none needs redaction.
    """
    level = logging.INFO if record.outcome != "error" else logging.WARNING
    if not REQUEST_LOG.isEnabledFor(level):
        return
    usage = record.usage
    line = {
        "ts": round(time.time(), 6),
        "level": "info" if level == logging.INFO else "warning",
        "logger": "sidecar.request",
        "message": "request",
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "model_group": record.group,
        "deployment": record.deployment or None,
        "attempts": record.attempts,
        "errors": record.errors,
        "failures": [{"deployment": d, "error": e, "cause": c} for d, e, c in record.failures],
        "fallback": record.fallback,
        "fallback_cause": record.fallback_cause,
        "panic": record.panic,
        "outcome": record.outcome,
        "status": record.status,
        "error_type": record.error_type,
        "stream": record.stream,
        "latency_ms": round(record.seconds * 1000, 3),
        "ttft_ms": round(record.ttft * 1000, 3) if record.ttft is not None else None,
        "input_tokens": usage.prompt_tokens if usage else None,
        "output_tokens": usage.completion_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "cost_usd": record.cost,
    }
    if record.dropped:  # drop_params removed fields the provider cannot take
        line["dropped_params"] = record.dropped
    REQUEST_LINES.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


class RequestLines:
    """A buffered writer on stderr's file descriptor, opened on first use.

    Python's own stderr is unbuffered — a syscall per line. Lines are written whole, so they never
    interleave mid-line with other log lines; their order relative to those can differ by up to one flush
    interval, and each line carries its own ``ts``.
    """

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        out = self._out
        if out is None:
            out = self._out = self._open()
        out.write(data)

    def flush(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError, ValueError):  # stderr closed or broken: nothing more to do
                self._out.flush()

    @staticmethod
    def _open() -> BinaryIO:
        try:
            return open(sys.stderr.fileno(), "wb", buffering=64 * 1024, closefd=False)
        except (AttributeError, OSError, ValueError):  # stderr without a descriptor: a test runner's capture
            return sys.stderr.buffer  # type: ignore[no-any-return]


REQUEST_LINES = RequestLines()


def flush_request_log() -> None:
    """Push buffered request lines out (called on a timer by the server and at shutdown)."""
    REQUEST_LINES.flush()
