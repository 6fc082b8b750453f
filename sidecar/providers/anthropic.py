"""Anthropic Messages adapter: ``{api_base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.

When the app itself spoke Anthropic (``request.source``), its body goes upstream with only ``model``
replaced — no lossy round trip — and the answer's own bytes ride along (``ChatResponse.native``,
``StreamChunk.native``) for the Anthropic ingress to return verbatim. The router still sees OpenAI chunks.
Such an app's ``anthropic-beta`` flags go along (filtered by the deployment's ``anthropic_betas``,
``policy.betas``), and its ``anthropic-version`` too unless the deployment pins ``api_version``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

import orjson

from sidecar.config import Deployment
from sidecar.core.errors import (
    ContextWindowExceeded,
    RateLimited,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk, WireFormat
from sidecar.formats import anthropic as wire
from sidecar.formats.anthropic_stream import AnthropicToOpenAI, Translated
from sidecar.formats.common import StreamErrorEvent, refuse_native_only
from sidecar.formats.openai import usage_from
from sidecar.formats.sse import MAX_EVENT, encode_event
from sidecar.policy import betas
from sidecar.providers.base import TranslatingReader, UpstreamCall, retry_after_seconds, with_partial

CONTEXT = re.compile(r"prompt is too long|context window|too many tokens", re.IGNORECASE)
MAX_MESSAGE = 500


def passthrough(request: ChatRequest) -> bool:
    """The app spoke Anthropic and nothing was changed since: forward its own body."""
    return request.wire is WireFormat.ANTHROPIC and request.source is not None and not request.continuation


class AnthropicAdapter:
    """Adapter for one Anthropic deployment; URL and static headers computed at construction."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.version = deployment.api_version or wire.VERSION
        self.url = f"{deployment.api_base}/v1/messages"
        self.headers: dict[str, str] = {}
        self.extra_body = deployment.params.extra_body if deployment.params is not None else None
        self.betas = betas.for_deployment(deployment)
        self.refresh_credentials()

    def refresh_credentials(self) -> None:
        key = self.deployment.api_key.value if self.deployment.api_key else ""
        extra = {k if k.lower() != "anthropic-beta" else "anthropic-beta": v for k, v in self.deployment.extra_headers}
        self.headers = {"content-type": "application/json", "anthropic-version": self.version, **extra,
                        "x-api-key": key}

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        if passthrough(request):
            body = {**request.source, "model": self.deployment.model}  # type: ignore[dict-item]
        elif request.native_only and request.wire is not WireFormat.ANTHROPIC:
            raise refuse_native_only(request, "Anthropic")  # another dialect's own feature (Responses state, …)
        else:
            body = wire.to_messages_body(request.body, self.deployment.model,
                                         default_max_tokens=self.deployment.model_info.max_output_tokens,
                                         version=self.version)
        if self.extra_body:  # the deployment's extra_body, under what the request says
            body = {**self.extra_body, **body}
        headers = self.headers if request.extras is None else self._app_headers(request)
        return UpstreamCall(self.url, headers, orjson.dumps(body), self.deployment.proxy)

    def _app_headers(self, request: ChatRequest) -> Mapping[str, str]:
        """The Anthropic app's beta flags (as the deployment's policy lets them through) and, on passthrough,
        its API version unless the deployment pins one."""
        extras = request.extras
        assert extras is not None
        headers = self.headers
        beta = self.betas.header(extras.beta)
        if beta is not None and beta != headers.get("anthropic-beta"):
            headers = {**headers, "anthropic-beta": beta}
        version = extras.version
        if version and self.deployment.api_version is None and version != self.version and passthrough(request):
            headers = {**headers, "anthropic-version": version}
        return headers

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse:
        try:
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            completion = wire.to_openai_completion(data, int(time.time()))
        except ValueError as exc:
            raise UpstreamServerError(f"the upstream sent a malformed answer: {exc}", upstream_status=200) from None
        return ChatResponse(completion, None, usage_from(completion.get("usage")),
                            native=body if passthrough(request) else None)

    def stream_reader(self, request: ChatRequest) -> AnthropicStreamReader:
        return AnthropicStreamReader(include_usage=request.include_usage, native=passthrough(request),
                                     model=self.deployment.model, max_event=self.deployment.max_sse_event_bytes)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return classify_anthropic_error(status, headers, body)


class AnthropicStreamReader(TranslatingReader):
    """Messages SSE → OpenAI chunks; with ``native``, every upstream event also rides along as bytes."""

    __slots__ = ("native",)
    translator: AnthropicToOpenAI

    def __init__(self, *, include_usage: bool, native: bool, model: str, max_event: int = MAX_EVENT) -> None:
        super().__init__(AnthropicToOpenAI(created=int(time.time()), include_usage=include_usage, model=model,
                                           max_event=max_event))
        self.native = native

    def feed(self, data: bytes) -> list[StreamChunk]:
        return self._chunks(lambda: self.translator.feed(data))

    def finish(self) -> list[StreamChunk]:
        return self._chunks(self.translator.finish)

    def _chunks(self, translate) -> list[StreamChunk]:  # type: ignore[no-untyped-def]
        try:
            translated = translate()
        except StreamErrorEvent as exc:
            raise with_partial(in_band_error(exc.payload), self._convert(exc.partial)) from None
        return self._convert(translated)

    def _convert(self, translated: list[Translated]) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        for item in translated:
            chunks = [StreamChunk(orjson.dumps(c), c, usage_from(c.get("usage"))) for c in item.chunks]
            if self.native and item.parsed:  # an event nobody could read is skipped, not forwarded
                if not chunks:
                    chunks = [StreamChunk(b"", {})]
                chunks[0].native = encode_event(item.event.data, item.event.event)
            out += chunks
        return out


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("type") or ""), _clip(str(error.get("message") or ""))


def in_band_error(data: dict) -> UpstreamError:  # type: ignore[type-arg]
    """An ``event: error`` mid-stream, classified by its type."""
    return classify_anthropic_error(200, {}, orjson.dumps(data))


def classify_anthropic_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """An Anthropic error answer (reference §5.5) → the error class that decides what happens next."""
    type_, message = _error_fields(body)
    message = message or f"upstream answered {status}"
    kwargs = {"upstream_status": status, "body": body, "code": type_ or None}
    if status == 429 or type_ == "rate_limit_error":
        return RateLimited(message, retry_after=retry_after_seconds(headers), **kwargs)
    if status == 529 or type_ == "overloaded_error":
        overloaded = RateLimited(message, retry_after=retry_after_seconds(headers), **kwargs)
        overloaded.code = "overloaded"
        return overloaded
    if status in (401, 402, 403) or type_ in ("authentication_error", "permission_error", "billing_error"):
        return UpstreamAuthError(message, **kwargs)
    if status in (400, 413) and CONTEXT.search(message):
        return ContextWindowExceeded(message, **{**kwargs, "code": None})  # the app sees context_length_exceeded
    if status == 404:
        missing = UpstreamServerError(message, **kwargs)  # a deployment misconfiguration: fail over
        missing.retryable = False
        return missing
    if status in (408, 504) or type_ == "timeout_error":
        return UpstreamTimeout(message, phase="upstream", **kwargs)
    if 400 <= status < 500 and status != 409:
        rejected = UpstreamBadRequest(message, **kwargs)
        rejected.status = status
        return rejected
    return UpstreamServerError(message, retry_after=retry_after_seconds(headers), **kwargs)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "…"
