"""Tracing: OpenTelemetry set up from the standard ``OTEL_*`` variables, and the spans of a request.

Off (``None``, zero cost on the hot path) when ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``, or
when no exporter is named and no OTLP endpoint is set.

Per request: a SERVER span (continuing the app's ``traceparent``), a ``route`` span with the router's
decisions, and one CLIENT span per upstream attempt (``chat {model}``, GenAI semantic conventions).

Cheap by construction: the configured sampler decides once, when the request starts, and ids come from the
SDK's id generator (a CLIENT span's id is needed when its upstream call starts, for ``traceparent``). While
the request runs only plain values are noted (times, ids, the router's ``Outcome``); when it ends its spans
are encoded straight to OTLP bytes (``telemetry.otlp``: no SDK ``Span``, no protobuf objects) and queued for
export on the loop (``telemetry.export``). What is fixed per deployment is encoded at config load. An
unsampled request costs one sampler call; it forwards the app's ``traceparent`` upstream unchanged.
"""

from __future__ import annotations

import contextvars
import copy
import logging
from collections.abc import Callable, Mapping
from contextvars import Token
from time import time_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.core.cost import request_cost
from sidecar.core.errors import UpstreamError
from sidecar.core.types import ChatResponse
from sidecar.formats.continuation import StreamProgress
from sidecar.policy.breaker import Transition
from sidecar.policy.plan import Ranking
from sidecar.policy.retry import Retry
from sidecar.policy.ring import ReplicaChoice
from sidecar.providers.http import TRACE_HEADERS, trace_fields
from sidecar.telemetry import decisions, export, exporter_names, otlp
from sidecar.telemetry.logs import REDACT
from sidecar.telemetry.otlp import SPAN_ATTRIBUTE, attributes
from sidecar.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from sidecar.config import Config, Deployment
    from sidecar.routing.outcome import Outcome

log = logging.getLogger("sidecar.telemetry")
_PROPAGATOR = TraceContextTextMapPropagator()
_VARYING = (Retry, Transition, ReplicaChoice)  # trail items with a delay, a time or loads: their events are not kept
_CURRENT: contextvars.ContextVar[RequestSpans | Passthrough | None] = contextvars.ContextVar(
    "sidecar_request_spans", default=None)
# gen_ai.provider.name values (semconv well-known names) for our provider prefixes.
GENAI_PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic",
                   "gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "groq": "groq",
                   "together_ai": "together_ai", "fireworks_ai": "fireworks_ai", "ollama": "ollama",
                   "hosted_vllm": "vllm", "sglang": "sglang", "bedrock": "aws.bedrock", "mistral": "mistral_ai",
                   "xai": "x_ai"}


_LOCAL_DECISIONS: dict[str, Callable[[SpanContext | None], bool]] = {
    ALWAYS_ON.get_description(): lambda parent: True,
    ALWAYS_OFF.get_description(): lambda parent: False,
    ParentBased(ALWAYS_ON).get_description(): lambda parent: parent is None or parent.trace_flags.sampled,
    ParentBased(ALWAYS_OFF).get_description(): lambda parent: parent is not None and parent.trace_flags.sampled,
}


def _kept(cache: dict[tuple[tuple[str, Any], ...], bytes], labels: tuple[tuple[str, Any], ...]) -> bytes:
    """Attributes whose values recur (deployment, status, outcome, model, finish reasons), encoded once per
    combination; a None value is left out."""
    encoded = cache.get(labels)
    if encoded is None:
        if len(cache) >= 4096:
            cache.clear()
        encoded = cache[labels] = attributes(SPAN_ATTRIBUTE, {k: v for k, v in labels if v is not None})
    return encoded


def _exporter(name: str, env: Mapping[str, str], post: export.Post | None,
              envelope: otlp.Envelope) -> export.BatchExporter | None:
    if name == "console":
        return export.BatchExporter(export.threaded_sender(export.console_export), envelope, env)
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp, console or none)", name)
        return None
    if post is not None and export.own_client_usable(env):
        return export.BatchExporter(export.http_sender(post, env), envelope, env)
    send, close = export.sdk_exporter(export.protocol(env))
    return export.BatchExporter(export.threaded_sender(send), envelope, env, close)


class Tracing:
    """The sampler, id generator and exporters, and what spans need per deployment (encoded once)."""

    def __init__(self, provider: TracerProvider, config: Config, exporters: list[export.BatchExporter]) -> None:
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.exporters = exporters
        self.labels: dict[tuple[tuple[str, Any], ...], bytes] = {}  # recurring attributes → encoded (_kept)
        self.events: dict[object, bytes] = {}  # trail item → its event's encoded name and attributes
        # The usual samplers decide here, without a call: always_on/off and parentbased_always_on/off.
        self.decide = _LOCAL_DECISIONS.get(self.sampler.get_description())
        self._configure(config)

    def reconfigured(self, config: Config) -> Tracing:
        """The same sampler and exporters, with what ``config`` fixes per deployment (on reload; the
        tracing in use by requests still in flight is left as it is)."""
        tracing = copy.copy(self)
        tracing._configure(config)
        return tracing

    def _configure(self, config: Config) -> None:
        settings = config.sidecar.telemetry
        self.capture_content = settings.capture_content
        self.content_max_chars = settings.content_max_chars
        self.prices = {d.id: d.model_info for d in config.deployments}
        # deployment id → (span name, fixed attributes): the configured ones now; one a wildcard builds for the
        # model name asked for is encoded when its attempt ends (``client_fields``), not kept
        self.clients: dict[str, tuple[bytes, bytes]] = {d.id: _client_fields(d) for d in config.deployments}
        self.strategy_label = ("sidecar.routing.strategy", config.router.routing_strategy)

    def client_fields(self, deployment: Deployment) -> tuple[bytes, bytes]:
        fields = self.clients.get(deployment.id)
        return fields if fields is not None else _client_fields(deployment)

    @classmethod
    def from_env(cls, config: Config, env: Mapping[str, str], post: export.Post | None = None) -> Tracing | None:
        """Tracing as the OTEL_* variables say, or None. With ``post`` (the sidecar's own HTTP client),
        OTLP/HTTP goes through it on the event loop; otherwise through the SDK's exporter in a thread."""
        attributes_ = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "llm-sidecar"}
        # The provider is only read: sampler, id generator and resource, each from the standard variables.
        provider = TracerProvider(resource=Resource.create(attributes_), shutdown_on_exit=False)
        resource = provider.resource
        envelope = otlp.Envelope(resource.attributes, "llm-sidecar", __version__, resource.schema_url)
        exporters = [e for e in (_exporter(name, env, post, envelope) for name in exporter_names(env)) if e]
        return cls(provider, config, exporters) if exporters else None

    async def aclose(self, within: float = 3.0) -> None:
        """Flush what is queued, for at most ``within`` seconds (an unreachable collector cannot hold us)."""
        for exporter in self.exporters:
            await exporter.aclose(within)

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
        request = {"http.request.method": method, "url.path": path, "gen_ai.request.model": model}
        extra: dict[str, Any] = {}
        if self.decide is not None:
            sampled = self.decide(parent)
            trace_state = parent.trace_state if parent is not None else None  # what those samplers return
        else:
            sampling = self.sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER, request)
            sampled, trace_state = sampling.decision.is_sampled(), sampling.trace_state
            extra.update(sampling.attributes or {})
        if not sampled:
            if parent is None:
                return _DROPPED
            passthrough = Passthrough(parent, headers)
            passthrough.var_token = _CURRENT.set(passthrough)
            return passthrough
        if self.capture_content and body is not None:
            extra["sidecar.request.content"] = self._content(body.get("messages") or body.get("prompt"))
        spans = RequestSpans(self, trace_id, parent, trace_state, name, model,
                             (("http.request.method", method), ("url.path", path), ("gen_ai.request.model", model)),
                             extra)
        spans.var_token = _CURRENT.set(spans)
        return spans

    def _content(self, value: object) -> str:
        text = value if isinstance(value, str) else repr(value)
        return REDACT(text[: self.content_max_chars])

    # ---- the router's attempt observer ----------------------------------------------------------

    def recording(self) -> bool:
        """Is the current request sampled? (The router explains its ranking only then.)"""
        return _CURRENT.get().__class__ is RequestSpans

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
        span = AttemptSpan(self, deployment, self.ids.generate_span_id(), outcome.attempts, retry)
        spans.clients.append(span)
        if deployment.propagate_trace:
            span.token = TRACE_HEADERS.set(b"%s%016x-01\r\n%s" % (spans.traceparent_prefix, span.span_id,
                                                                    spans.tracestate_field))
        return span


class Forwarded:
    """An unsampled request's attempt: the app's ``traceparent`` goes upstream as it came."""

    __slots__ = ("token",)

    def __init__(self, token: Token[bytes]) -> None:
        self.token = token

    def succeeded(self, result: object, outcome: Outcome) -> None:
        TRACE_HEADERS.reset(self.token)

    def failed(self, error: BaseException) -> None:
        TRACE_HEADERS.reset(self.token)


class AttemptSpan:
    """One CLIENT span's facts; ``succeeded`` or ``failed`` ends it, ``RequestSpans.finish`` exports it.
    ``labels`` are the attributes whose values recur from request to request (encoded once per combination),
    ``attributes`` the rest (token counts, cost, time to first token)."""

    __slots__ = ("attributes", "deployment", "end", "labels", "span_id", "start", "status", "token", "tracing")

    def __init__(self, tracing: Tracing, deployment: Deployment, span_id: int, number: int, retry: int) -> None:
        self.tracing, self.deployment, self.span_id = tracing, deployment, span_id
        self.labels: list[tuple[str, Any]] = [("sidecar.attempt", number), ("sidecar.retry", retry)]
        self.attributes: dict[str, Any] = {}
        self.status = otlp.UNSET
        self.token: Token[bytes] | None = None
        self.end = 0
        self.start = time_ns()

    def _release(self) -> None:
        self.end = time_ns()
        if self.token is not None:
            TRACE_HEADERS.reset(self.token)
            self.token = None

    def succeeded(self, result: object, outcome: Outcome) -> None:
        self._release()
        labels, attributes = self.labels, self.attributes
        usage = outcome.usage
        if isinstance(result, ChatResponse):
            usage = result.usage or usage
            data = result.data
            model = data.get("model")
            if isinstance(model, str):
                labels.append(("gen_ai.response.model", model))
            choices = data.get("choices")
            if isinstance(choices, list):
                reasons = [c.get("finish_reason") for c in choices if isinstance(c, dict)]
                labels.append(("gen_ai.response.finish_reasons", tuple([r for r in reasons if isinstance(r, str)])))
                if self.tracing.capture_content and choices and isinstance(choices[0], dict):
                    message = choices[0].get("message") or {}
                    text = message.get("content") if isinstance(message, dict) else choices[0].get("text")
                    attributes["sidecar.response.content"] = self.tracing._content(text or "")
        elif isinstance(result, StreamProgress):  # a stream's attempt, once the router hands its progress on
            if result.model is not None:
                labels.append(("gen_ai.response.model", result.model))
            reason = getattr(result, "finish_reason", None)
            if isinstance(reason, str):
                labels.append(("gen_ai.response.finish_reasons", (reason,)))
        labels.append(("http.response.status_code", 200))
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            cost = request_cost(usage, self.tracing.prices.get(self.deployment.id))
            if cost is not None:
                attributes["sidecar.cost_usd"] = cost
        if outcome.ttft is not None:
            attributes["sidecar.time_to_first_token"] = outcome.ttft

    def failed(self, error: BaseException) -> None:
        self._release()
        labels = self.labels
        if isinstance(error, UpstreamError):
            labels.append(("error.type", error.error_class))
            labels.append(("sidecar.error.cause", error.cause_label))
            if error.upstream_status:
                labels.append(("http.response.status_code", error.upstream_status))
            # an upstream's message may quote the prompt: only with capture_content does it go on the span
            said = REDACT(error.message) if self.tracing.capture_content else error.error_class
            self.status = otlp.error_status(f"{said} [{error.cause_label}]")
        else:
            labels.append(("error.type", "cancelled" if not isinstance(error, Exception) else type(error).__name__))
            self.status = otlp.ERROR


def _client_fields(d: Deployment) -> tuple[bytes, bytes]:
    """A deployment's client span name and fixed attributes, encoded."""
    fixed: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": GENAI_PROVIDERS.get(d.provider, d.provider),
        "gen_ai.request.model": d.model,
        "sidecar.deployment": d.id,
    }
    if d.replicas is None:  # an SGLang pool's attempt names its replica (sidecar.sglang.replica), no address
        address = urlsplit(d.api_base)
        fixed["server.address"] = address.hostname or ""
        if address.port:
            fixed["server.port"] = address.port
    return otlp.string(0x2A, f"chat {d.model}"), attributes(SPAN_ATTRIBUTE, fixed)


class Passthrough:
    """An unsampled request that came with a ``traceparent``: no spans; the context goes upstream as is."""

    __slots__ = ("headers", "trace_id", "var_token")

    def __init__(self, parent: SpanContext, headers: Mapping[str, str]) -> None:
        self.trace_id: str | None = f"{parent.trace_id:032x}"
        forwarded = {"traceparent": headers["traceparent"]}
        state = headers.get("tracestate")
        if state and state.isascii() and state.isprintable():  # W3C: printable ASCII; anything else is dropped
            forwarded["tracestate"] = state
        self.headers = trace_fields(forwarded)  # the app's own values: checked before they go upstream
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
    """A sampled request: its ids, times and attributes until ``finish`` encodes and queues its spans."""

    __slots__ = ("attributes", "clients", "flushed", "marks", "model", "name", "parent", "request", "server_id",
                 "start", "state", "trace_id", "trace_id_bytes", "traceparent_prefix", "tracestate_field", "tracing",
                 "var_token")

    def __init__(self, tracing: Tracing, trace_id: int, parent: SpanContext | None, trace_state: Any, name: str,
                 model: str, request: tuple[tuple[str, str], ...], attributes: dict[str, Any]) -> None:
        self.tracing, self.parent, self.name, self.model = tracing, parent, name, model
        tracestate = trace_state.to_header() if trace_state else ""
        self.state = otlp.trace_state(tracestate)
        self.tracestate_field = trace_fields({"tracestate": tracestate}) if tracestate else b""
        self.request, self.attributes = request, attributes  # (recurring) method, path, model; the rest
        self.server_id = tracing.ids.generate_span_id()
        self.trace_id_bytes = trace_id.to_bytes(16, "big")
        self.trace_id = self.trace_id_bytes.hex()
        self.traceparent_prefix = b"traceparent: 00-%s-" % self.trace_id.encode()
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
        trace_id, state = self.trace_id_bytes, self.state
        server_id = self.server_id.to_bytes(8, "big")
        route_id = tracing.ids.generate_span_id().to_bytes(8, "big")
        spans = []
        for client in self.clients:
            name, fixed = tracing.client_fields(client.deployment)
            head = otlp.ids(trace_id, client.span_id.to_bytes(8, "big"), route_id, state)
            body = fixed + _kept(tracing.labels, tuple(client.labels)) + attributes(SPAN_ATTRIBUTE, client.attributes)
            spans.append(otlp.span(head, name, otlp.CLIENT, client.start, client.end or end, body, client.status,
                                   otlp.LOCAL_PARENT))
        if outcome is None:  # routing never started (the request was refused first)
            route = _kept(tracing.labels, (("sidecar.model_group", self.model), tracing.strategy_label))
        else:
            labels, scores, rankings = decisions.route_span(outcome)
            route = _kept(tracing.labels, (*labels, tracing.strategy_label))
            if len(rankings) == 1:  # one group ranked: its event shows the span's scores, encoded once
                scored = attributes(SPAN_ATTRIBUTE, {"sidecar.routing.scores": scores})
                route += scored + self._events(outcome.trail, [otlp.retag(scored, otlp.EVENT_ATTRIBUTE)], end)
            else:
                if scores:
                    route += attributes(SPAN_ATTRIBUTE, {"sidecar.routing.scores": scores})
                route += self._events(outcome.trail, [attributes(otlp.EVENT_ATTRIBUTE, {"sidecar.routing.scores": r})
                                                      for r in rankings], end)
        spans.append(otlp.span(otlp.ids(trace_id, route_id, server_id, state), otlp.string(0x2A, f"route {self.model}"),
                               otlp.INTERNAL, self.start, end, route,
                               otlp.ERROR if record.outcome == "error" else otlp.UNSET, otlp.LOCAL_PARENT))
        labels = (*self.request, ("http.response.status_code", record.status), ("sidecar.outcome", record.outcome),
                  ("sidecar.attempts", record.attempts), ("sidecar.deployment", record.deployment or None),
                  ("sidecar.fallback", record.fallback), ("error.type", record.error_type or None))
        server = self.attributes
        server["sidecar.request_id"] = record.request_id
        if record.usage is not None:
            server["gen_ai.usage.input_tokens"] = record.usage.prompt_tokens
            server["gen_ai.usage.output_tokens"] = record.usage.completion_tokens
        if record.cost is not None:
            server["sidecar.cost_usd"] = record.cost
        if record.ttft is not None:
            server["sidecar.time_to_first_token"] = record.ttft
        parent = self.parent
        head = otlp.ids(trace_id, server_id, None if parent is None else parent.span_id.to_bytes(8, "big"), state)
        spans.append(otlp.span(head, otlp.string(0x2A, self.name), otlp.SERVER, self.start, end,
                               _kept(tracing.labels, labels) + attributes(SPAN_ATTRIBUTE, server),
                               otlp.ERROR if record.status >= 500 else otlp.UNSET,
                               otlp.REMOTE_PARENT if parent is not None and parent.is_remote else otlp.LOCAL_PARENT))
        for exporter in tracing.exporters:
            exporter.add(spans)

    def _events(self, trail: list[object], rankings: list[bytes], end: int) -> bytes:
        """The trail as events, each timed by the first mark at or after it. Items recur (the same attempt
        of the same deployment, the same skip), so their encodings are kept; a ranking's scores vary."""
        encoded = []
        cache = self.tracing.events
        marks = self.marks
        m = r = 0
        for index, item in enumerate(trail):
            while m < len(marks) and marks[m][0] <= index:
                m += 1
            ranking = item.__class__ is Ranking
            key = (item.group, item.strategy) if ranking else item  # type: ignore[attr-defined]
            body = cache.get(key)
            if body is None:
                name, values = decisions.event(item)
                body = otlp.string(0x12, name) + attributes(otlp.EVENT_ATTRIBUTE, values)
                if item.__class__ not in _VARYING:
                    if len(cache) >= 4096:
                        cache.clear()
                    cache[key] = body
            if ranking:
                body += rankings[r]  # its scores, encoded
                r += 1
            encoded.append(otlp.event(marks[m][1] if m < len(marks) else end, body))
        return b"".join(encoded)
