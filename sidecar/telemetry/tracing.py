"""Tracing: OpenTelemetry set up from the standard ``OTEL_*`` variables, and the spans of a request.

Off (``None``, zero cost on the hot path) when ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``, or
when no exporter is named and no OTLP endpoint is set. Spans leave through a ``BatchSpanProcessor``: the
request path only appends to a bounded queue; a worker thread exports, so a slow or unreachable collector
costs dropped spans, never a slow or failed request.

Per request: a SERVER span (continuing the app's ``traceparent``), a ``route`` span with the router's
decisions, and one CLIENT span per upstream attempt (``chat {model}``, GenAI semantic conventions).

Cheap by construction: the configured sampler decides once, when the request starts, and ids come from the
provider's id generator (a CLIENT span's id is needed when its upstream call starts, for ``traceparent``).
While the request runs only plain values are noted (times, ids, the router's ``Outcome``); when it ends
the finished spans are built as ``ReadableSpan`` values — no SDK ``Span``, no lock, no per-attribute
validation: every attribute is one of ours — and handed to the span processors. An unsampled request
costs one sampler call; it forwards the app's ``traceparent`` upstream unchanged, and makes no span.
Export encodes with ``sidecar.telemetry.otlp`` (the same bytes as the SDK's encoder, a tenth of the CPU).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Mapping, Sequence
from contextvars import Token
from time import time_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.core.cost import request_cost
from sidecar.core.errors import UpstreamError
from sidecar.core.types import ChatResponse
from sidecar.formats.continuation import StreamProgress
from sidecar.policy.breaker import Transition
from sidecar.policy.plan import Attempt, FallbackStep, Ranking, Skip
from sidecar.policy.retry import Failover, GiveUp, Retry
from sidecar.providers.http import TRACE_HEADERS
from sidecar.telemetry import export, exporter_names, otlp
from sidecar.telemetry.logs import REDACT
from sidecar.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from sidecar.config import Config, Deployment
    from sidecar.outcome import Outcome

log = logging.getLogger("sidecar.telemetry")
_PROPAGATOR = TraceContextTextMapPropagator()
_CURRENT: contextvars.ContextVar[RequestSpans | Passthrough | None] = contextvars.ContextVar(
    "sidecar_request_spans", default=None)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# gen_ai.provider.name values (semconv well-known names) for our provider prefixes.
GENAI_PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic",
                   "gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "groq": "groq",
                   "together_ai": "together_ai", "fireworks_ai": "fireworks_ai", "ollama": "ollama",
                   "hosted_vllm": "vllm", "sglang": "sglang"}


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp, console or none)", name)
        return None
    return otlp.grpc_exporter() if _protocol(env) == "grpc" else otlp.http_exporter()


def _protocol(env: Mapping[str, str]) -> str:
    return (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf").strip().lower()


class Tracing:
    """The sampler, id generator and span processors, and the per-deployment facts spans need."""

    def __init__(self, provider: TracerProvider, config: Config,
                 processors: Sequence[SpanProcessor] | None = None) -> None:
        self.provider = provider
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.scope = InstrumentationScope("llm-sidecar", __version__)
        # BatchSpanProcessor.on_end only queues the span; without a list, the provider's own multi-processor
        self.processors = tuple(processors or (provider._active_span_processor,))
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
                "gen_ai.request.model": d.model,
                "server.address": address.hostname or "",
                "sidecar.deployment": d.id,
            }
            if address.port:
                attributes["server.port"] = address.port
            self._static[d.id] = attributes

    @classmethod
    def from_env(cls, config: Config, env: Mapping[str, str], post: export.Post | None = None) -> Tracing | None:
        """Tracing as the OTEL_* variables say, or None. With ``post`` (the sidecar's own HTTP client),
        OTLP/HTTP export runs on the event loop (``telemetry.export``) instead of the SDK's worker thread."""
        processors: list[SpanProcessor] = []
        for name in exporter_names(env):
            if name == "otlp" and post is not None and _protocol(env) != "grpc" and export.usable(env):
                processors.append(export.LoopBatchProcessor(post, env))
                continue
            exporter = _exporter(name, env)
            if exporter is not None:
                processors.append(BatchSpanProcessor(exporter))
        if not processors:
            return None
        attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "llm-sidecar"}
        provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
        for processor in processors:
            provider.add_span_processor(processor)  # for shutdown: flush what is queued
        return cls(provider, config, processors)

    @property
    def loop_processors(self) -> list[export.LoopBatchProcessor]:
        return [p for p in self.processors if isinstance(p, export.LoopBatchProcessor)]

    async def aclose(self, within: float = 3.0) -> None:
        """Flush what is queued, for at most ``within`` seconds (an unreachable collector cannot hold us)."""
        for processor in self.loop_processors:
            await processor.aclose(within)
        await asyncio.get_running_loop().run_in_executor(None, self.shutdown, within)

    def shutdown(self, timeout: float = 3.0) -> None:
        worker = threading.Thread(target=self.provider.shutdown, daemon=True)
        worker.start()
        worker.join(timeout)

    # ---- per request ----------------------------------------------------------------------------

    def start_request(self, method: str, path: str, headers: Mapping[str, str], model: str,
                      body: Mapping[str, Any] | None) -> RequestSpans | Passthrough:
        parent: SpanContext | None = None
        parent_context = None
        if "traceparent" in headers:
            parent_context = _PROPAGATOR.extract(headers)
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                parent, parent_context = None, None
        trace_id = parent.trace_id if parent is not None else self.ids.generate_trace_id()
        name = f"{method} {path}"
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path, "gen_ai.request.model": model}
        sampling = self.sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER, attributes)
        if not sampling.decision.is_sampled():
            if parent is None:
                return _DROPPED
            passthrough = Passthrough(parent, headers)
            passthrough.var_token = _CURRENT.set(passthrough)
            return passthrough
        if sampling.attributes:
            attributes.update(sampling.attributes)
        if self.capture_content and body is not None:
            attributes["sidecar.request.content"] = self._content(body.get("messages") or body.get("prompt"))
        spans = RequestSpans(self, trace_id, parent, sampling.trace_state, name, model, attributes)
        spans.var_token = _CURRENT.set(spans)
        return spans

    def _content(self, value: object) -> str:
        text = value if isinstance(value, str) else repr(value)
        return REDACT(text[: self.content_max_chars])

    # ---- the router's attempt observer ----------------------------------------------------------

    def attempt(self, deployment: Deployment, outcome: Outcome, retry: int) -> AttemptSpan | Forwarded | None:
        spans = _CURRENT.get()
        if spans is None:
            return None
        if spans.__class__ is Passthrough:
            if not deployment.propagate_trace:
                return None
            return Forwarded(TRACE_HEADERS.set(spans.headers))  # type: ignore[union-attr]
        assert isinstance(spans, RequestSpans)
        spans.mark(outcome.trail)
        span = AttemptSpan(self, spans, deployment, self.ids.generate_span_id(), outcome.attempts, retry)
        spans.clients.append(span)
        if deployment.propagate_trace:
            headers = {"traceparent": f"{spans.traceparent_prefix}{span.span_id:016x}-01"}
            if spans.tracestate:
                headers["tracestate"] = spans.tracestate
            span.token = TRACE_HEADERS.set(headers)
        return span


class Forwarded:
    """An unsampled request's attempt: the app's ``traceparent`` goes upstream as it came."""

    __slots__ = ("token",)

    def __init__(self, token: Token[Mapping[str, str] | None]) -> None:
        self.token = token

    def succeeded(self, result: object, outcome: Outcome) -> None:
        TRACE_HEADERS.reset(self.token)

    def failed(self, error: BaseException) -> None:
        TRACE_HEADERS.reset(self.token)


class AttemptSpan:
    """One CLIENT span's facts; ``succeeded`` or ``failed`` ends it, ``RequestSpans.finish`` exports it."""

    __slots__ = ("attributes", "deployment", "end", "span_id", "start", "status", "token", "tracing")

    def __init__(self, tracing: Tracing, spans: RequestSpans, deployment: Deployment, span_id: int,
                 number: int, retry: int) -> None:
        self.tracing, self.deployment, self.span_id = tracing, deployment, span_id
        self.attributes: dict[str, Any] = {**tracing._static[deployment.id], "sidecar.attempt": number,
                                           "sidecar.retry": retry}
        self.status = _UNSET
        self.token: Token[Mapping[str, str] | None] | None = None
        self.end = 0
        self.start = time_ns()

    def _release(self) -> None:
        self.end = time_ns()
        if self.token is not None:
            TRACE_HEADERS.reset(self.token)
            self.token = None

    def succeeded(self, result: object, outcome: Outcome) -> None:
        self._release()
        attributes = self.attributes
        usage = outcome.usage
        if isinstance(result, ChatResponse):
            usage = result.usage or usage
            data = result.data
            model = data.get("model")
            if isinstance(model, str):
                attributes["gen_ai.response.model"] = model
            choices = data.get("choices")
            if isinstance(choices, list):
                reasons = [c.get("finish_reason") for c in choices if isinstance(c, dict)]
                attributes["gen_ai.response.finish_reasons"] = [r for r in reasons if isinstance(r, str)]
                if self.tracing.capture_content and choices and isinstance(choices[0], dict):
                    message = choices[0].get("message") or {}
                    text = message.get("content") if isinstance(message, dict) else choices[0].get("text")
                    attributes["sidecar.response.content"] = self.tracing._content(text or "")
        elif isinstance(result, StreamProgress):  # a stream's attempt, once the router hands its progress on
            if result.model is not None:
                attributes["gen_ai.response.model"] = result.model
            reason = getattr(result, "finish_reason", None)
            if isinstance(reason, str):
                attributes["gen_ai.response.finish_reasons"] = [reason]
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            cost = request_cost(usage, self.tracing.prices.get(self.deployment.id))
            if cost is not None:
                attributes["sidecar.cost_usd"] = cost
        if outcome.ttft is not None:
            attributes["sidecar.time_to_first_token"] = outcome.ttft
        attributes["http.response.status_code"] = 200

    def failed(self, error: BaseException) -> None:
        self._release()
        attributes = self.attributes
        if isinstance(error, UpstreamError):
            attributes["error.type"] = error.error_class
            if error.upstream_status:
                attributes["http.response.status_code"] = error.upstream_status
            self.status = Status(StatusCode.ERROR, REDACT(error.message))
        else:
            attributes["error.type"] = "cancelled" if not isinstance(error, Exception) else type(error).__name__
            self.status = _ERROR


class Passthrough:
    """An unsampled request that came with a ``traceparent``: no spans; the context goes upstream as is."""

    __slots__ = ("headers", "trace_id", "var_token")

    def __init__(self, parent: SpanContext, headers: Mapping[str, str]) -> None:
        self.trace_id: str | None = f"{parent.trace_id:032x}"
        forwarded = {"traceparent": headers["traceparent"]}
        if headers.get("tracestate"):
            forwarded["tracestate"] = headers["tracestate"]
        self.headers: Mapping[str, str] = forwarded
        self.var_token: Token[RequestSpans | Passthrough | None] | None = None

    def finish(self, record: RequestRecord, outcome: Outcome | None) -> None:
        if self.var_token is not None:
            _CURRENT.reset(self.var_token)
            self.var_token = None


class _Dropped:
    """An unsampled request with no incoming context: nothing to do."""

    __slots__ = ()
    trace_id = None

    def finish(self, record: RequestRecord, outcome: Outcome | None) -> None:
        pass


_DROPPED: Any = _Dropped()


class RequestSpans:
    """A sampled request: its ids, times and attributes until ``finish`` builds and exports its spans."""

    __slots__ = ("attributes", "clients", "flushed", "marks", "model", "name", "parent", "server_id", "start",
                 "trace_flags", "trace_id", "trace_id_int", "trace_state", "traceparent_prefix", "tracestate",
                 "tracing", "var_token")

    def __init__(self, tracing: Tracing, trace_id: int, parent: SpanContext | None, trace_state: Any, name: str,
                 model: str, attributes: dict[str, Any]) -> None:
        self.tracing, self.trace_id_int, self.parent, self.name, self.model = tracing, trace_id, parent, name, model
        self.trace_state = trace_state
        self.tracestate = trace_state.to_header() if trace_state else ""
        self.attributes = attributes
        self.server_id = tracing.ids.generate_span_id()
        self.trace_flags = _SAMPLED
        self.trace_id = f"{trace_id:032x}"
        self.traceparent_prefix = f"00-{self.trace_id}-"
        self.clients: list[AttemptSpan] = []
        self.marks: list[tuple[int, int]] = []  # (trail length, time): decisions up to there happened by then
        self.flushed = 0
        self.var_token: Token[RequestSpans | Passthrough | None] | None = None
        self.start = time_ns()

    def mark(self, trail: list[object]) -> None:
        """Decisions taken since the last mark get this moment as their event time."""
        if len(trail) > self.flushed:
            self.flushed = len(trail)
            self.marks.append((self.flushed, time_ns()))

    def finish(self, record: RequestRecord, outcome: Outcome | None) -> None:
        end = time_ns()
        if self.var_token is not None:
            _CURRENT.reset(self.var_token)
            self.var_token = None
        tracing = self.tracing
        trace_id, flags, state = self.trace_id_int, self.trace_flags, self.trace_state
        resource, scope = tracing.resource, tracing.scope
        server = SpanContext(trace_id, self.server_id, False, flags, state)
        route = SpanContext(trace_id, tracing.ids.generate_span_id(), False, flags, state)
        finished: list[ReadableSpan] = []
        for client in self.clients:
            finished.append(ReadableSpan(
                f"chat {client.deployment.model}", SpanContext(trace_id, client.span_id, False, flags, state),
                route, resource, client.attributes, (), (), SpanKind.CLIENT, None, client.status, client.start,
                client.end or end, scope))
        route_attributes: dict[str, Any] = {"sidecar.model_group": self.model,
                                            "sidecar.routing.strategy": tracing.strategy}
        events: list[Event] = []
        if outcome is not None:
            route_attributes.update(_route_attributes(outcome))
            events = self._events(outcome.trail, end)
        finished.append(ReadableSpan(
            f"route {self.model}", route, server, resource, route_attributes, events, (), SpanKind.INTERNAL, None,
            _ERROR if record.outcome == "error" else _UNSET, self.start, end, scope))
        attributes = self.attributes
        attributes["http.response.status_code"] = record.status
        attributes["sidecar.request_id"] = record.request_id
        attributes["sidecar.outcome"] = record.outcome
        attributes["sidecar.attempts"] = record.attempts
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
        finished.append(ReadableSpan(
            self.name, server, self.parent, resource, attributes, (), (), SpanKind.SERVER, None,
            _ERROR if record.status >= 500 else _UNSET, self.start, end, scope))
        for processor in tracing.processors:
            for span in finished:
                processor.on_end(span)

    def _events(self, trail: list[object], end: int) -> list[Event]:
        """The trail as route-span events, each timed by the first mark at or after it."""
        events = []
        marks = self.marks
        m = 0
        for index, item in enumerate(trail):
            while m < len(marks) and marks[m][0] <= index:
                m += 1
            name, attributes = _event(item)
            events.append(Event(name, attributes, marks[m][1] if m < len(marks) else end))
        return events


def _route_attributes(outcome: Outcome) -> dict[str, Any]:
    candidates: list[str] = []
    scores: list[str] = []
    skipped: list[str] = []
    fallbacks: list[str] = []
    retries = 0
    for item in outcome.trail:
        if isinstance(item, Ranking):
            for deployment, tier, unhealthy, score in item.candidates:
                if deployment not in candidates:
                    candidates.append(deployment)
                scores.append(_score(deployment, tier, unhealthy, score))
        elif isinstance(item, Attempt):
            if item.deployment not in candidates:
                candidates.append(item.deployment)
            retries += item.retry > 0
        elif isinstance(item, Skip):
            if item.deployment not in candidates:
                candidates.append(item.deployment)
            skipped.append(f"{item.deployment}: {item.reason}")
        elif isinstance(item, FallbackStep):
            fallbacks.append(f"{item.from_group} -> {item.to_group}: {item.cause}")
    attributes: dict[str, Any] = {"sidecar.routing.candidates": candidates, "sidecar.routing.retries": retries}
    lists = {"sidecar.routing.scores": scores, "sidecar.routing.skipped": skipped,
             "sidecar.routing.fallbacks": fallbacks}
    attributes.update((key, value) for key, value in lists.items() if value)  # empty lists are left out
    if outcome.deployment is not None:
        attributes["sidecar.routing.chosen"] = outcome.deployment
    if outcome.answered_group is not None:
        attributes["sidecar.routing.answered_group"] = outcome.answered_group
    if outcome.catch_all is not None:
        attributes["sidecar.routing.catch_all"] = outcome.catch_all
    return attributes


def _score(deployment: str, tier: float, unhealthy: bool, score: float) -> str:
    order = "none" if tier == float("inf") else f"{tier:g}"
    return f"{deployment}: order={order} {'failing' if unhealthy else 'healthy'} score={score:.6g}"


def _event(item: object) -> tuple[str, dict[str, Any]]:
    if isinstance(item, Ranking):
        return "ranking", {"sidecar.model_group": item.group, "sidecar.routing.strategy": item.strategy,
                           "sidecar.routing.scores": [_score(*c) for c in item.candidates]}
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
