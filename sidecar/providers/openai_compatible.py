"""Every upstream that speaks the OpenAI wire format, as rows of one table.

OpenAI, Azure OpenAI, Groq, Together, Fireworks, Ollama, vLLM, SGLang and the long tail (Mistral, DeepSeek,
xAI, OpenRouter, Cerebras, Perplexity, DeepInfra, the Hugging Face router, LM Studio, llamafile) differ only in
URL layout, the auth header and a few quirks (``formats.openai_hosts``); the body is forwarded as the app sent
it with ``model`` replaced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from sidecar.config import Deployment
from sidecar.core.errors import (
    ContentPolicyViolation,
    ContextWindowExceeded,
    RateLimited,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from sidecar.core.types import ChatRequest, ChatResponse, Endpoint, StreamChunk, Usage
from sidecar.formats import openai as wire
from sidecar.formats import openai_hosts
from sidecar.formats.anthropic_extras import for_openai
from sidecar.formats.common import refuse_native_only
from sidecar.formats.sse import DONE, MAX_EVENT, SSEDecoder
from sidecar.providers import openai_responses as responses
from sidecar.providers.base import UpstreamCall, retry_after_seconds, with_partial

PATHS: Mapping[Endpoint, str] = {
    Endpoint.CHAT: "/chat/completions",
    Endpoint.COMPLETIONS: "/completions",
    Endpoint.EMBEDDINGS: "/embeddings",
}
CONTEXT_PATTERNS = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long|longer than the model",
    re.IGNORECASE,
)
MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class Row:
    auth: str  # "bearer", "api-key" or "optional-bearer" (sent only when a key is configured)
    usage_in_streams: bool = True  # accepts stream_options.include_usage
    continue_final_message: bool = False  # prefill needs vLLM/SGLang's continue_final_message switch
    quirks: openai_hosts.Quirks | None = None
    responses: bool = False  # serves the Responses API: Responses apps' bodies pass through untouched


ROWS: Mapping[str, Row] = {
    "openai": Row("bearer", responses=True),
    "azure": Row("api-key"),
    "groq": Row("bearer"),
    "together_ai": Row("bearer"),
    "fireworks_ai": Row("bearer"),
    "ollama": Row("optional-bearer"),
    "hosted_vllm": Row("optional-bearer", continue_final_message=True),
    "sglang": Row("optional-bearer", continue_final_message=True),
    "mistral": Row("bearer", usage_in_streams=False, quirks=openai_hosts.QUIRKS["mistral"]),
    "deepseek": Row("bearer", quirks=openai_hosts.QUIRKS["deepseek"]),
    "xai": Row("bearer", quirks=openai_hosts.QUIRKS["xai"]),
    "openrouter": Row("bearer"),
    "cerebras": Row("bearer", quirks=openai_hosts.QUIRKS["cerebras"]),
    "perplexity": Row("bearer", usage_in_streams=False, quirks=openai_hosts.QUIRKS["perplexity"]),
    "deepinfra": Row("bearer"),
    "huggingface": Row("bearer"),
    "lm_studio": Row("optional-bearer"),
    "llamafile": Row("optional-bearer"),
}


class OpenAICompatibleAdapter:
    """Adapter for one OpenAI-wire-format deployment; URLs and headers computed at construction."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.row = ROWS[deployment.provider]
        self.model = openai_hosts.upstream_model(deployment.provider, deployment.model)
        self.urls = {endpoint: self._url(endpoint) for endpoint in Endpoint}
        self.responses_url = f"{deployment.api_base}/responses" if self.row.responses else None
        self.headers: dict[str, str] = {}
        self.extra_body = deployment.params.extra_body if deployment.params is not None else None
        self.refresh_credentials()

    def _url(self, endpoint: Endpoint) -> str:
        dep = self.deployment
        if dep.provider == "azure" and "/openai/v1" not in dep.api_base:
            version = dep.api_version or "2024-10-21"
            return f"{dep.api_base}/openai/deployments/{dep.model}{PATHS[endpoint]}?api-version={version}"
        return dep.api_base + PATHS[endpoint]

    def refresh_credentials(self) -> None:
        headers = {"content-type": "application/json", **dict(self.deployment.extra_headers)}
        key = self.deployment.api_key.value if self.deployment.api_key else ""
        if self.row.auth == "api-key":
            headers["api-key"] = key
        elif key or self.row.auth == "bearer":
            headers["authorization"] = f"Bearer {key}"
        self.headers = headers

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        if self.responses_url is not None and responses.passthrough(request):
            return UpstreamCall(self.responses_url, self.headers, responses.body_for(request, self.model),
                                self.deployment.proxy)
        if request.native_only:  # a feature only the app's own dialect has: refuse, never drop
            raise refuse_native_only(request, self.deployment.provider)
        body = {**request.body, "model": self.model}
        dropped: tuple[str, ...] = ()
        if request.extras is not None:  # an Anthropic app's thinking, effort, server features, max_tokens
            info = self.deployment.model_info
            dropped = for_openai(body, request.extras, supports_reasoning=info.capabilities.get("supports_reasoning"),
                                 max_output_tokens=info.max_output_tokens)
        if self.extra_body:  # the deployment's extra_body, under the app's own fields
            body = {**self.extra_body, **body}
        quirks = self.row.quirks
        if quirks is not None:
            body = openai_hosts.apply(quirks, body, self.deployment.provider)
        if request.stream and not request.include_usage and self.row.usage_in_streams:
            # Ask for usage so tokens and cost are known; the extra usage chunk is not forwarded.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if request.continuation and self.row.continue_final_message:
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        return UpstreamCall(self.urls[request.endpoint], self.headers, orjson.dumps(body), self.deployment.proxy,
                            dropped)

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse:
        if self.responses_url is not None and responses.passthrough(request):
            return responses.read_response(body)
        try:
            response = wire.parse_response(body, request.endpoint)
        except ValueError as exc:
            raise UpstreamServerError(f"the upstream sent a malformed answer: {exc}", upstream_status=200) from None
        choices = response.data.get("choices") or ()
        if any(isinstance(c, dict) and c.get("finish_reason") == "abort" for c in choices):
            raise UpstreamServerError("the upstream aborted the generation", upstream_status=200)
        quirks = self.row.quirks
        if quirks is not None and quirks.empty_finish and openai_hosts.fix_finish(response.data):
            response = ChatResponse(response.data, None, response.usage)
        return response

    def stream_reader(self, request: ChatRequest) -> OpenAIStreamReader | responses.ResponsesStreamReader:
        if self.responses_url is not None and responses.passthrough(request):
            return responses.ResponsesStreamReader(include_usage=request.include_usage, classify=in_band_error,
                                                   max_event=self.deployment.max_sse_event_bytes)
        quirks = self.row.quirks
        return OpenAIStreamReader(drop_usage_chunk=not request.include_usage,
                                  fix_finish=quirks is not None and quirks.empty_finish,
                                  max_event=self.deployment.max_sse_event_bytes)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return classify_openai_error(status, headers, body)


class OpenAIStreamReader:
    """OpenAI SSE → chunks; forwards each event's JSON as it came, except a usage chunk nobody asked for."""

    __slots__ = ("decoder", "done", "drop_usage_chunk", "fix_finish", "skipped", "tools_seen", "usage")

    def __init__(self, *, drop_usage_chunk: bool, fix_finish: bool = False, max_event: int = MAX_EVENT) -> None:
        self.decoder = SSEDecoder(max_event)
        self.done = False
        self.skipped = 0
        self.usage: Usage | None = None
        self.drop_usage_chunk = drop_usage_chunk
        self.fix_finish = fix_finish  # the host sends "" as a finish reason (xAI)
        self.tools_seen = False

    def feed(self, data: bytes) -> list[StreamChunk]:
        return self._chunks(self.decoder.feed(data))

    def finish(self) -> list[StreamChunk]:
        return self._chunks(self.decoder.flush())

    def _chunks(self, events: list) -> list[StreamChunk]:  # type: ignore[type-arg]
        out: list[StreamChunk] = []
        for event in events:
            if event.data == DONE:
                self.done = True
                continue
            if self.done or not event.data:
                continue
            try:
                chunk = wire.parse_chunk(event.data)
                aborted = wire.chunk_aborted(chunk.data)
            except ValueError:  # not JSON, or not shaped as a chunk
                self.skipped += 1
                continue
            if "error" in chunk.data:
                raise with_partial(in_band_error(chunk.data), out)
            if chunk.usage is not None:
                self.usage = chunk.usage
                if self.drop_usage_chunk and not chunk.data.get("choices"):
                    continue
            if aborted:
                raise with_partial(UpstreamServerError("the upstream aborted the generation mid-stream",
                                                       upstream_status=200), out)
            if self.fix_finish:
                chunk = self._fixed(chunk)
            out.append(chunk)
        return out


    def _fixed(self, chunk: StreamChunk) -> StreamChunk:
        choices = chunk.data.get("choices") or ()
        self.tools_seen = self.tools_seen or any(
            isinstance(c, dict) and isinstance(c.get("delta"), dict) and c["delta"].get("tool_calls") for c in choices)
        if openai_hosts.fix_finish(chunk.data, tools_seen=self.tools_seen):
            return StreamChunk(orjson.dumps(chunk.data), chunk.data, chunk.usage)
        return chunk


def in_band_error(data: dict) -> UpstreamError:  # type: ignore[type-arg]
    """An ``{"error": ...}`` event inside a stream: a failed upstream, classified by its code."""
    error = data.get("error")
    code = str(error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""
    message = _clip(wire.error_message_of(data)) or "the upstream reported an error mid-stream"
    if "rate_limit" in code or code == "429":
        return RateLimited(message, upstream_status=200)
    return UpstreamServerError(message, upstream_status=200)


def classify_openai_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """An OpenAI-format (or SGLang flat) error answer → the error class that decides what happens next."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    message = _clip(wire.error_message_of(data)) or f"upstream answered {status}"
    error = data.get("error") if isinstance(data, dict) else None
    fields = error if isinstance(error, dict) else data if isinstance(data, dict) else {}
    code = fields.get("code") if isinstance(fields.get("code"), str) else None
    param = fields.get("param") if isinstance(fields.get("param"), str) else None
    kwargs = {"upstream_status": status, "body": body, "code": code, "param": param}
    if status == 402 or (status == 429 and code == "insufficient_quota"):
        return UpstreamAuthError(message, **kwargs)  # credits or quota spent: fail over, do not retry
    if status == 429:
        return RateLimited(message, retry_after=retry_after_seconds(headers), **kwargs)
    if code == "content_filter":
        return ContentPolicyViolation(message, **kwargs)
    if status in (400, 403, 413) and (code == "context_length_exceeded" or CONTEXT_PATTERNS.search(message)):
        return ContextWindowExceeded(message, **{**kwargs, "code": None})  # the app sees context_length_exceeded
    if status in (401, 403):
        return UpstreamAuthError(message, **kwargs)
    if status == 404:
        error_ = UpstreamServerError(message, **kwargs)  # a deployment misconfiguration: fail over
        error_.retryable = False
        return error_
    if status == 408:
        return UpstreamTimeout(message, phase="upstream", **kwargs)
    if 400 <= status < 500 and status != 409:
        rejected = UpstreamBadRequest(message, **kwargs)
        rejected.status = status  # passed through to the app as the upstream said it
        return rejected
    return UpstreamServerError(message, retry_after=retry_after_seconds(headers), **kwargs)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "…"
