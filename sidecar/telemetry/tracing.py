"""Tracing: OpenTelemetry SDK set up from the standard ``OTEL_*`` variables, and the spans of a request.

Off (``None``, zero cost on the hot path) when ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``, or
when no exporter is named and no OTLP endpoint is set. Spans leave through a ``BatchSpanProcessor``: the
request path only appends to a bounded queue; a worker thread exports, so a slow or unreachable collector
costs dropped spans, never a slow or failed request.

Per request: a SERVER span (continuing the app's ``traceparent``), a ``route`` span with the router's
decisions, and one CLIENT span per upstream attempt (``chat {model}``, GenAI semantic conventions).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.core.cost import request_cost
from sidecar.core.errors import UpstreamError
from sidecar.core.types import ChatResponse
from sidecar.policy.breaker import Transition
from sidecar.policy.plan import Attempt, FallbackStep, Skip
from sidecar.policy.retry import Failover, GiveUp, Retry
from sidecar.providers.http import TRACE_HEADERS
from sidecar.telemetry.logs import REDACT
from sidecar.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from sidecar.config import Config, Deployment
    from sidecar.router import Outcome

log = logging.getLogger("sidecar.telemetry")
_PROPAGATOR = TraceContextTextMapPropagator()
_CURRENT: contextvars.ContextVar[RequestSpans | None] = contextvars.ContextVar("sidecar_request_spans",
                                                                              default=None)
# gen_ai.provider.name values (semconv well-known names) for our provider prefixes.
GENAI_PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic",
                   "gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "groq": "groq",
                   "together_ai": "together_ai", "fireworks_ai": "fireworks_ai", "ollama": "ollama",
                   "hosted_vllm": "vllm", "sglang": "sglang"}


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if has_endpoint else []
    return [n.strip() for n in named.split(",") if n.strip() and n.strip() != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp, console or none)", name)
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


class Tracing:
    """The tracer and the per-deployment facts spans need, computed once."""

    def __init__(self, provider: TracerProvider, config: Config) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("llm-sidecar")
        settings = config.sidecar.telemetry
        self.capture_content = settings.capture_content
        self.content_max_chars = settings.content_max_chars
        self.strategy = config.router.routing_strategy
        self.prices = {d.id: d.model_info for d in config.deployments}
        self._static: dict[str, dict[str, Any]] = {}
        for d in config.deployments:
            address = urlsplit(d.api_base)
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": GENAI_PROVIDERS.get(d.provider, d.provider),
                "gen_ai.system": GENAI_PROVIDERS.get(d.provider, d.provider),
                "gen_ai.request.model": d.model,
                "server.address": address.hostname or "",
                "sidecar.deployment": d.id,
                "sidecar.model_group": d.model_name,
            }
            if address.port:
                attributes["server.port"] = address.port
            self._static[d.id] = attributes

    @classmethod
    def from_env(cls, config: Config, env: Mapping[str, str]) -> Tracing | None:
        exporters = [e for e in (_exporter(n, env) for n in _exporter_names(env)) if e is not None]
        if not exporters:
            return None
        attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "llm-sidecar"}
        provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, config)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush what is queued, for at most ``timeout`` seconds (an unreachable collector cannot hold us)."""
        worker = threading.Thread(target=self.provider.shutdown, daemon=True)
        worker.start()
        worker.join(timeout)

    # ---- per request ----------------------------------------------------------------------------

    def start_request(self, method: str, path: str, headers: Mapping[str, str], model: str,
                      body: Mapping[str, Any] | None) -> RequestSpans:
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        server = self.tracer.start_span(f"{method} {path}", parent, SpanKind.SERVER, {
            "http.request.method": method, "url.path": path, "http.route": path,
            "gen_ai.request.model": model})
        if self.capture_content and body is not None:
            server.set_attribute("sidecar.request.content", self._content(body.get("messages")
                                                                          or body.get("prompt")))
        server_context = trace.set_span_in_context(server, parent)
        route = self.tracer.start_span(f"route {model}", server_context, SpanKind.INTERNAL, {
            "sidecar.model_group": model, "sidecar.routing.strategy": self.strategy})
        spans = RequestSpans(self, server, route)
        spans.token = otel_context.attach(trace.set_span_in_context(route, server_context))
        spans.var_token = _CURRENT.set(spans)
        return spans

    def _content(self, value: object) -> str:
        text = value if isinstance(value, str) else repr(value)
        return REDACT(text[: self.content_max_chars])

    # ---- the router's attempt observer ----------------------------------------------------------

    def attempt(self, deployment: Deployment, outcome: Outcome, retry: int) -> AttemptSpan | None:
        spans = _CURRENT.get()
        if spans is None or not spans.route.is_recording():
            return None
        spans.flush(outcome.trail)
        attributes = dict(self._static[deployment.id])
        attributes["sidecar.attempt"] = outcome.attempts
        attributes["sidecar.retry"] = retry
        span = self.tracer.start_span(f"chat {deployment.model}", kind=SpanKind.CLIENT, attributes=attributes)
        token = None
        if deployment.propagate_trace:
            ctx = span.get_span_context()
            token = TRACE_HEADERS.set({"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"})
        return AttemptSpan(self, span, deployment, token)


class AttemptSpan:
    """One CLIENT span; ended by ``succeeded`` or ``failed``."""

    __slots__ = ("deployment", "span", "token", "tracing")

    def __init__(self, tracing: Tracing, span: trace.Span, deployment: Deployment,
                 token: Token[Mapping[str, str] | None] | None) -> None:
        self.tracing, self.span, self.deployment, self.token = tracing, span, deployment, token

    def _release(self) -> None:
        if self.token is not None:
            TRACE_HEADERS.reset(self.token)
            self.token = None

    def succeeded(self, result: object, outcome: Outcome) -> None:
        self._release()
        span = self.span
        usage = outcome.usage
        if isinstance(result, ChatResponse):
            usage = result.usage or usage
            data = result.data
            if isinstance(data.get("model"), str):
                span.set_attribute("gen_ai.response.model", data["model"])
            choices = data.get("choices")
            if isinstance(choices, list):
                reasons = [c.get("finish_reason") for c in choices if isinstance(c, dict)]
                span.set_attribute("gen_ai.response.finish_reasons", [r for r in reasons if isinstance(r, str)])
                if self.tracing.capture_content and choices and isinstance(choices[0], dict):
                    message = choices[0].get("message") or {}
                    text = message.get("content") if isinstance(message, dict) else choices[0].get("text")
                    span.set_attribute("sidecar.response.content", self.tracing._content(text or ""))
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            cost = request_cost(usage, self.tracing.prices.get(self.deployment.id))
            if cost is not None:
                span.set_attribute("sidecar.cost_usd", cost)
        if outcome.ttft is not None:
            span.set_attribute("sidecar.time_to_first_token", outcome.ttft)
        span.set_attribute("http.response.status_code", 200)
        span.end()

    def failed(self, error: BaseException) -> None:
        self._release()
        span = self.span
        if isinstance(error, UpstreamError):
            span.set_attribute("error.type", error.error_class)
            if error.upstream_status:
                span.set_attribute("http.response.status_code", error.upstream_status)
            span.set_status(Status(StatusCode.ERROR, REDACT(error.message)))
        else:
            span.set_attribute("error.type", "cancelled" if not isinstance(error, Exception)
                               else type(error).__name__)
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class RequestSpans:
    """The SERVER and route spans of one request; the route span is current while the router runs."""

    __slots__ = ("flushed", "route", "server", "token", "tracing", "var_token")

    def __init__(self, tracing: Tracing, server: trace.Span, route: trace.Span) -> None:
        self.tracing, self.server, self.route = tracing, server, route
        self.flushed = 0
        self.token: object = None
        self.var_token: Token[RequestSpans | None] | None = None

    @property
    def trace_id(self) -> str | None:
        ctx = self.server.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    def flush(self, trail: list[object]) -> None:
        """Decisions taken since the last flush become events on the route span, in order."""
        route = self.route
        for item in trail[self.flushed:]:
            name, attributes = _event(item)
            route.add_event(name, attributes)
        self.flushed = len(trail)

    def finish(self, record: RequestRecord, outcome: Outcome | None) -> None:
        if self.var_token is not None:
            _CURRENT.reset(self.var_token)
        otel_context.detach(self.token)  # type: ignore[arg-type]
        route, server = self.route, self.server
        if route.is_recording():
            if outcome is not None:
                self.flush(outcome.trail)
                route.set_attributes(_route_attributes(outcome))
            if record.outcome == "error":
                route.set_status(Status(StatusCode.ERROR))
        route.end()
        if server.is_recording():
            attributes: dict[str, Any] = {"http.response.status_code": record.status,
                                          "sidecar.request_id": record.request_id,
                                          "sidecar.outcome": record.outcome,
                                          "sidecar.attempts": record.attempts}
            if record.deployment:
                attributes["sidecar.deployment"] = record.deployment
            if record.fallback:
                attributes["sidecar.fallback"] = record.fallback
            if record.usage is not None:
                attributes["gen_ai.usage.input_tokens"] = record.usage.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = record.usage.completion_tokens
            if record.cost is not None:
                attributes["sidecar.cost_usd"] = record.cost
            if record.ttft is not None:
                attributes["sidecar.time_to_first_token"] = record.ttft
            if record.error_type:
                attributes["error.type"] = record.error_type
            server.set_attributes(attributes)
            if record.status >= 500:
                server.set_status(Status(StatusCode.ERROR))
        server.end()


def _route_attributes(outcome: Outcome) -> dict[str, Any]:
    candidates: list[str] = []
    skipped: list[str] = []
    fallbacks: list[str] = []
    retries = 0
    for item in outcome.trail:
        if isinstance(item, Attempt):
            if item.deployment not in candidates:
                candidates.append(item.deployment)
            retries += item.retry > 0
        elif isinstance(item, Skip):
            if item.deployment not in candidates:
                candidates.append(item.deployment)
            skipped.append(f"{item.deployment}: {item.reason}")
        elif isinstance(item, FallbackStep):
            fallbacks.append(f"{item.from_group} -> {item.to_group}: {item.cause}")
    attributes: dict[str, Any] = {"sidecar.routing.candidates": candidates, "sidecar.routing.skipped": skipped,
                                  "sidecar.routing.fallbacks": fallbacks, "sidecar.routing.retries": retries,
                                  "sidecar.attempts": outcome.attempts}
    if outcome.deployment is not None:
        attributes["sidecar.routing.chosen"] = outcome.deployment
    if outcome.answered_group is not None:
        attributes["sidecar.routing.answered_group"] = outcome.answered_group
    if outcome.catch_all is not None:
        attributes["sidecar.routing.catch_all"] = outcome.catch_all
    return attributes


def _event(item: object) -> tuple[str, dict[str, Any]]:
    if isinstance(item, Attempt):
        return "attempt", {"sidecar.deployment": item.deployment, "sidecar.model_group": item.group,
                           "sidecar.attempt": item.number, "sidecar.retry": item.retry}
    if isinstance(item, Skip):
        return "skip", {"sidecar.deployment": item.deployment, "sidecar.reason": item.reason}
    if isinstance(item, FallbackStep):
        return "fallback", {"sidecar.fallback.from": item.from_group, "sidecar.fallback.to": item.to_group,
                            "sidecar.fallback.cause": item.cause}
    if isinstance(item, Retry):
        return "retry", {"sidecar.reason": item.reason, "sidecar.retry.delay": item.delay}
    if isinstance(item, Failover):
        return "failover", {"sidecar.reason": item.reason}
    if isinstance(item, GiveUp):
        return "give_up", {"sidecar.reason": item.reason}
    if isinstance(item, Transition):
        return "breaker_transition", {"sidecar.deployment": item.deployment, "sidecar.breaker.from": item.old.value,
                                      "sidecar.breaker.to": item.new.value, "sidecar.reason": item.reason}
    return type(item).__name__.lower(), {}
